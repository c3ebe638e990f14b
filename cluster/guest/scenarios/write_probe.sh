# shellcheck shell=sh
# Small direct writes and reads of growing size and depth, each its own step, to see where a
# target stops answering (a hung step shows as the last one reported before the timeout).
# env: TARGET_IQN; PORTAL (default: the first of $PORTALS)
portal=${PORTAL:-${PORTALS%% *}}

disk=$(iscsi_connect "$TARGET_IQN" "$portal") || {
    step_fail login "no disk"
    exit 1
}
step_pass login "$disk"

probe() {
    local name="$1" started rc
    shift
    started=$(uptime_s)
    "$@" >/tmp/probe.out 2>&1
    rc=$?
    cat /tmp/probe.out
    check "$name" "rc=$rc in $(awk -v a="$started" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s $(grep -o 'IOPS=[^,]*' /tmp/probe.out | head -1)" [ "$rc" -eq 0 ]
}

probe read-4k dd if="$disk" of=/dev/null bs=4k count=16 iflag=direct
probe write-4k dd if=/dev/zero of="$disk" bs=4k count=1 oflag=direct
probe write-4k-x256 dd if=/dev/zero of="$disk" bs=4k count=256 oflag=direct
probe write-256k dd if=/dev/zero of="$disk" bs=256k count=16 oflag=direct
probe write-1m dd if=/dev/zero of="$disk" bs=1M count=4 oflag=direct
probe fio-qd1 fio --name=q1 --filename="$disk" --rw=randwrite --bs=4k --iodepth=1 \
    --ioengine=libaio --direct=1 --size=2m
probe fio-qd32 fio --name=q32 --filename="$disk" --rw=randwrite --bs=4k --iodepth=32 \
    --ioengine=libaio --direct=1 --size=2m
probe fio-read-qd32 fio --name=r32 --filename="$disk" --rw=randread --bs=4k --iodepth=32 \
    --ioengine=libaio --direct=1 --size=2m
iscsi_logout "$TARGET_IQN" "$portal"

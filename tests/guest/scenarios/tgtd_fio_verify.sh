# shellcheck shell=sh
# fio 4 KiB random writes at queue depth 32 on the raw disk, verified with crc32c.
# env: TARGET_IQN; PORTAL (default: the first of $PORTALS); FIO_SIZE (default 32m)
portal=${PORTAL:-${PORTALS%% *}}

disk=$(iscsi_connect "$TARGET_IQN" "$portal") || {
    step_fail login "no disk"
    exit 1
}
step_pass login "$disk"

started=$(date +%s)
fio --name=verify --filename="$disk" --rw=randwrite --bs=4k --iodepth=32 \
    --ioengine=libaio --direct=1 --size="${FIO_SIZE:-32m}" --verify=crc32c \
    --verify_fatal=1 --do_verify=1 >/tmp/fio.out 2>&1
rc=$?
cat /tmp/fio.out
iops=$(grep -o 'IOPS=[^,]*' /tmp/fio.out | head -1)
value fio_write "$iops"
value fio_seconds "$(($(date +%s) - started))"
if [ "$rc" -eq 0 ] && grep -q 'err= 0' /tmp/fio.out; then
    step_pass fio "rc=0 $iops"
else
    step_fail fio "rc=$rc $(grep -i 'err=\|verify' /tmp/fio.out | head -3 | tr '\n' ';')"
fi
iscsi_logout "$TARGET_IQN" "$portal"

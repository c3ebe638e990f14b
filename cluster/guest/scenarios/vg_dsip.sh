# shellcheck shell=sh
# A volume group through the Data Services IP, as a Linux host attaches one: discovery CHAP
# and session CHAP in iscsid.conf, `iscsiadm -m discovery` at the DSIP, a login to every
# virtual target, each LUN a disk; ext4 + fsck on one, fio verifying crc32c on all of them
# in rounds while the host kills the CVM serving VICTIM_TARGET (its sessions come back
# through the DSIP on another CVM) and starts it again (they come home after the stable
# window). Then, optionally, the host kills the DSIP leader's redirector and a new discovery
# must work again.
# env: DSIP (guest portal); TARGETS (the group's virtual targets, space-separated);
#      LUNS_PER_TARGET; CHAP_USER, CHAP_SECRET; VICTIM_TARGET; VICTIM_PORTAL (its CVM);
#      FIO_SIZE (per round and disk, default 4m); FAILOVER_TIMEOUT, FAILBACK_TIMEOUT (s,
#      default 90); DSIP_TAKEOVER (1: the host kills the DSIP leader at the end)
# Reports failover-pause and failback-pause: the longest I/O (s) of any fio round.
fio_size=${FIO_SIZE:-4m}
value initiator-name "$(sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi)"

cat >>/etc/iscsi/iscsid.conf <<CONF
discovery.sendtargets.auth.authmethod = CHAP
discovery.sendtargets.auth.username = $CHAP_USER
discovery.sendtargets.auth.password = $CHAP_SECRET
node.session.auth.authmethod = CHAP
node.session.auth.username = $CHAP_USER
node.session.auth.password = $CHAP_SECRET
node.session.timeo.replacement_timeout = 120
node.conn[0].timeo.noop_out_interval = 2
node.conn[0].timeo.noop_out_timeout = 4
node.conn[0].timeo.login_timeout = 10
CONF

# -- discovery and logins -----------------------------------------------------------------
discovered=$(iscsiadm -m discovery -t st -p "$DSIP" 2>/dev/console)
value discovered "$(echo "$discovered" | tr '\n' ';')"
expected=$(for target in $TARGETS; do echo "$DSIP,1 $target"; done | sort)
check discovery "$(echo "$discovered" | wc -l) targets" \
    [ "$(echo "$discovered" | sort)" = "$expected" ]

# target_disks IQN: the /dev/sdX of each of the target's LUNs, one a line, LUN order.
target_disks() {
    iscsi_session_info "$1" | awk '
        /scsi[0-9]+ Channel [0-9]+ Id [0-9]+ Lun: / { lun = $NF }
        /Attached scsi disk/ { print lun, "/dev/" $4 }' | sort -n | cut -d' ' -f2
}

# wait_disks IQN COUNT TIMEOUT_S: until the target shows COUNT block devices.
wait_disks() {
    deadline=$(($(date +%s) + $3))
    while [ "$(date +%s)" -le "$deadline" ]; do
        n=0
        for disk in $(target_disks "$1"); do [ -b "$disk" ] && n=$((n + 1)); done
        [ "$n" -eq "$2" ] && return 0
        sleep 0.2
    done
    return 1
}

disks=""
for target in $TARGETS; do
    step "login-${target##*-}" iscsi_login "$target" "$DSIP" >/dev/console 2>&1 || exit 1
    wait_disks "$target" "$LUNS_PER_TARGET" 30
    for disk in $(target_disks "$target"); do disks="${disks:+$disks }$disk"; done
    report_session "$target" "${target##*-}"
done
value disks "$disks"
sys_block=""
for block in /sys/block/sd*; do [ -e "$block" ] && sys_block="$sys_block ${block##*/}"; done
value sys-block "$sys_block"
count=0
for disk in $disks; do [ -b "$disk" ] && count=$((count + 1)); done
check all-luns-are-disks "$count disks: $disks" \
    [ "$count" -eq "$(($(echo "$TARGETS" | wc -w) * LUNS_PER_TARGET))" ]
for disk in $disks; do
    value "size-${disk#/dev/}" "$(($(cat "/sys/block/${disk#/dev/}/size") * 512))"
done

first=${disks%% *}
step mkfs mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$first" || exit 1
mkdir -p /mnt/lun
step mount mount -t ext4 "$first" /mnt/lun || exit 1
dd if=/dev/urandom of=/mnt/lun/data bs=1M count=4 2>/dev/null
sum=$(md5sum </mnt/lun/data)
step umount umount /mnt/lun || exit 1
step fsck e2fsck -fn "$first" || exit 1

# -- fio on every disk, in rounds until told to stop ---------------------------------------
stop_file=/tmp/fio-stop
# fio_rounds DISK STATUS: fio rounds on DISK (each writes then verifies) until $stop_file
# exists, at most 200; STATUS gets "rounds failed longest-io-s" after each round.
fio_rounds() {
    rounds=0 failed=0 longest=0
    while [ ! -e "$stop_file" ] && [ "$rounds" -lt 200 ]; do
        out=/tmp/fio-round-$$-${1#/dev/}
        fio --name=vg --filename="$1" --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio \
            --direct=1 --size="$fio_size" --verify=crc32c --verify_fatal=1 --do_verify=1 \
            --randseed="$rounds" >"$out" 2>&1
        rc=$?
        rounds=$((rounds + 1))
        if [ "$rc" -ne 0 ] || ! grep -q 'err= 0' "$out"; then
            failed=$((failed + 1))
            cat "$out" >/dev/console
        fi
        longest=$(awk -v a="$longest" -v b="$(fio_max_latency "$out")" \
            'BEGIN { print (a + 0 > b + 0) ? a : b }')
        echo "$rounds $failed $longest" >"$2"
    done
}

# Disks after the first: the first holds the ext4 checked below.
fio_disks=${disks#* }
pids=""
for disk in $fio_disks; do
    fio_rounds "$disk" "/tmp/status-${disk#/dev/}" &
    pids="$pids $!"
done

# status_field DISK N: field N of the disk's status (0 before its first round ends).
status_field() {
    if [ -r "/tmp/status-${1#/dev/}" ]; then
        cut -d' ' -f"$2" "/tmp/status-${1#/dev/}"
    else
        echo 0
    fi
}

# rounds_done: the rounds all disks have completed (the smallest count).
rounds_done() {
    least=""
    for disk in $fio_disks; do
        n=$(status_field "$disk" 1)
        [ -z "$least" ] || [ "$n" -lt "$least" ] && least=$n
    done
    echo "${least:-0}"
}

# wait_rounds N TIMEOUT_S: until every disk completed N more rounds.
wait_rounds() {
    goal=$(($(rounds_done) + $1))
    deadline=$(($(date +%s) + $2))
    while [ "$(rounds_done)" -lt "$goal" ] && [ "$(date +%s)" -le "$deadline" ]; do
        sleep 0.5
    done
    [ "$(rounds_done)" -ge "$goal" ]
}

if wait_rounds 1 120; then
    step_pass fio-running "rounds done: $(rounds_done)"
else
    step_fail fio-running "no round ended in 120 s"
fi

# portal_of IQN: the session's current portal, without the tag.
portal_of() {
    current=$(iscsi_session_field "$1" "Current Portal")
    echo "${current%,*}"
}

all_logged_in() {
    for target in $TARGETS; do
        [ "$(iscsi_session_field "$target" "iSCSI Session State")" = LOGGED_IN ] || return 1
    done
}

# moved_away: every session is up and none is on the victim's CVM.
moved_away() {
    all_logged_in || return 1
    for target in $TARGETS; do
        [ "$(portal_of "$target")" != "$VICTIM_PORTAL" ] || return 1
    done
}

# back_home: every session is up and the victim target's is on its CVM again.
back_home() {
    all_logged_in && [ "$(portal_of "$VICTIM_TARGET")" = "$VICTIM_PORTAL" ]
}

# wait_until TIMEOUT_S CONDITION: poll CONDITION every 0.2 s, bounded.
wait_until() {
    deadline=$(($(date +%s) + $1))
    shift
    while ! "$@"; do
        [ "$(date +%s)" -le "$deadline" ] || return 1
        sleep 0.2
    done
}

check victim-at-home "$(portal_of "$VICTIM_TARGET")" \
    [ "$(portal_of "$VICTIM_TARGET")" = "$VICTIM_PORTAL" ]

# -- failover -------------------------------------------------------------------------------
wait_host kill-cvm || exit 1
killed_at=$(uptime_s)
wait_until "${FAILOVER_TIMEOUT:-90}" moved_away
landed_at=$(uptime_s)
for target in $TARGETS; do report_session "$target" "failover-${target##*-}"; done
value failover-seconds "$(awk -v a="$killed_at" -v b="$landed_at" 'BEGIN { printf "%.1f", b - a }')"
check failed-over "$(portal_of "$VICTIM_TARGET") after $(awk -v a="$killed_at" -v b="$landed_at" 'BEGIN { printf "%.1f", b - a }') s" \
    moved_away
wait_rounds 1 120
check fio-after-failover "rounds done: $(rounds_done)" [ "$(rounds_done)" -ge 1 ]

# -- failback -------------------------------------------------------------------------------
wait_host start-cvm || exit 1
started_at=$(uptime_s)
wait_until "${FAILBACK_TIMEOUT:-90}" back_home
back_at=$(uptime_s)
for target in $TARGETS; do report_session "$target" "failback-${target##*-}"; done
value failback-seconds "$(awk -v a="$started_at" -v b="$back_at" 'BEGIN { printf "%.1f", b - a }')"
check failed-back "$(portal_of "$VICTIM_TARGET") after $(awk -v a="$started_at" -v b="$back_at" 'BEGIN { printf "%.1f", b - a }') s" \
    back_home
wait_rounds 1 120
check fio-after-failback "rounds done: $(rounds_done)" [ "$(rounds_done)" -ge 1 ]

# -- fio's verdict ----------------------------------------------------------------------------
touch "$stop_file"
for pid in $pids; do wait_pid "$pid" 120 || echo "fio rounds $pid still running"; done
failed=0 rounds=0 longest=0
for disk in $fio_disks; do
    value "fio-${disk#/dev/}" "$(cat "/tmp/status-${disk#/dev/}")"
    failed=$((failed + $(status_field "$disk" 2)))
    rounds=$((rounds + $(status_field "$disk" 1)))
    longest=$(awk -v a="$longest" -v b="$(status_field "$disk" 3)" \
        'BEGIN { print (a + 0 > b + 0) ? a : b }')
done
value fio-rounds "$rounds"
value fio-longest-io "$longest"
check fio-clean "$rounds rounds, $failed failed" [ "$failed" -eq 0 ]
dmesg | grep -i 'connection\|iscsi\|I/O error' | tail -30
io_errors=$(dmesg | grep -c 'I/O error')
check no-io-errors "kernel I/O errors: $io_errors" [ "$io_errors" -eq 0 ]
step fsck-after e2fsck -fn "$first"
mount -t ext4 -o ro "$first" /mnt/lun &&
    check ext4-data "md5 $(md5sum </mnt/lun/data)" [ "$(md5sum </mnt/lun/data)" = "$sum" ]
umount /mnt/lun 2>/dev/null

# -- the DSIP moves -------------------------------------------------------------------------
if [ "${DSIP_TAKEOVER:-0}" = 1 ]; then
    wait_host kill-leader || exit 1
    leader_killed_at=$(uptime_s)
    attempts=0
    again=""
    while [ "$attempts" -lt 60 ]; do
        attempts=$((attempts + 1))
        again=$(iscsiadm -m discovery -t st -p "$DSIP" 2>/dev/console) && break
        again=""
        sleep 0.5
    done
    value rediscovery-after "$(awk -v a="$leader_killed_at" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s, $attempts attempts"
    check rediscovery "$(echo "$again" | wc -l) targets" \
        [ "$(echo "$again" | sort)" = "$expected" ]
fi

for target in $TARGETS; do
    step "logout-${target##*-}" iscsi_logout "$target" "$DSIP" >/dev/console 2>&1
done

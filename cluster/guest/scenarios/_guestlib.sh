# shellcheck shell=sh
# The guest's main program, run by /init from fw_cfg (opt/stargate/lib); not a scenario.
#
# It sets up the network and iscsid, opens the control channel (/dev/ttyS1, the host's pipe),
# then sources the test's env (opt/stargate/env) and scenario (opt/stargate/scenario) in a
# subshell, and reports `DONE <rc>`. Scenarios use the functions below.
#
# Control protocol, one line each way:
#   guest -> host   BOOTED <kernel> <uptime>
#                   STEP <name> PASS|FAIL <detail>
#                   WAITING <event>          (blocks until the host answers GO <event>)
#                   VALUE <key> <value>
#                   DONE <rc>
#   host -> guest   GO <event> [payload]     (the payload lands in $HOST_REPLY)
#                   ABORT                    (wait_host returns 1)
# Everything else (command output, kernel messages) goes to the console, /dev/ttyS0.

CONTROL_TTY=/dev/ttyS1
GUEST_ADDRESS=10.0.2.15
RUN_DIR=/run/stargate

# ----------------------------------------------------------------------------- protocol

proto() {
    printf '%s\n' "$*" >&3
    echo "@@ $*"
}

# step_pass NAME [DETAIL...] / step_fail NAME [DETAIL...]
step_pass() {
    local name="$1"
    shift
    proto "STEP $name PASS $*"
}

step_fail() {
    local name="$1"
    shift
    proto "STEP $name FAIL $*"
}

# step NAME COMMAND [ARGS...]: run the command (output to the console), PASS when it exits 0.
step() {
    local name="$1" rc
    shift
    echo "== step $name: $*"
    if "$@"; then
        step_pass "$name" ok
        return 0
    else
        rc=$?
        step_fail "$name" "rc=$rc: $*"
        return "$rc"
    fi
}

# check NAME DETAIL CONDITION...: PASS when the test command (e.g. [ "$a" = "$b" ]) holds.
check() {
    local name="$1" detail="$2"
    shift 2
    if "$@"; then
        step_pass "$name" "$detail"
    else
        step_fail "$name" "$detail"
        return 1
    fi
}

value() {
    proto "VALUE $1 $2"
}

# wait_host EVENT: tell the host, block until it answers `GO EVENT [payload]`.
# shellcheck disable=SC2034  # HOST_REPLY is read by the scenarios
wait_host() {
    local event="$1" line
    HOST_REPLY=
    proto "WAITING $event"
    while IFS= read -r line <&3; do
        line=$(printf '%s' "$line" | tr -d '\r')
        case "$line" in
        "GO $event")
            return 0
            ;;
        "GO $event "*)
            HOST_REPLY=${line#"GO $event "}
            return 0
            ;;
        ABORT*)
            return 1
            ;;
        *)
            echo "guestlib: ignoring control line: $line"
            ;;
        esac
    done
    return 1
}

# Elapsed seconds (float) since boot, for timing inside scenarios.
uptime_s() {
    cut -d' ' -f1 /proc/uptime
}

# ----------------------------------------------------------------------------- iSCSI helpers

# iscsi_discover PORTAL: SendTargets discovery, prints "portal,tpgt iqn" lines.
iscsi_discover() {
    iscsiadm -m discovery -t sendtargets -p "$1"
}

# iscsi_add_node IQN PORTAL: a node record for a portal the guest can reach (discovery
# through a guestfwd returns the target's host-side portal, which the guest cannot reach).
iscsi_add_node() {
    # (a discovery that reported this very portal made it already)
    iscsiadm -m node -T "$1" -p "$2" >/dev/null 2>&1 ||
        iscsiadm -m node -o new -T "$1" -p "$2" >/dev/null
}

# iscsi_set IQN PORTAL NAME VALUE: update one node setting (before login).
iscsi_set() {
    iscsiadm -m node -T "$1" -p "$2" -o update -n "$3" -v "$4"
}

iscsi_login() {
    iscsiadm -m node -T "$1" -p "$2" --login
}

iscsi_logout() {
    iscsiadm -m node -T "$1" -p "$2" --logout
}

# iscsi_session_info IQN: the `iscsiadm -m session -P 3` block of that target.
iscsi_session_info() {
    iscsiadm -m session -P 3 2>/dev/null | awk -v iqn="$1" '
        /^Target: / { inside = ($2 == iqn) }
        inside { print }'
}

# iscsi_session_field IQN "Current Portal": the value after the colon, first match.
iscsi_session_field() {
    iscsi_session_info "$1" | awk -v field="$2" '
        {
            line = $0
            sub(/^[ \t]+/, "", line)
            if (index(line, field ":") == 1) {
                value = substr(line, length(field) + 2)
                sub(/^[ \t]+/, "", value)
                print value
                exit
            }
        }'
}

# iscsi_disk IQN [TIMEOUT_S]: prints /dev/sdX of the target's LUN once the kernel made it.
iscsi_disk() {
    local deadline disk
    deadline=$(($(date +%s) + ${2:-30}))
    while [ "$(date +%s)" -le "$deadline" ]; do
        disk=$(iscsi_session_info "$1" | awk '/Attached scsi disk/ { print $4; exit }')
        if [ -n "$disk" ] && [ -b "/dev/$disk" ]; then
            echo "/dev/$disk"
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# iscsi_connect IQN PORTAL: node record, login, then print the disk (/dev/sdX).
iscsi_connect() {
    iscsi_add_node "$1" "$2" || return 1
    iscsi_login "$1" "$2" >/dev/console 2>&1 || return 1
    iscsi_disk "$1" 30
}

# iscsi_wait_no_session IQN [TIMEOUT_S]: until the target has no session.
iscsi_wait_no_session() {
    local deadline
    deadline=$(($(date +%s) + ${2:-30}))
    while [ "$(date +%s)" -le "$deadline" ]; do
        if [ -z "$(iscsi_session_info "$1")" ]; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# iscsi_wait_portal IQN PORTAL [TIMEOUT_S]: until the session is LOGGED_IN with
# "Current Portal" PORTAL (host:port, without the ",tpgt"): a failover or failback landed.
iscsi_wait_portal() {
    local deadline current
    deadline=$(($(date +%s) + ${3:-60}))
    while :; do # looks at least once, so a TIMEOUT_S of 0 is a single check
        current=$(iscsi_session_field "$1" "Current Portal")
        if [ "${current%,*}" = "$2" ] &&
            [ "$(iscsi_session_field "$1" "iSCSI Session State")" = LOGGED_IN ]; then
            return 0
        fi
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# report_session IQN [PREFIX]: VALUE lines for the session's portals and state.
report_session() {
    local prefix="${2:-session}"
    value "$prefix-current-portal" "$(iscsi_session_field "$1" "Current Portal")"
    value "$prefix-persistent-portal" "$(iscsi_session_field "$1" "Persistent Portal")"
    value "$prefix-state" "$(iscsi_session_field "$1" "iSCSI Session State")"
}

# iscsi_wait_state IQN STATE [TIMEOUT_S]: until "iSCSI Session State" is STATE (LOGGED_IN...).
iscsi_wait_state() {
    local deadline
    deadline=$(($(date +%s) + ${3:-60}))
    while :; do # looks at least once, so a TIMEOUT_S of 0 is a single check
        if [ "$(iscsi_session_field "$1" "iSCSI Session State")" = "$2" ]; then
            return 0
        fi
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# wait_pid PID TIMEOUT_S: until the process has ended (0) or TIMEOUT_S passed (1).
wait_pid() {
    local deadline
    deadline=$(($(date +%s) + $2))
    while kill -0 "$1" 2>/dev/null; do
        [ "$(date +%s)" -le "$deadline" ] || return 1
        sleep 0.2
    done
    return 0
}

# run_bounded TIMEOUT_S CMD...: run CMD in the background; its exit status, or 124 when it
# still runs after TIMEOUT_S (a command stuck on I/O cannot be killed: it is left running).
run_bounded() {
    local seconds="$1" pid
    shift
    "$@" &
    pid=$!
    wait_pid "$pid" "$seconds" || {
        echo "guestlib: still running after $seconds s: $*"
        return 124
    }
    wait "$pid"
}

# session_sampler_start FILE: in the background, every 0.2 s, append
# "<uptime> <state of the first iSCSI session, from sysfs> <fio alive: yes|no>" to FILE.
# Cheap (no iscsiadm), so a reconnect too short for a polling loop still shows in it.
# Sets SAMPLER_PID; stop it with kill.
session_sampler_start() {
    (
        while :; do
            state=NONE
            for file in /sys/class/iscsi_session/session*/state; do
                [ -r "$file" ] && state=$(cat "$file") && break
            done
            fio=no
            pidof fio >/dev/null 2>&1 && fio=yes
            echo "$(uptime_s) $state $fio"
            sleep 0.2
        done
    ) >>"$1" 2>/dev/null &
    SAMPLER_PID=$!
}

# fio_during_reconnect FILE SINCE: yes when FILE (session_sampler_start's) has a sample after
# uptime SINCE with the session not LOGGED_IN while fio ran (its I/O waited for the
# reconnect), else no.
fio_during_reconnect() {
    awk -v since="$2" '
        $1 >= since && $2 != "LOGGED_IN" && $3 == "yes" { found = 1 }
        END { print (found ? "yes" : "no") }' "$1"
}

# ----------------------------------------------------------------------------- fio

# fio_start DISK SIZE [FIO OPTIONS...]: 4 KiB random writes at queue depth 32, libaio,
# direct, each block verified with crc32c after the writes; in the background. Sets FIO_PID
# and FIO_OUT. Later options override (e.g. --rw=randrw, --bs=64k, --verify=md5).
fio_start() {
    local disk="$1" size="$2"
    shift 2
    FIO_OUT=/tmp/fio-$(date +%s)-$$.out
    fio --name=guest --filename="$disk" --rw=randwrite --bs=4k --iodepth=32 \
        --ioengine=libaio --direct=1 --size="$size" --verify=crc32c --verify_fatal=1 \
        --do_verify=1 "$@" >"$FIO_OUT" 2>&1 &
    FIO_PID=$!
}

# fio_max_latency FIO_OUT: the longest total latency of any I/O in fio's report, in seconds:
# an I/O held across a reconnect shows the pause the application saw.
fio_max_latency() {
    awk '
        /^ +lat \((n|u|m)sec\): .*max=/ {
            unit = $2
            value = $0
            sub(/.*max=/, "", value)
            sub(/,.*/, "", value)
            scale = 1
            if (value ~ /k$/) { scale = 1e3; sub(/k$/, "", value) }
            if (value ~ /M$/) { scale = 1e6; sub(/M$/, "", value) }
            divisor = unit == "(nsec):" ? 1e9 : unit == "(usec):" ? 1e6 : 1e3
            seconds = value * scale / divisor
            if (seconds > longest) longest = seconds
        }
        END { printf "%.3f\n", longest }' "$1"
}

# fio_finish STEP_NAME [TIMEOUT_S]: wait for fio_start's fio; STEP PASS when it exited 0 with
# err=0; sets FIO_MAX_LATENCY (s) and reports it as VALUE STEP_NAME-max-latency. With
# TIMEOUT_S, a fio still running then (hung I/O) is a FAIL, and is left running.
fio_finish() {
    local name="$1" rc
    if [ -n "$2" ] && ! wait_pid "$FIO_PID" "$2"; then
        cat "$FIO_OUT"
        step_fail "$name" "fio still running after $2 s (hung I/O?)"
        return 1
    fi
    wait "$FIO_PID"
    rc=$?
    cat "$FIO_OUT"
    value "$name-iops" "$(grep -o 'IOPS=[^,]*' "$FIO_OUT" | tr '\n' ' ')"
    FIO_MAX_LATENCY=$(fio_max_latency "$FIO_OUT")
    value "$name-max-latency" "$FIO_MAX_LATENCY"
    if [ "$rc" -eq 0 ] && grep -q 'err= 0' "$FIO_OUT"; then
        step_pass "$name" "rc=0 $(grep -o 'IOPS=[^,]*' "$FIO_OUT" | head -1)"
        return 0
    fi
    step_fail "$name" "rc=$rc $(grep -i 'err=\|verify\|error' "$FIO_OUT" | head -3 | tr '\n' ';')"
    return 1
}

# ----------------------------------------------------------------------------- set-up

setup_network() {
    ip link set lo up
    ip link set eth0 up
    ip addr add "$GUEST_ADDRESS/24" dev eth0
    ip route add default via 10.0.2.2
}

start_iscsid() {
    mkdir -p /run/lock/iscsi /etc/iscsi/nodes /etc/iscsi/send_targets /etc/iscsi/ifaces
    echo "InitiatorName=${GUEST_INITIATOR_NAME:-iqn.2026-11.test.stargate-emu:guest}" \
        >/etc/iscsi/initiatorname.iscsi
    # Foreground, so its log (what it retries, when, why) lands on the console.
    iscsid -f 2>&1 | sed 's/^/[iscsid] /' >/dev/console &
    # Ready once it listens on its abstract control socket (-f writes no pid file).
    tries=0
    while ! grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix; do
        tries=$((tries + 1))
        if [ "$tries" -gt 200 ]; then
            echo "guestlib: iscsid is not listening after 20 s"
            return 1
        fi
        sleep 0.1
    done
}

guest_main() {
    stty -F "$CONTROL_TTY" raw -echo 2>/dev/null
    exec 3<>"$CONTROL_TTY"
    setup_network || echo "guestlib: network set-up failed"
    start_iscsid || echo "guestlib: iscsid did not start"
    echo "guestlib: network and iscsid ready at $(uptime_s) s"
    proto "BOOTED $(uname -r) $(uptime_s)"
    (
        if [ -f "$RUN_DIR/env.sh" ]; then
            set -a
            # shellcheck disable=SC1091  # written by the harness at boot
            . "$RUN_DIR/env.sh"
            set +a
        fi
        # shellcheck disable=SC1091  # written by the harness at boot
        . "$RUN_DIR/scenario.sh"
    )
    local rc=$?
    proto "DONE $rc"
    return "$rc"
}

guest_main

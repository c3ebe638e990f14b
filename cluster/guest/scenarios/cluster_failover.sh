# shellcheck shell=sh
# Failover and failback under fio. Logged in through node 1's redirector (so on node 1's
# stargate), fio verifies 4 KiB random writes; the host kills the local stargate: open-iscsi
# reconnects to its persistent portal (the redirector), which sends it to a remote CVM, and
# fio ends with no I/O or verify error. Then the host starts the local stargate again: after
# the stable window the remote CVM asks for a logout (AsyncEvent), the re-login lands home,
# while fio rounds keep running, again without an error.
# env: TARGET_IQN; REDIRECTOR (node 1's redirector, guest portal); LOCAL_PORTAL (node 1's
#      stargate); REMOTE_PORTALS (space-separated); FIO_SIZE (default 32m);
#      FAILBACK_TIMEOUT (s, default 90); DO_FAILBACK (default 1)
# Reports failover-pause and failback-pause: the longest I/O (s) of the fio that ran through
# each.
fio_size=${FIO_SIZE:-32m}

# What a user sets for a multipath-less, redirector-fronted target: queue I/O for two
# minutes across a reconnect, notice a dead connection within a few seconds.
iscsi_add_node "$TARGET_IQN" "$REDIRECTOR"
iscsi_set "$TARGET_IQN" "$REDIRECTOR" node.session.timeo.replacement_timeout 120
iscsi_set "$TARGET_IQN" "$REDIRECTOR" node.conn[0].timeo.noop_out_interval 2
iscsi_set "$TARGET_IQN" "$REDIRECTOR" node.conn[0].timeo.noop_out_timeout 4
iscsi_set "$TARGET_IQN" "$REDIRECTOR" node.conn[0].timeo.login_timeout 10
iscsi_login "$TARGET_IQN" "$REDIRECTOR" >/dev/console 2>&1
disk=$(iscsi_disk "$TARGET_IQN" 30) || {
    step_fail login "no disk"
    exit 1
}
step_pass login "$disk"
report_session "$TARGET_IQN" before
check at-home "$(iscsi_session_field "$TARGET_IQN" "Current Portal")" \
    iscsi_wait_portal "$TARGET_IQN" "$LOCAL_PORTAL" 5

# at_home: the session is LOGGED_IN on the local stargate now (one look, no waiting).
at_home() {
    [ "$(iscsi_session_field "$TARGET_IQN" "iSCSI Session State")" = LOGGED_IN ] || return 1
    at_home_current=$(iscsi_session_field "$TARGET_IQN" "Current Portal")
    [ "${at_home_current%,*}" = "$LOCAL_PORTAL" ]
}

longer() {
    awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'
}

on_remote() {
    [ "$(iscsi_session_field "$TARGET_IQN" "iSCSI Session State")" = LOGGED_IN ] || return 1
    on_remote_current=$(iscsi_session_field "$TARGET_IQN" "Current Portal")
    case " $REMOTE_PORTALS " in
    *" ${on_remote_current%,*} "*) return 0 ;;
    esac
    return 1
}

# Overlap evidence: fio alive while the session was down (not only at a polling instant).
samples=/tmp/session-samples
session_sampler_start "$samples"

# -- failover ---------------------------------------------------------------------------
fio_start "$disk" "$fio_size"
sleep 2
if kill -0 "$FIO_PID" 2>/dev/null; then
    step_pass fio-running "pid $FIO_PID"
else
    step_fail fio-running "fio ended before the outage"
fi
errors_before=$(dmesg | grep -c 'detected conn error')
wait_host kill-local || exit 1
killed_at=$(uptime_s)
deadline=$(($(date +%s) + 90))
while ! on_remote && [ "$(date +%s)" -le "$deadline" ]; do
    sleep 0.2
done
landed_at=$(uptime_s)
fio_running_at_failover=$(fio_during_reconnect "$samples" "$killed_at")
kill -0 "$FIO_PID" 2>/dev/null && fio_running_at_failover=yes
report_session "$TARGET_IQN" failover
check failed-over "$(iscsi_session_field "$TARGET_IQN" "Current Portal") after $(awk -v a="$killed_at" -v b="$landed_at" 'BEGIN { printf "%.1f", b - a }') s" on_remote
fio_finish fio-failover 120 || exit 1
# The longest I/O of the fio that ran through the failover: the pause the application saw.
value failover-pause "$FIO_MAX_LATENCY"
check fio-overlapped-failover "fio running when the session landed: $fio_running_at_failover" \
    [ "$fio_running_at_failover" = yes ]
errors_after=$(dmesg | grep -c 'detected conn error')
value conn_errors "$((errors_after - errors_before))"
check still-on-remote "$(iscsi_session_field "$TARGET_IQN" "Current Portal")" on_remote

[ "${DO_FAILBACK:-1}" = 1 ] || {
    kill "$SAMPLER_PID" 2>/dev/null
    iscsi_logout "$TARGET_IQN" "$REDIRECTOR"
    exit 0
}

# -- failback ---------------------------------------------------------------------------
wait_host start-local || exit 1
started_at=$(uptime_s)
deadline=$(($(date +%s) + ${FAILBACK_TIMEOUT:-90}))
round=1
failed_rounds=0
failback_pause=0
fio_start "$disk" "$fio_size"
while [ "$(date +%s)" -le "$deadline" ]; do
    if at_home; then
        break
    fi
    if ! kill -0 "$FIO_PID" 2>/dev/null; then
        fio_finish "fio-wait-$round" 5 || failed_rounds=$((failed_rounds + 1))
        failback_pause=$(longer "$failback_pause" "$FIO_MAX_LATENCY")
        round=$((round + 1))
        fio_start "$disk" "$fio_size"
    fi
    sleep 0.5
done
back_at=$(uptime_s)
# fio's I/O spanned the failback when fio ran while the session was away from the remote
# CVM (sampled), or still runs now that it is home.
fio_running_at_failback=$(fio_during_reconnect "$samples" "$started_at")
kill -0 "$FIO_PID" 2>/dev/null && fio_running_at_failback=yes
report_session "$TARGET_IQN" failback
check failed-back "home after $(awk -v a="$started_at" -v b="$back_at" 'BEGIN { printf "%.1f", b - a }') s, fio running: $fio_running_at_failback" \
    at_home
fio_finish fio-failback 120 || failed_rounds=$((failed_rounds + 1))
# The longest I/O of the fio rounds that ran through the failback.
value failback-pause "$(longer "$failback_pause" "$FIO_MAX_LATENCY")"
value fio_rounds "$round"
check fio-clean "failed rounds: $failed_rounds" [ "$failed_rounds" -eq 0 ]
check fio-overlapped-failback "fio running when the session came home: $fio_running_at_failback" \
    [ "$fio_running_at_failback" = yes ]
kill "$SAMPLER_PID" 2>/dev/null
echo "session samples not LOGGED_IN (uptime state fio):"
grep -v LOGGED_IN "$samples" | tail -20
dmesg | grep -i 'connection\|iscsi' | tail -20
io_errors=$(dmesg | grep -c 'I/O error')
check no-io-errors "kernel I/O errors: $io_errors" [ "$io_errors" -eq 0 ]
step logout iscsi_logout "$TARGET_IQN" "$REDIRECTOR"

# shellcheck shell=sh
# The target is killed and restarted while fio writes: with replacement_timeout long enough,
# the kernel queues the I/O, iscsid logs in again, and fio finishes without an error.
# env: TARGET_IQN; PORTAL (default: the first of $PORTALS); FIO_SIZE (default 96m);
#      REPLACEMENT_TIMEOUT (default 120)
portal=${PORTAL:-${PORTALS%% *}}

iscsi_add_node "$TARGET_IQN" "$portal"
iscsi_set "$TARGET_IQN" "$portal" node.session.timeo.replacement_timeout "${REPLACEMENT_TIMEOUT:-120}"
iscsi_login "$TARGET_IQN" "$portal"
disk=$(iscsi_disk "$TARGET_IQN" 30) || {
    step_fail login "no disk"
    exit 1
}
step_pass login "$disk"

fio_start "$disk" "${FIO_SIZE:-96m}"
sleep 3
if kill -0 "$FIO_PID" 2>/dev/null; then
    step_pass fio-running "pid $FIO_PID"
else
    step_fail fio-running "fio ended before the outage"
fi

errors_before=$(dmesg | grep -c 'detected conn error')
wait_host kill-target
outage_start=$(uptime_s)
iscsi_wait_state "$TARGET_IQN" LOGGED_IN 150
value relogin_seen_at "$(uptime_s) (outage answered at $outage_start)"

fio_finish fio
errors_after=$(dmesg | grep -c 'detected conn error')
dmesg | grep -i 'connection\|iscsi' | tail -20
value conn_errors "$((errors_after - errors_before))"
check connection-dropped "conn errors: $((errors_after - errors_before))" \
    [ "$errors_after" -gt "$errors_before" ]
check session-recovered "state=$(iscsi_session_field "$TARGET_IQN" "iSCSI Session State")" \
    [ "$(iscsi_session_field "$TARGET_IQN" "iSCSI Session State")" = LOGGED_IN ]
iscsi_logout "$TARGET_IQN" "$portal"

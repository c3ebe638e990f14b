# shellcheck shell=sh
# The target goes dark (stargate's drop_connection fault in blackhole mode: the socket stays
# open, nothing is answered) while fio writes. Only the initiator's NOP-Out timeout finds out.
#   EXPECT=survive  the blackhole is shorter than replacement_timeout: the initiator logs in
#                   again once the target answers, the queued I/O is retried, fio ends with
#                   no error.
#   EXPECT=eio      the blackhole outlasts replacement_timeout: the kernel fails the queued
#                   I/O, fio reports EIO (Input/output error), which is the expected outcome.
# env: TARGET_IQN; PORTAL (default: the first of $PORTALS); EXPECT (survive|eio);
#      REPLACEMENT_TIMEOUT (default 15); NOP_INTERVAL, NOP_TIMEOUT (default 2 each);
#      LOGIN_TIMEOUT (default 5); IO_SECONDS (fio's run time, default 30);
#      FIO_BOUND (s to wait for fio after the blackhole is armed, default 60)
portal=${PORTAL:-${PORTALS%% *}}
expect=${EXPECT:-survive}

iscsi_add_node "$TARGET_IQN" "$portal"
iscsi_set "$TARGET_IQN" "$portal" node.session.timeo.replacement_timeout "${REPLACEMENT_TIMEOUT:-15}"
iscsi_set "$TARGET_IQN" "$portal" node.conn[0].timeo.noop_out_interval "${NOP_INTERVAL:-2}"
iscsi_set "$TARGET_IQN" "$portal" node.conn[0].timeo.noop_out_timeout "${NOP_TIMEOUT:-2}"
iscsi_set "$TARGET_IQN" "$portal" node.conn[0].timeo.login_timeout "${LOGIN_TIMEOUT:-5}"
iscsi_login "$TARGET_IQN" "$portal"
disk=$(iscsi_disk "$TARGET_IQN" 30) || {
    step_fail login "no disk"
    exit 1
}
step_pass login "$disk"

# Time-based random writes at a bounded rate, each block read back and checked as it goes.
fio_start "$disk" 16m --time_based --runtime="${IO_SECONDS:-30}" --iodepth=4 \
    --rate_iops=200 --verify_backlog=64
sleep 2
if kill -0 "$FIO_PID" 2>/dev/null; then
    step_pass fio-running "pid $FIO_PID"
else
    cat "$FIO_OUT"
    step_fail fio-running "fio ended before the blackhole"
    exit 1
fi

errors_before=$(dmesg | grep -c 'detected conn error')
wait_host blackhole
armed_at=$(uptime_s)
value armed_at "$armed_at"

if ! wait_pid "$FIO_PID" "${FIO_BOUND:-60}"; then
    cat "$FIO_OUT"
    step_fail fio "fio still running ${FIO_BOUND:-60} s after the blackhole (hung I/O?)"
    exit 1
fi
wait "$FIO_PID"
fio_rc=$?
value fio_ended_at "$(uptime_s)"
cat "$FIO_OUT"
errors_after=$(dmesg | grep -c 'detected conn error')
dmesg | grep -i 'connection\|iscsi\|I/O error\|ping' | tail -30
value conn_errors "$((errors_after - errors_before))"
check connection-dropped "conn errors: $((errors_after - errors_before))" \
    [ "$errors_after" -gt "$errors_before" ]

eio=no
if grep -q 'Input/output error\|err= *5[^0-9]\|error=Input' "$FIO_OUT"; then
    eio=yes
fi
value fio_rc "$fio_rc"
value fio_eio "$eio"

case "$expect" in
survive)
    clean=no
    if [ "$fio_rc" -eq 0 ] && grep -q 'err= 0' "$FIO_OUT"; then
        clean=yes
    fi
    check fio "rc=$fio_rc eio=$eio $(grep -o 'IOPS=[^,]*' "$FIO_OUT" | head -1)" [ "$clean" = yes ]
    check session-recovered "state=$(iscsi_session_field "$TARGET_IQN" "iSCSI Session State")" \
        [ "$(iscsi_session_field "$TARGET_IQN" "iSCSI Session State")" = LOGGED_IN ]
    run_bounded 20 iscsi_logout "$TARGET_IQN" "$portal" >/dev/console 2>&1
    ;;
eio)
    # The failure the user asked for: replacement_timeout expired, the I/O got EIO.
    failed=no
    if [ "$fio_rc" -ne 0 ] && [ "$eio" = yes ]; then
        failed=yes
    fi
    check io-error "rc=$fio_rc eio=$eio" [ "$failed" = yes ]
    check kernel-io-error "dmesg reports the failed I/O" \
        sh -c "dmesg | grep -qi 'I/O error\|recovery timed out\|session recovery'"
    ;;
*)
    step_fail expect "unknown EXPECT=$expect"
    exit 1
    ;;
esac

# shellcheck shell=sh
# Three vDisks of one VM, each its own target: one session (and TCP connection) each, all on
# node 1's stargate. The host kills it: every session reconnects through the redirector, and
# the sessions spread over the remote CVMs (round-robin), each readable and writable.
# env: VDISK_IQNS (space-separated); REDIRECTOR; LOCAL_PORTAL; REMOTE_PORTALS
iqn_number=0
for iqn in $VDISK_IQNS; do
    iqn_number=$((iqn_number + 1))
    iscsi_add_node "$iqn" "$REDIRECTOR"
    iscsi_set "$iqn" "$REDIRECTOR" node.session.timeo.replacement_timeout 120
    iscsi_set "$iqn" "$REDIRECTOR" node.conn[0].timeo.noop_out_interval 2
    iscsi_set "$iqn" "$REDIRECTOR" node.conn[0].timeo.noop_out_timeout 4
    iscsi_set "$iqn" "$REDIRECTOR" node.conn[0].timeo.login_timeout 10
    iscsi_login "$iqn" "$REDIRECTOR" >/dev/console 2>&1
    if disk=$(iscsi_disk "$iqn" 30); then
        step_pass "login-$iqn_number" "$disk"
    else
        step_fail "login-$iqn_number" "no disk for $iqn"
        exit 1
    fi
done
iscsiadm -m session -P 1

# Each session its own connection: as many established TCP connections to port 3261
# (0CBD in /proc/net/tcp, state 01) as vDisks.
session_count=$(iscsiadm -m session | grep -c .)
connections=$(awk '$4 == "01" && $3 ~ /:0CBD$/' /proc/net/tcp | wc -l)
value sessions "$session_count"
value connections "$connections"
check one-connection-each "sessions=$session_count connections=$connections" \
    [ "$session_count" -eq "$iqn_number" -a "$connections" -eq "$iqn_number" ]

home=0
for iqn in $VDISK_IQNS; do
    iscsi_wait_portal "$iqn" "$LOCAL_PORTAL" 5 && home=$((home + 1))
done
check all-at-home "$home of $iqn_number on $LOCAL_PORTAL" [ "$home" -eq "$iqn_number" ]

wait_host kill-local || exit 1
deadline=$(($(date +%s) + 90))
portals=
for iqn in $VDISK_IQNS; do
    while [ "$(date +%s)" -le "$deadline" ]; do
        if [ "$(iscsi_session_field "$iqn" "iSCSI Session State")" = LOGGED_IN ]; then
            current=$(iscsi_session_field "$iqn" "Current Portal")
            case " $REMOTE_PORTALS " in
            *" ${current%,*} "*) break ;;
            esac
        fi
        sleep 0.2
    done
    current=$(iscsi_session_field "$iqn" "Current Portal")
    value "portal-$iqn" "$current"
    portals="$portals ${current%,*}"
done
remote_used=0
on_remote=0
for remote in $REMOTE_PORTALS; do
    # shellcheck disable=SC2086  # one portal a line
    count=$(printf '%s\n' $portals | grep -c "^$remote\$")
    on_remote=$((on_remote + count))
    [ "$count" -gt 0 ] && remote_used=$((remote_used + 1))
done
check all-failed-over "$on_remote of $iqn_number on remote CVMs:$portals" \
    [ "$on_remote" -eq "$iqn_number" ]
check spread "$remote_used remote CVMs used:$portals" [ "$remote_used" -ge 2 ]

io_errors=0
io_failed=
for iqn in $VDISK_IQNS; do
    disk=$(iscsi_disk "$iqn" 10) || {
        io_errors=$((io_errors + 1))
        continue
    }
    dd if=/dev/urandom of=/tmp/block bs=64k count=4 2>/dev/null
    if ! run_bounded 30 dd if=/tmp/block of="$disk" bs=64k count=4 oflag=direct ||
        ! run_bounded 30 dd if="$disk" of=/tmp/back bs=64k count=4 iflag=direct ||
        ! cmp /tmp/block /tmp/back; then
        io_errors=$((io_errors + 1))
        io_failed="$io_failed $disk"
    fi
done
check io-after-failover "disks with errors: $io_errors${io_failed:+ ($io_failed)}" \
    [ "$io_errors" -eq 0 ]
[ "$io_errors" -eq 0 ] || exit 1 # a logout would wait for the stuck I/O
for iqn in $VDISK_IQNS; do
    iscsi_logout "$iqn" "$REDIRECTOR" >/dev/console 2>&1
done

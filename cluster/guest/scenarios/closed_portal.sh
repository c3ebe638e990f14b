# shellcheck shell=sh
# A portal whose host port is closed (a dead node): the guest must get nothing but a closed
# connection, at once, and discovery must fail quickly instead of waiting for a timeout.
# env: PORTAL (default: the first of $PORTALS); MAX_SECONDS (default 15)
portal=${PORTAL:-${PORTALS%% *}}

bytes=$(nc "${portal%:*}" "${portal#*:}" </dev/null | wc -c)
check no-bytes "received $bytes bytes" [ "$bytes" -eq 0 ]

started=$(uptime_s)
iscsiadm -m discovery -t sendtargets -p "$portal"
rc=$?
elapsed=$(awk -v a="$started" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }')
value discovery_seconds "$elapsed"
check discovery-fails "rc=$rc after $elapsed s" [ "$rc" -ne 0 ]
check fails-fast "$elapsed s" awk -v e="$elapsed" -v m="${MAX_SECONDS:-15}" 'BEGIN { exit !(e < m) }'

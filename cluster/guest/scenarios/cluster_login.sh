# shellcheck shell=sh
# Discovery through node 1's redirector lists the VM's vDisks; a login through the redirector
# is redirected (0x0101) to node 1's stargate: Current Portal is the stargate's advertised
# address, Persistent Portal the redirector.
# env: TARGET_IQN; REDIRECTOR (guest portal, e.g. 10.0.2.101:3261);
#      EXPECT_PORTAL (the local stargate's guest portal); VDISK_IQNS (space-separated)
iscsi_discover "$REDIRECTOR" >/tmp/discovered 2>&1
rc=$?
cat /tmp/discovered
value discovered "$(awk '{ print $2 }' /tmp/discovered | sort | tr '\n' ' ')"
value discovered_portals "$(awk '{ print $1 }' /tmp/discovered | sort -u | tr '\n' ' ')"
missing=
for iqn in $VDISK_IQNS; do
    grep -q " $iqn\$" /tmp/discovered || missing="$missing $iqn"
done
check discovery "rc=$rc missing:${missing:-none}" [ "$rc" -eq 0 -a -z "$missing" ]

if disk=$(iscsi_connect "$TARGET_IQN" "$REDIRECTOR"); then
    step_pass login "$disk"
else
    step_fail login "no disk after login to $REDIRECTOR"
    exit 1
fi
iscsi_session_info "$TARGET_IQN"
current=$(iscsi_session_field "$TARGET_IQN" "Current Portal")
persistent=$(iscsi_session_field "$TARGET_IQN" "Persistent Portal")
value current_portal "$current"
value persistent_portal "$persistent"
value disk_bytes "$(blockdev --getsize64 "$disk")"
check redirected "current=$current persistent=$persistent" \
    [ "${current%,*}" = "$EXPECT_PORTAL" -a "${persistent%,*}" = "$REDIRECTOR" ]
step read dd if="$disk" of=/dev/null bs=64k count=64 iflag=direct
step logout iscsi_logout "$TARGET_IQN" "$REDIRECTOR"

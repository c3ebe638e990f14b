# shellcheck shell=sh
# Discovery, login, and the session as `iscsiadm -m session -P 3` shows it.
# env: TARGET_IQN; PORTAL (guest-side portal; default: the first of $PORTALS)
portal=${PORTAL:-${PORTALS%% *}}

found=$(iscsi_discover "$portal" 2>&1)
echo "$found"
case "$found" in
*" $TARGET_IQN"*) step_pass discovery "$(echo "$found" | tr '\n' ';')" ;;
*) step_fail discovery "$(echo "$found" | tr '\n' ';')" ;;
esac

if disk=$(iscsi_connect "$TARGET_IQN" "$portal"); then
    step_pass login "$disk"
else
    step_fail login "no disk after login to $portal"
    exit 1
fi

iscsi_session_info "$TARGET_IQN"
current=$(iscsi_session_field "$TARGET_IQN" "Current Portal")
persistent=$(iscsi_session_field "$TARGET_IQN" "Persistent Portal")
state=$(iscsi_session_field "$TARGET_IQN" "iSCSI Session State")
value current_portal "$current"
value persistent_portal "$persistent"
if [ "${current%,*}" = "$portal" ] && [ "$state" = LOGGED_IN ]; then
    step_pass session "current=$current persistent=$persistent state=$state"
else
    step_fail session "current=$current persistent=$persistent state=$state"
fi

size=$(blockdev --getsize64 "$disk")
value disk_bytes "$size"
step logout iscsi_logout "$TARGET_IQN" "$portal"

# shellcheck shell=sh
# Log in at a portal that answers with a redirect (0x0101): the session must end up on the
# portal it was redirected to, and keep the first one as its persistent portal.
# env: TARGET_IQN; PORTAL (where to log in; default: the first of $PORTALS);
#      EXPECT_PORTAL (where the redirect should land, guest-side, e.g. 10.0.2.101:3260)
portal=${PORTAL:-${PORTALS%% *}}

if disk=$(iscsi_connect "$TARGET_IQN" "$portal"); then
    step_pass login "$disk"
else
    step_fail login "no disk after login to $portal"
    exit 1
fi
iscsi_session_info "$TARGET_IQN"
current=$(iscsi_session_field "$TARGET_IQN" "Current Portal")
persistent=$(iscsi_session_field "$TARGET_IQN" "Persistent Portal")
value current_portal "$current"
value persistent_portal "$persistent"
check redirected "current=$current persistent=$persistent" \
    [ "${current%,*}" = "$EXPECT_PORTAL" -a "${persistent%,*}" = "$portal" ]
step io dd if="$disk" of=/dev/null bs=64k count=64 iflag=direct
iscsi_logout "$TARGET_IQN" "$portal"

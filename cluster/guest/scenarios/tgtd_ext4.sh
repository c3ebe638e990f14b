# shellcheck shell=sh
# ext4 on the LUN: write files, fsck, log out and in again, the checksums still match.
# env: TARGET_IQN; PORTAL (default: the first of $PORTALS)
portal=${PORTAL:-${PORTALS%% *}}

disk=$(iscsi_connect "$TARGET_IQN" "$portal") || {
    step_fail login "no disk"
    exit 1
}
step_pass login "$disk"

step mkfs mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$disk" || exit 1
mkdir -p /mnt/lun
step mount mount -t ext4 "$disk" /mnt/lun || exit 1

i=1
while [ "$i" -le 24 ]; do
    head -c $((i * 41 * 1024 + i)) /dev/urandom >"/mnt/lun/file$i"
    i=$((i + 1))
done
mkdir -p /mnt/lun/dir/sub
dd if=/dev/urandom of=/mnt/lun/dir/sub/big bs=1M count=8 2>/dev/null
(cd /mnt/lun && find . -type f | sort | xargs md5sum) >/tmp/sums
value checksums "$(md5sum </tmp/sums | cut -d' ' -f1)"
step_pass write "$(wc -l </tmp/sums) files"

step umount umount /mnt/lun || exit 1
step fsck e2fsck -fn "$disk" || exit 1
step logout iscsi_logout "$TARGET_IQN" "$portal" || exit 1
iscsi_wait_no_session "$TARGET_IQN" 30

disk=$(iscsi_connect "$TARGET_IQN" "$portal") || {
    step_fail relogin "no disk"
    exit 1
}
step_pass relogin "$disk"
step remount mount -t ext4 "$disk" /mnt/lun || exit 1
step verify sh -c 'cd /mnt/lun && md5sum -c /tmp/sums >/dev/console'
umount /mnt/lun
step fsck-again e2fsck -fn "$disk"
iscsi_logout "$TARGET_IQN" "$portal"

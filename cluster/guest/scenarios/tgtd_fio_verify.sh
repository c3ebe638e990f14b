# shellcheck shell=sh
# fio 4 KiB random writes at queue depth 32 on the raw disk, verified with crc32c.
# env: TARGET_IQN; PORTAL (default: the first of $PORTALS); FIO_SIZE (default 32m)
portal=${PORTAL:-${PORTALS%% *}}

disk=$(iscsi_connect "$TARGET_IQN" "$portal") || {
    step_fail login "no disk"
    exit 1
}
step_pass login "$disk"

started=$(date +%s)
fio_start "$disk" "${FIO_SIZE:-32m}"
fio_finish fio
value fio_seconds "$(($(date +%s) - started))"
iscsi_logout "$TARGET_IQN" "$portal"

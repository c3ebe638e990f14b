# shellcheck shell=sh
# The conformance kit's open-iscsi driver: one boot, one job per conformance test.
# The host answers `WAITING job` with the job's words: target=IQN portal=GUEST_PORTAL
# seconds=BUDGET [user=U secret=S [target_user=U target_secret=S]], or `quit`. Each job
# creates the node record, logs in (bounded by BUDGET s), writes 64 KiB with fio (crc32c
# verified), reads it back, logs out, and deletes the record, so no retry outlives the job.
# A job reports the steps login, io, logout (each PASS or FAIL), cleanup when it failed,
# and `VALUE job-end`.

job_setting() {
    iscsi_set "$target" "$portal" "$1" "$2" >/dev/console 2>&1
}

# iscsid refuses to log out a session still logging in ("invalid state for logout. Try
# again later", e.g. one following a redirect loop): retry until it is gone. A session that
# outlives the clean-up fails the step cleanup, and the host boots a fresh guest.
job_cleanup() {
    local deadline
    deadline=$(($(date +%s) + 10))
    while [ -n "$(iscsi_session_info "$target")" ] && [ "$(date +%s)" -le "$deadline" ]; do
        run_bounded 20 iscsiadm -m node -T "$target" -p "$portal" --logout >/dev/console 2>&1 ||
            sleep 1
    done
    run_bounded 20 iscsiadm -m node -T "$target" -p "$portal" -o delete >/dev/console 2>&1
    if [ -n "$(iscsi_session_info "$target")" ]; then
        step_fail cleanup "a session outlived the job"
    fi
}

run_job() {
    target='' portal='' seconds=20 user='' secret='' target_user='' target_secret=''
    for word in "$@"; do
        case "$word" in
        target=*) target=${word#target=} ;;
        portal=*) portal=${word#portal=} ;;
        seconds=*) seconds=${word#seconds=} ;;
        user=*) user=${word#user=} ;;
        secret=*) secret=${word#secret=} ;;
        target_user=*) target_user=${word#target_user=} ;;
        target_secret=*) target_secret=${word#target_secret=} ;;
        esac
    done
    iscsiadm -m node -o new -T "$target" -p "$portal" >/dev/console 2>&1
    # A login the target refuses or never finishes ends within the job's budget.
    job_setting node.conn[0].timeo.login_timeout "$seconds"
    job_setting node.session.initial_login_retry_max 2
    # Offered, so the kit sees what open-iscsi does with digests.
    job_setting node.conn[0].iscsi.HeaderDigest "CRC32C,None"
    job_setting node.conn[0].iscsi.DataDigest "CRC32C,None"
    if [ -n "$user" ]; then
        job_setting node.session.auth.authmethod CHAP
        job_setting node.session.auth.username "$user"
        job_setting node.session.auth.password "$secret"
        if [ -n "$target_user" ]; then
            job_setting node.session.auth.username_in "$target_user"
            job_setting node.session.auth.password_in "$target_secret"
        fi
    fi
    if run_bounded "$seconds" iscsiadm -m node -T "$target" -p "$portal" --login \
        >/dev/console 2>&1 && disk=$(iscsi_disk "$target" 10); then
        step_pass login "$disk"
        if run_bounded 30 fio --name=kit --filename="$disk" --rw=write --bs=64k --size=64k \
            --direct=1 --ioengine=psync --verify=crc32c --do_verify=1 --verify_fatal=1 \
            >/dev/console 2>&1; then
            step_pass io "wrote 64 KiB and read it back"
        else
            step_fail io "fio failed"
        fi
        step logout iscsiadm -m node -T "$target" -p "$portal" --logout >/dev/console 2>&1
    else
        step_fail login "iscsiadm --login failed or took longer than $seconds s"
    fi
    job_cleanup
    value job-end "$(uptime_s)"
}

while wait_host job; do
    [ "$HOST_REPLY" = quit ] && exit 0
    # shellcheck disable=SC2086  # the words of the job, split on purpose
    run_job $HOST_REPLY
done

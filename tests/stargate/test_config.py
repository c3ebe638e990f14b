"""`stargate target --config FILE.toml`: a real target serves what the file says (vDisks,
CHAP both ways, the initiator ACL), flags given with it win, and every kind of bad file is
refused in one line naming the key and its line (exit status 2, no traceback)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import build_parser
from stargate.cli import STARTUP_FAULT_FLAGS, target_config
from stargate.config import DEFAULTS, FIELD_NAMES, StoreKind, VDiskSpec
from stargate.stores.rbd import RbdLocation
from stargate.target import ChapCredentials
from tests.helpers.net import free_port
from tests.helpers.procs import ProcessReaper
from topology.config_file import ConfigDocument, ConfigError, locate
from topology.naming import target_name_for

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "target.toml"
ALLOWED = "iqn.2026-12.com.example:qa-host"  # the example's ACL and CHAP
CHAP = "qa-host%initiator-secret"
MUTUAL = "target_user=stargate&target_password=target-secret-1"


def _stargate_target(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stargate", "target", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _inq(url: str, initiator_name: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "initiator.cli", "--initiator-name", initiator_name]
    return subprocess.run(
        [*argv, "inq", "--json", url], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_example_file_describes_a_target() -> None:
    config = target_config(build_parser().parse_args(["target", "--config", str(EXAMPLE)]))
    assert config.vdisks == (VDiskSpec("vd1", 64 << 20), VDiskSpec("vd2", 32 << 20))
    assert config.portal == ("127.0.0.1", 3261) and config.store is StoreKind.FILE
    assert config.data_dir == Path("/var/tmp/stargate-emu")
    assert config.chap == ChapCredentials("qa-host", "initiator-secret")
    assert config.mutual_chap == ChapCredentials("stargate", "target-secret-1")
    assert config.discovery_chap is None and config.http is None
    assert config.allow == (ALLOWED,)
    assert (config.queue_depth, config.max_buffer_mib, config.session_slots) == (128, 256, None)
    assert (config.login_timeout, config.nop_interval, config.pdu_timeout) == (15, 5, 10)
    assert (config.control_pdu_rate, config.busy_poll_us) == (2000, 50)


def test_flags_given_with_the_file_override_it(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            *("target", "--config", str(EXAMPLE), "--portal", "127.0.0.9:0", "--memory"),
            *("--vdisk", "only:1M", "--allow", "iqn.x:a", "--allow", "iqn.x:b"),
            *("--queue-depth", "7", "--read-only", "--nop-timeout", "3"),
        ]
    )
    config = target_config(args)
    assert config.portal == ("127.0.0.9", 0) and config.store is StoreKind.MEMORY
    assert config.vdisks == (VDiskSpec("only", 1 << 20),)  # the file's list is replaced
    assert config.allow == ("iqn.x:a", "iqn.x:b")
    assert (config.queue_depth, config.read_only, config.nop_timeout) == (7, True, 3)
    # What no flag names still comes from the file.
    assert config.chap == ChapCredentials("qa-host", "initiator-secret")
    assert (config.max_buffer_mib, config.nop_interval) == (256, 5)
    # --no-read-only turns off what a file turns on.
    read_only = tmp_path / "ro.toml"
    read_only.write_text('store = "null"\nread_only = true\n[[vdisk]]\nid = "a"\nsize = "1M"\n')
    on = target_config(build_parser().parse_args(["target", "--config", str(read_only)]))
    off = ["target", "--config", str(read_only), "--no-read-only"]
    assert on.read_only and not target_config(build_parser().parse_args(off)).read_only


EVERY_KEY = """
portal = "127.0.0.5:3262"
advertise = "192.0.2.1:3260"
store = "rbd"
data_dir = "vdisks"
rbd = "pool/prefix-"
ceph_conf = "ceph.conf"
rbd_take_over = true
read_only = true
log_level = "DEBUG"
allow = ["iqn.x:a"]
[[vdisk]]
id = "a"
size = 1048576
[chap]
user = "u1"
secret = "s1"
[mutual_chap]
user = "u2"
secret = "s2"
[discovery_chap]
user = "u3"
secret = "s3"
[discovery_mutual_chap]
user = "u4"
secret = "s4"
[http]
portal = "127.0.0.5:8080"
control_token_file = "token"
[queue]
depth = 9
max_buffer_mib = 9
session_slots = 9
session_buffer_mib = 9
vdisk_slots = 9
vdisk_buffer_mib = 9
[timers]
login_timeout = 9
nop_interval = 9
nop_timeout = 9
data_out_timeout = 9
pdu_timeout = 9
[connection]
control_pdu_rate = 9
eager_send_every = 9
busy_poll_us = 9
"""


def test_every_setting_has_its_key_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "all.toml"
    path.write_text(EVERY_KEY)
    config = target_config(build_parser().parse_args(["target", "--config", str(path)]))
    unchanged = [name for name in FIELD_NAMES if getattr(config, name) == getattr(DEFAULTS, name)]
    assert unchanged == []
    # Relative paths are the file's directory's, wherever the command runs.
    assert config.data_dir == tmp_path / "vdisks"
    assert config.control_token_file == tmp_path / "token"
    assert config.ceph_conf == tmp_path / "ceph.conf"
    assert config.rbd == RbdLocation("pool", "prefix-")
    assert config.discovery_mutual_chap == ChapCredentials("u4", "s4")


def test_every_flag_is_a_setting_of_the_config() -> None:
    """A flag `target_config` did not know would be silently ignored (the start-up fault
    flags are read by `arm_not_ready`)."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    target = subparsers.choices["target"]
    dests = {action.dest for action in target._actions} - {"help", "config", "handler"}
    assert dests - STARTUP_FAULT_FLAGS == set(FIELD_NAMES)


def test_a_target_serves_what_the_file_says(
    process_reaper: ProcessReaper, tmp_path: Path, tmp_data_dir: Path
) -> None:
    """The example, moved to a free portal and a fresh data directory by flags: its vDisks
    are files there, and its CHAP (both ways) and ACL are enforced."""
    host = "127.0.0.1"
    port = free_port(host)
    argv = [sys.executable, "-m", "stargate", "target", "--config", str(EXAMPLE)]
    argv += ["--portal", f"{host}:{port}", "--data-dir", str(tmp_data_dir)]
    process = process_reaper.spawn(argv, name="stargate")
    process.wait_for_port(host, port, timeout=30)
    assert {path.name for path in tmp_data_dir.glob("*.img")} == {"vd1.img", "vd2.img"}
    for vdisk, size in (("vd1", 64 << 20), ("vd2", 32 << 20)):
        url = f"iscsi://{CHAP}@{host}:{port}/{target_name_for(vdisk)}/0?{MUTUAL}"
        answer = _inq(url, ALLOWED)
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)["size_bytes"] == size
    url = f"iscsi://{CHAP}@{host}:{port}/{target_name_for('vd1')}/0?{MUTUAL}"
    assert _inq(url, "iqn.2026-12.com.example:intruder").returncode != 0  # the ACL
    no_chap = _inq(f"iscsi://{host}:{port}/{target_name_for('vd1')}/0", ALLOWED)
    assert no_chap.returncode != 0 and "auth" in no_chap.stderr.lower()
    wrong_target = f"iscsi://{CHAP}@{host}:{port}/{target_name_for('vd1')}/0"
    wrong = _inq(wrong_target + "?target_user=stargate&target_password=not-it-at-all", ALLOWED)
    assert wrong.returncode != 0  # mutual CHAP: the initiator refuses a target without it
    assert process.is_running()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


VDISK = '[[vdisk]]\nid = "vd1"\nsize = "1M"\n'
LUN = '[[vdisk.lun]]\nid = "{}"\nsize = "1M"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('store = "memory"\nportal = "127.0.0.1:3261\n' + VDISK, ":2: TOML syntax error"),
        ('store = "memory"\n' + VDISK + "[queue]\ndepht = 4\n", ":6: queue.depht: unknown key"),
        ('store = "memory"\n' + VDISK + "[timer]\nnop_interval = 4\n", ":5: timer: unknown key"),
        ('store = "memory"\n' + VDISK + "[queue]\ndepth = 0\n", ":6: queue.depth: 0 must be"),
        ('store = "memory"\nread_only = "yes"\n' + VDISK, ":2: read_only: must be true or"),
        ('store = "tape"\n' + VDISK, ":1: store: 'tape' is not one of file, memory, null"),
        ('store = "memory"\n' + VDISK + '[[vdisk]]\nsize = "1M"\n', ":5: vdisk[1].id: is required"),
        ('store = "memory"\n' + VDISK.replace("1M", "12Q"), ":4: vdisk[0].size: vDisk vd1"),
        ('store = "memory"\nportal = "nonsense"\n' + VDISK, ":2: portal:"),
        (
            'store = "memory"\n' + VDISK + '[mutual_chap]\nuser = "a"\nsecret = "b"\n',
            ":5: mutual_chap needs chap",
        ),
        ('store = "memory"\n' + VDISK + '[chap]\nuser = "a"\n', ":5: chap.secret: is required"),
        ('store = "memory"\n', ": vdisk: at least one vDisk is required"),
        ('store = "memory"\n' + VDISK + VDISK, ":5: vdisk: vDisk vd1 given twice"),
        ('store = "memory"\n[[vdisk]]\nid = "new"\n', ":2: vdisk: vDisk new does not exist"),
        ('store = "memory"\n' + VDISK.replace("1M", "1P"), ":2: vdisk: vDisk vd1: size"),
        (VDISK, ": data_dir is required unless the vDisks are in memory or null"),
        ('store = "memory"\n' + VDISK + LUN.format("vd1"), ":2: vdisk: vDisk vd1 (LUN 1 of vd1)"),
        (
            'store = "memory"\n' + VDISK + LUN.format("b") + LUN.format("b"),
            ":2: vdisk: vDisk b (LUN 2 of vd1) given twice",
        ),
        ('store = "memory"\n' + VDISK + LUN.format("b").replace("1M", "x"), ":7: vdisk[0].lun"),
        (
            'store = "memory"\n' + VDISK + '[[vdisk.lun]]\nsize = "1M"\n',
            ":5: vdisk[0].lun[0].id: is required",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_the_key_and_its_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    completed = _stargate_target("--config", str(_write(tmp_path, text)))
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert f"bad.toml{expected}" in completed.stderr
    assert completed.stderr.startswith(f"stargate target: error: {tmp_path / 'bad.toml'}")


def test_a_flag_that_breaks_a_rule_is_named_as_a_flag(tmp_path: Path) -> None:
    config = _write(tmp_path, 'store = "memory"\n' + VDISK)
    completed = _stargate_target("--config", str(config), "--mutual-chap", "a:b")
    assert completed.returncode == 2
    assert "--mutual-chap needs chap" in completed.stderr  # chap: not in the file either
    twice = _stargate_target("--memory", "--vdisk", "a{0}:1M", "--vdisk", "a{0}:1M")
    assert twice.returncode == 2 and "--vdisk: vDisk a{0} given twice" in twice.stderr
    missing = _stargate_target("--config", str(tmp_path / "missing.toml"))
    assert missing.returncode == 2 and "missing.toml: cannot read" in missing.stderr


def test_luns_join_the_target_of_the_vdisk_before_them(tmp_path: Path) -> None:
    flags = ["target", "--memory", "--vdisk", "a:1M", "--lun", "b:2M", "--lun", "c:3M"]
    config = target_config(build_parser().parse_args([*flags, "--vdisk", "d:1M"]))
    mib = 1 << 20
    b, c = VDiskSpec("b", 2 * mib), VDiskSpec("c", 3 * mib)
    assert config.vdisks == (VDiskSpec("a", mib, (b, c)), VDiskSpec("d", mib))
    text = (
        'store = "memory"\n' + VDISK + LUN.format("b") + LUN.format("c") + VDISK.replace("1", "2")
    )
    from_file = target_config(
        build_parser().parse_args(["target", "--config", str(_write(tmp_path, text))])
    )
    assert [[lun.vdisk_id for lun in spec.luns] for spec in from_file.vdisks] == [
        ["vd1", "b", "c"],
        ["vd2"],
    ]


def test_bad_luns_given_as_flags_are_refused_naming_the_flag() -> None:
    alone = _stargate_target("--memory", "--lun", "b:1M")
    assert alone.returncode == 2 and "--lun b: no --vdisk before it to join" in alone.stderr
    twice = _stargate_target("--memory", "--vdisk", "a:1M", "--lun", "b:1M", "--lun", "b:1M")
    assert twice.returncode == 2
    assert "--vdisk: vDisk b (LUN 2 of a) given twice" in twice.stderr
    bad = _stargate_target("--memory", "--vdisk", "a:1M", "--lun", "b:1Q")
    assert bad.returncode == 2 and "argument --lun" in bad.stderr
    for completed in (alone, twice, bad):
        assert "Traceback" not in completed.stderr


def test_locate_finds_keys_tables_and_array_entries() -> None:
    text = (
        'portal = "x"\n'
        "[[vdisk]]\n"
        'id = "a"\n'
        "[[vdisk]]  # the second\n"
        'id = "b"\n'
        "size = 4\n"
        "[chap]\n"
        'user = "u"\n'
        "[inline]\n"
        'creds = { user = "u", secret = "s" }\n'
        'dotted . "key" = 1\n'
    )
    assert locate(text, ("portal",)) == 1
    assert locate(text, ("vdisk", 0, "id")) == 3
    assert locate(text, ("vdisk", 1, "size")) == 6
    assert locate(text, ("vdisk", 1, "missing")) == 4  # the entry's header
    assert locate(text, ("chap", "secret")) == 7
    assert locate(text, ("inline", "creds", "secret")) == 10
    assert locate(text, ("inline", "dotted", "key")) == 11
    assert locate(text, ("absent",)) is None


def test_a_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("a = 1\n\n[t]\nb = = 2\n")
    with pytest.raises(ConfigError, match=r"broken\.toml:4: TOML syntax error"):
        ConfigDocument.load(path)

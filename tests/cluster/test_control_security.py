"""The HTTP pages' controls against real CVM and redirector processes (issue 13, findings 6
and 7): a control token guards every mutating request, unknown vDisks are 404, and control
inputs out of range are a 400 naming the problem, never a 500."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from redirector.config import redirector_page_url
from tests.helpers.procs import ProcessReaper
from tests.redirector.cluster import TestCluster

TOKEN_FILE = "control.token"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """One node (CVM and redirector) with one VM of two vDisks."""
    reaper = ProcessReaper(log_dir=tmp_path_factory.mktemp("process-logs"))
    try:
        directory = tmp_path_factory.mktemp("control-security") / "cluster"
        cluster = TestCluster.create(directory, reaper, nodes=1, stable_window=1)
        cluster.create_vm("vm1", disks=2, size="16M", home=1)
        cluster.start_stargates()
        cluster.start_redirector(1)
        yield cluster
    finally:
        reaper.reap_all()  # by PID


def _token(cluster: TestCluster) -> str:
    path = cluster.directory / TOKEN_FILE
    return path.read_text().strip() if path.exists() else ""


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def _request(method: str, url: str, token: str | None = None, body: bytes = b"") -> Answer:
    """One plain urllib request: what any local client can send."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, response.read(), _lower(response.headers))
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read(), _lower(error.headers))


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _json(method: str, url: str, token: str | None = None, document: object = None) -> Any:
    body = b"" if document is None else json.dumps(document).encode()
    answer = _request(method, url, token, body)
    return answer.status, answer.json()


def test_token_file_is_private(cluster: TestCluster) -> None:
    path = cluster.directory / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(_token(cluster)) >= 32


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/control/vdisks/vm1-0/release?by=9"),
        ("POST", "/control/vdisks/vm1-0/logout?seconds=1"),
        ("POST", "/faults"),
        ("DELETE", "/faults"),
        ("DELETE", "/faults/1"),
    ],
)
def test_cvm_controls_need_the_token(cluster: TestCluster, method: str, path: str) -> None:
    url = cluster.node(1).http_url + path
    missing = _request(method, url, body=b'{"kind": "busy"}')
    assert missing.status == 401, missing.body
    assert b"Authorization: Bearer" in missing.body
    assert missing.headers.get("www-authenticate", "").startswith("Bearer")
    wrong = _request(method, url, token="not-the-token", body=b'{"kind": "busy"}')
    assert wrong.status == 403, wrong.body
    # Nothing was done: no fault armed, the vDisk was not released.
    status, faults = _json("GET", cluster.node(1).http_url + "/faults")
    assert status == 200 and faults["faults"] == []


def test_reads_stay_open(cluster: TestCluster) -> None:
    for path in ("/stats.json", "/vdisks", "/faults", "/metrics"):
        assert _request("GET", cluster.node(1).http_url + path).status == 200
    assert _request("GET", redirector_page_url(cluster.node(1)) + "/faults").status == 200


def test_redirector_login_faults_need_the_token(cluster: TestCluster) -> None:
    url = redirector_page_url(cluster.node(1)) + "/faults"
    fault = b'{"kind": "login_fail", "status": "0x0301"}'
    assert _request("POST", url, body=fault).status == 401
    assert _request("POST", url, token="x" * 64, body=fault).status == 403
    assert _request("DELETE", url).status == 401
    token = _token(cluster)
    assert _request("POST", url, token=token, body=fault).status == 200
    status, answer = _json("DELETE", url, token=token)
    assert (status, answer["removed"]) == (200, 1)


def test_unknown_vdisk_is_not_found(cluster: TestCluster) -> None:
    base = cluster.node(1).http_url + "/control/vdisks"
    token = _token(cluster)
    for action in ("release?by=2", "logout?seconds=1"):
        status, answer = _json("POST", f"{base}/no-such-vdisk/{action}", token)
        assert status == 404, answer
        assert "no-such-vdisk" in str(answer["error"])


@pytest.mark.parametrize("seconds", ["70000", "-1", "1e3", "abc", "99999999999999999999"])
def test_logout_seconds_out_of_range_is_400(cluster: TestCluster, seconds: str) -> None:
    url = f"{cluster.node(1).http_url}/control/vdisks/vm1-0/logout?seconds={seconds}"
    status, answer = _json("POST", url, _token(cluster))
    assert status == 400, answer
    assert "seconds" in str(answer["error"]) and "65535" in str(answer["error"])


def test_logout_in_range_is_accepted(cluster: TestCluster) -> None:
    url = f"{cluster.node(1).http_url}/control/vdisks/vm1-0/logout?seconds=65535"
    status, answer = _json("POST", url, _token(cluster))
    assert (status, answer["sessions_asked"]) == (200, 0)


@pytest.mark.parametrize(
    ("fault", "field"),
    [
        ({"kind": "async_logout", "time2wait": 70000}, "time2wait"),
        ({"kind": "stat_sn_jump", "amount": 1 << 40}, "amount"),
        ({"kind": "busy", "duration": -1}, "duration"),
        ({"kind": "busy", "skip": -5}, "skip"),
        ({"kind": "delay", "delay": 1e12}, "delay"),
        ({"kind": "check_condition", "sense_key": 99}, "sense_key"),
        ({"kind": "busy", "lba": [9, 1]}, "lba"),
        ({"kind": "busy", "opcodes": [999]}, "opcodes"),
        ({"kind": "short_transfer", "fraction": 3}, "fraction"),
        ({"kind": "login_redirect", "portal": "h:99999"}, "portal"),
    ],
)
def test_fault_fields_out_of_range_are_400(
    cluster: TestCluster, fault: dict[str, object], field: str
) -> None:
    status, answer = _json("POST", cluster.node(1).http_url + "/faults", _token(cluster), fault)
    assert status == 400, answer
    assert field in str(answer["error"])


def test_fault_cli_sends_the_cluster_token(cluster: TestCluster) -> None:
    def fault(*words: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "stargate", "fault", *words, "--dir", str(cluster.directory)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    added = fault("add", "busy", "--vdisk", "vm1-1", "--count", "1", "--redirector", "1")
    assert added.returncode == 2  # busy is no redirector fault: refused with a message
    added = fault("add", "busy", "--vdisk", "vm1-1", "--count", "1")
    assert added.returncode == 0, added.stderr
    cleared = fault("clear")
    assert cleared.returncode == 0, cleared.stderr
    bad = fault("add", "async_logout", "--time2wait", "70000")
    assert bad.returncode == 2 and "time2wait" in bad.stderr


def test_fault_cli_with_url_needs_a_token_file(cluster: TestCluster, tmp_path: Path) -> None:
    url = cluster.node(1).http_url
    argv = [sys.executable, "-m", "stargate", "fault", "clear", "--url", url]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "Authorization" in refused.stderr and str(cluster.directory) in refused.stderr
    argv += ["--token-file", str(cluster.directory / TOKEN_FILE)]
    accepted = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert accepted.returncode == 0, accepted.stderr

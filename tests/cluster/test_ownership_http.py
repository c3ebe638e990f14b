"""The ownership record (shared mmap, epochs, fences) and the h11 HTTP server/client."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import trio

from control.http import (
    HttpError,
    HttpRequest,
    HttpResponse,
    http_json,
    http_request,
    serve_http,
)
from tests.helpers.net import unique_loopback_address
from topology.ownership import Fence, OwnershipFile, OwnershipRecord, read_record


def test_claims_bump_the_epoch_and_break_older_fences(tmp_path: Path) -> None:
    path = tmp_path / "ownership" / "vd"
    first, second = OwnershipFile(path), OwnershipFile(path)  # two stargates' mappings
    assert first.read() == OwnershipRecord(0, 0) and not first.read().claimed
    fence_1 = Fence(first, first.claim(1))
    assert fence_1.record == OwnershipRecord(1, 1) and fence_1.holds()
    fence_2 = Fence(second, second.claim(2))
    assert fence_2.record == OwnershipRecord(2, 2)
    assert not fence_1.holds() and fence_2.holds()  # seen through the shared page at once
    fence_1b = Fence(first, first.claim(1))
    assert fence_1b.record.epoch == 3 and not fence_2.holds()
    assert read_record(path) == OwnershipRecord(1, 3)
    assert path.stat().st_size == 8
    assert read_record(tmp_path / "absent") is None
    first.close()
    second.close()


def _claim_many(path: str, node_id: int, count: int) -> None:
    file = OwnershipFile(Path(path))
    for _ in range(count):
        file.claim(node_id)
    file.close()


def test_concurrent_claims_from_processes_never_reuse_an_epoch(tmp_path: Path) -> None:
    path = tmp_path / "vd"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_claim_many, args=(str(path), n, 300)) for n in (1, 2, 3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    record = read_record(path)
    assert record is not None and record.epoch == 900 and record.node_id in (1, 2, 3)


async def _echo(request: HttpRequest) -> HttpResponse:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    return HttpResponse.json(
        {"method": request.method, "path": request.path, "q": request.query_value("q"),
         "body": request.body.decode()}
    )  # fmt: skip


async def test_http_server_and_client_round_trip() -> None:
    host = unique_loopback_address()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, _echo, host, 0)
        base = f"http://{host}:{port}"
        status, document = await http_json("POST", f"{base}/a/b?q=1&q=2", document={"x": 1})
        assert status == 200
        assert document == {"method": "POST", "path": "/a/b", "q": "2", "body": '{"x": 1}'}
        response = await http_request("GET", f"{base}/boom")
        assert response.status == 500  # a handler bug costs one request, not the server
        assert (await http_request("GET", f"{base}/")).status == 200
        nursery.cancel_scope.cancel()


async def test_http_client_fails_fast_and_bounded() -> None:
    host = unique_loopback_address()
    with pytest.raises(HttpError):  # nobody listens: refused at once
        await http_request("GET", f"http://{host}:9/", timeout=2)
    silent = trio.socket.socket()
    await silent.bind((host, 0))
    silent.listen(1)  # accepts (backlog) but never answers: like a SIGSTOPped process
    port = silent.getsockname()[1]
    with trio.fail_after(3), pytest.raises(HttpError, match=r"no answer within 0\.3 s"):
        await http_request("GET", f"http://{host}:{port}/", timeout=0.3)
    silent.close()
    with pytest.raises(HttpError, match="not an http URL"):
        await http_request("GET", "ftp://x/")

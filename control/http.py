"""A small HTTP/1.1 server and client over trio, with h11 doing the protocol.

Enough for the stargates' stats/control page and for the processes and the CLI that read
it: one handler per request, bodies read whole (they are small), keep-alive honoured.
Every exchange is bounded in time so a stopped peer never hangs a caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
RECEIVE_SIZE = 65536
SERVER_IDLE_TIMEOUT = 30.0
SERVER_NAME = b"stargate-emu"


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, document: Any, status: int = 200) -> HttpResponse:
        body = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()
        return cls(status, body, "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str | None = None) -> HttpResponse:
        return cls(status, text.encode(), content_type or "text/plain; charset=utf-8")

    def json_body(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpError(Exception):
    """The peer did not answer, answered garbage, or timed out."""


# -- server ------------------------------------------------------------------------------


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host:port`` until cancelled; reports the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    task_status.started(bound)

    async def connection(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, handler)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(connection, listeners)


async def _serve_connection(stream: trio.abc.Stream, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER)
    while True:
        with trio.move_on_after(SERVER_IDLE_TIMEOUT):
            request = await _receive_request(stream, conn)
        if request is None:
            return
        try:
            response = await handler(request)
        except Exception:  # a handler bug costs one request, never the page
            log.exception("HTTP handler failed for %s %s", request.method, request.path)
            response = HttpResponse.text("internal error\n", 500)
        await _send(stream, conn, _response_events(response))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


async def _receive_request(stream: trio.abc.Stream, conn: h11.Connection) -> HttpRequest | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_SIZE)
            conn.receive_data(bytes(data))
            if not data and conn.their_state is not h11.DONE:
                return None
            continue
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return None
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            target = urlsplit(head.target.decode("ascii", "replace"))
            headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in head.headers
            }
            return HttpRequest(
                head.method.decode("ascii"),
                target.path,
                parse_qs(target.query),
                bytes(body),
                headers,
            )
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _response_events(response: HttpResponse) -> list[Any]:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Server", SERVER_NAME.decode()),
        *response.headers.items(),
    ]
    return [
        h11.Response(status_code=response.status, headers=headers),
        h11.Data(data=response.body),
        h11.EndOfMessage(),
    ]


async def _send(stream: trio.abc.Stream, conn: h11.Connection, events: list[Any]) -> None:
    payload = b"".join(conn.send(event) or b"" for event in events)
    await stream.send_all(payload)


# -- client ------------------------------------------------------------------------------


async def http_request(
    method: str, url: str, *, body: bytes = b"", timeout: float = 5.0, token: str | None = None
) -> HttpResponse:
    """One request on a fresh connection; raises `HttpError` on any failure or timeout.
    ``token`` goes as ``Authorization: Bearer`` (the pages' control token)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise HttpError(f"not an http URL: {url}")
    port = parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    host_header = parts.netloc
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await trio.open_tcp_stream(parts.hostname, port)
        except OSError as error:
            raise HttpError(f"{url}: {error.strerror or error}") from None
        try:
            return await _exchange(stream, method, target, host_header, body, token)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as error:
            raise HttpError(f"{url}: {error}") from None
        finally:
            await trio.aclose_forcefully(stream)
    assert scope.cancelled_caught
    raise HttpError(f"{url}: no answer within {timeout:g} s")


async def _exchange(
    stream: trio.abc.Stream, method: str, target: str, host: str, body: bytes, token: str | None
) -> HttpResponse:
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", host), ("Content-Length", str(len(body))), ("Connection", "close")]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    await _send(
        stream,
        conn,
        [
            h11.Request(method=method, target=target, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ],
    )
    status = 0
    response_headers: dict[str, str] = {}
    received = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
        elif isinstance(event, h11.Response):
            status = event.status_code
            response_headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in event.headers
            }
        elif isinstance(event, h11.Data):
            received += event.data
            if len(received) > 64 * MAX_BODY:
                raise HttpError("response body too large")
        elif isinstance(event, h11.EndOfMessage):
            content_type = response_headers.get("content-type", "")
            return HttpResponse(status, bytes(received), content_type, response_headers)
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError("connection closed before the response ended")


async def http_json(
    method: str, url: str, *, document: Any = None, timeout: float = 5.0, token: str | None = None
) -> tuple[int, Any]:
    """Send ``document`` (if any) as JSON, return (status, decoded JSON body)."""
    body = b"" if document is None else json.dumps(document).encode()
    response = await http_request(method, url, body=body, timeout=timeout, token=token)
    try:
        return response.status, response.json_body()
    except ValueError:
        raise HttpError(f"{url}: answer is not JSON ({response.body[:80]!r})") from None

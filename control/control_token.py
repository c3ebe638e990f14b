"""The control token: the credential every mutating request to an HTTP page must carry.

`stargate cluster up` (or the first process of the cluster to start) writes a random token
into DIR/control.token, readable by its owner only; every CVM and redirector reads it and
refuses a POST/PUT/DELETE without ``Authorization: Bearer <token>`` (401) or with another
token (403). Read-only GETs stay open. The CLI, the redirector's failback, the CVMs' release
requests and the scenario runner read the same file and send it.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path

from control.http import HttpRequest, HttpResponse

TOKEN_FILE = "control.token"
TOKEN_BYTES = 32
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})
MAX_TOKEN_LENGTH = 1024


class ControlTokenError(Exception):
    """The token file cannot be read or written."""


def cluster_token_file(directory: Path | str) -> Path:
    return Path(directory) / TOKEN_FILE


def read_token(path: Path | str) -> str:
    """The token stored in ``path``; ControlTokenError when missing or empty."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError as error:
        raise ControlTokenError(f"cannot read control token {path}: {error.strerror}") from None
    if not text or len(text) > MAX_TOKEN_LENGTH or not text.isprintable() or " " in text:
        raise ControlTokenError(f"control token file {path} holds no usable token")
    return text


def ensure_token(path: Path | str) -> str:
    """Read the token at ``path``, creating it (mode 0600) when absent.

    Safe when several processes start at once: the new token is written to a private
    temporary file and linked into place, so a reader never sees a half-written file and
    exactly one writer wins.
    """
    path = Path(path)
    if path.exists():
        return read_token(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as stream:
            stream.write(secrets.token_hex(TOKEN_BYTES) + "\n")
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(temporary, path)
    except OSError as error:
        raise ControlTokenError(f"cannot write control token {path}: {error.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return read_token(path)


def cluster_token(directory: Path | str) -> str:
    """The cluster's token (created on first use)."""
    return ensure_token(cluster_token_file(directory))


def check_control(request: HttpRequest, token: str, *, where: str = "") -> HttpResponse | None:
    """None when ``request`` may proceed: a read-only method, or the right bearer token.

    ``where`` names the token file in the refusal, so that an operator knows what to send.
    """
    if request.method in READ_ONLY_METHODS:
        return None
    hint = f" (the token is in {where})" if where else ""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not header or scheme.lower() != "bearer" or not presented.strip():
        return HttpResponse(
            401,
            _error(f"{request.method} {request.path} needs Authorization: Bearer <token>{hint}"),
            "application/json",
            {"WWW-Authenticate": 'Bearer realm="stargate-control"'},
        )
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return HttpResponse(403, _error(f"wrong control token{hint}"), "application/json")
    return None


def _error(message: str) -> bytes:
    return HttpResponse.json({"error": message}).body

"""A process's tunables as the 2009 page shows them (`/h/gflags`), and its counters as
`name value` lines (`/h/vars`).

Each process (a stargate, a redirector) declares its `Flag`s: a name, what it means, how to
read the value in effect, and, only where a live change is safe and really takes effect, how
to parse and apply a new one. `POST /h/gflags?name=value&...` parses every value first and
applies none unless all are valid; a flag without ``apply`` is refused with the reason it is
fixed. Formats: HTML by default, JSON with ``?format=json`` or ``Accept: application/json``.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from control.http import HttpRequest, HttpResponse

FORMAT_PARAMETER = "format"
MAX_REGEX_LENGTH = 512


class FlagError(ValueError):
    """A flag that does not exist, cannot change live, or a value it does not take."""


@dataclass(frozen=True)
class Flag:
    name: str
    help: str
    read: Callable[[], object]
    parse: Callable[[str], Any] | None = None  # None: fixed while the process runs
    apply: Callable[[Any], None] | None = None
    fixed_because: str = "set at start"

    @property
    def settable(self) -> bool:
        return self.parse is not None and self.apply is not None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "value": _plain(self.read()),
            "help": self.help,
            "settable": self.settable,
        }
        if not self.settable:
            document["fixed_because"] = self.fixed_because
        return document


class FlagSet:
    def __init__(self, flags: Iterable[Flag]) -> None:
        self.flags = {flag.name: flag for flag in flags}

    def document(self) -> list[dict[str, Any]]:
        return [flag.to_json() for flag in self.flags.values()]

    def values(self) -> dict[str, object]:
        return {name: _plain(flag.read()) for name, flag in self.flags.items()}

    def set(self, updates: Mapping[str, str]) -> dict[str, object]:
        """Parse every update, then apply them all (none if one is bad); the new values."""
        parsed: list[tuple[Flag, Callable[[Any], None], Any]] = []
        for name, text in updates.items():
            flag = self.flags.get(name)
            if flag is None:
                raise FlagError(f"no flag {name!r} (flags: {', '.join(self.flags)})")
            if flag.parse is None or flag.apply is None:
                raise FlagError(f"flag {name} cannot change while running: {flag.fixed_because}")
            try:
                parsed.append((flag, flag.apply, flag.parse(text)))
            except ValueError as error:
                raise FlagError(f"flag {name}: {error}") from None
        for _, apply, value in parsed:
            apply(value)
        return {flag.name: _plain(flag.read()) for flag, _, _ in parsed}


# -- value parsers ---------------------------------------------------------------------------


def seconds_in(low: float, high: float, *, low_open: bool = True) -> Callable[[str], float]:
    """Seconds in (low, high] (or [low, high] when not ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"not a number of seconds: {text!r}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            bracket = "(" if low_open else "["
            raise ValueError(f"must be in {bracket}{low:g}, {high:g}], not {text!r}")
        return value

    return parse


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        stripped = text.strip()
        if not stripped.isascii() or not stripped.isdigit() or len(stripped) > 12:
            raise ValueError(f"not a whole number: {text!r}")
        value = int(stripped)
        if not low <= value <= high:
            raise ValueError(f"must be in {low}..{high}, not {value}")
        return value

    return parse


def _plain(value: object) -> object:
    """JSON-able: enums by value, tuples as lists."""
    enum_value = getattr(value, "value", None)
    if enum_value is not None and not isinstance(value, int | float | str):
        return enum_value
    if isinstance(value, tuple):
        return list(value)
    return value


# -- pages ---------------------------------------------------------------------------------


def wants_json(request: HttpRequest) -> bool:
    asked = request.query_value(FORMAT_PARAMETER)
    if asked is not None:
        return asked == "json"
    return "application/json" in request.headers.get("accept", "")


def bad_format(request: HttpRequest) -> HttpResponse | None:
    asked = request.query_value(FORMAT_PARAMETER)
    if asked is None or asked in ("json", "html", "text"):
        return None
    return HttpResponse.json({"error": f"format must be json, html or text, not {asked!r}"}, 400)


def gflags_page(flags: FlagSet, request: HttpRequest, title: str) -> HttpResponse:
    """GET: every flag; POST ?name=value...: set them (the page checked the token)."""
    refused = bad_format(request)
    if refused is not None:
        return refused
    updates = {
        name: values[-1] for name, values in request.query.items() if name != FORMAT_PARAMETER
    }
    if request.method == "GET" and updates:
        return HttpResponse.json(
            {"error": "a flag is set with POST /h/gflags?flag=value and the control token"}, 405
        )
    if request.method == "POST":
        if not updates:
            return HttpResponse.json({"error": "nothing to set: give ?flag=value"}, 400)
        try:
            return HttpResponse.json({"set": flags.set(updates)})
        except FlagError as error:
            return HttpResponse.json({"error": str(error)}, 400)
    if request.method != "GET":
        return HttpResponse.json({"error": f"method {request.method} not allowed"}, 405)
    if wants_json(request):
        return HttpResponse.json({"process": title, "flags": flags.document()})
    rows = "".join(
        f"<tr><td><code>{html.escape(flag['name'])}</code></td>"
        f"<td><code>{html.escape(str(flag['value']))}</code></td>"
        f"<td>{'live' if flag['settable'] else html.escape(flag['fixed_because'])}</td>"
        f"<td>{html.escape(flag['help'])}</td></tr>"
        for flag in flags.document()
    )
    body = "<tr><th>flag</th><th>value</th><th>settable</th><th>meaning</th></tr>" + rows
    return html_page(f"{title}: flags", f"<table>{body}</table>")


def vars_page(counters: Mapping[str, int | float], request: HttpRequest) -> HttpResponse:
    """``name value`` lines, sorted, those whose name matches ``?regex=`` (re.search)."""
    if request.method != "GET":
        return HttpResponse.json({"error": f"method {request.method} not allowed"}, 405)
    refused = bad_format(request)
    if refused is not None:
        return refused
    pattern = request.query_value("regex", "") or ""
    if len(pattern) > MAX_REGEX_LENGTH:
        return HttpResponse.json({"error": f"regex longer than {MAX_REGEX_LENGTH} characters"}, 400)
    try:
        regex = re.compile(pattern)
    except re.error as error:
        return HttpResponse.json({"error": f"bad regex {pattern!r}: {error}"}, 400)
    chosen = {name: counters[name] for name in sorted(counters) if regex.search(name)}
    if wants_json(request):
        return HttpResponse.json(chosen)
    return HttpResponse.text(
        "".join(f"{name} {_number(value)}\n" for name, value in chosen.items())
    )


def _number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def html_page(title: str, body: str) -> HttpResponse:
    escaped = html.escape(title)
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escaped}</title>"
        "<style>td,th{padding:0 .6em;text-align:left;font-family:monospace}</style>"
        f"</head><body><h1>{escaped}</h1>{body}</body></html>\n"
    )
    return HttpResponse.text(text, content_type="text/html; charset=utf-8")

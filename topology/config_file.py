"""Declarative configuration files (`stargate target --config`, `stargate cluster up
--config`): TOML read with Python's tomllib, every problem reported as one line naming the
file, the line and the key.

tomllib gives the line of a syntax error but not where a parsed value came from, so
`locate` finds a key's line by scanning the text: table headers (``[a]``, ``[[a]]``, the
k-th of them for the k-th entry of an array of tables) and ``key =`` lines within them.
`TableReader` reads one table with typed getters and refuses keys nobody asked for, so a
typo never passes silently.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
KeyPath = tuple[str | int, ...]  # ("vdisk", 1, "size"): the second [[vdisk]]'s size

_SYNTAX_POSITION = re.compile(r"\(at line (\d+), column \d+\)")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\")(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"))*)\s*="
)


class ConfigError(Exception):
    """A configuration file (or a flag given with it) that cannot be used: one line."""


def dotted(key: KeyPath) -> str:
    """("vdisk", 1, "size") -> "vdisk[1].size"."""
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True)
class ConfigDocument:
    """A parsed file: its tables and the text its error messages point into."""

    path: Path
    text: str
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> ConfigDocument:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read: {error}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            message = str(error)
            position = _SYNTAX_POSITION.search(message)
            where = f"{path}:{position.group(1)}" if position else str(path)
            reason = _SYNTAX_POSITION.sub("", message).strip()
            raise ConfigError(f"{where}: TOML syntax error: {reason}") from None
        return cls(path, text, data)

    @property
    def directory(self) -> Path:
        """Relative paths in the file are relative to the file's own directory."""
        return self.path.resolve().parent

    def error(self, key: KeyPath, message: str) -> ConfigError:
        line = locate(self.text, key)
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        return ConfigError(f"{where}: {dotted(key)}: {message}")

    def root(self) -> TableReader:
        return TableReader(self, (), self.data)


def locate(text: str, key: KeyPath) -> int | None:
    """The 1-based line where ``key`` is set; else the line of its nearest enclosing table
    or key that is in the file (an inline table, a missing key's table); else None."""
    best_line: int | None = None
    best_depth = 0
    table: KeyPath = ()
    counts: dict[KeyPath, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names = tuple(part.strip().strip('"') for part in header.group(2).split("."))
            path = _within_latest_entries(names, counts)
            if header.group(1) == "[[":
                index = counts.get(path, 0)
                counts[path] = index + 1
                table = (*path, index)
            else:
                table = path
            defined: KeyPath = table
        else:
            assignment = _KEY.match(line)
            if not assignment:
                continue
            names = tuple(part.strip().strip('"') for part in assignment.group(1).split("."))
            defined = (*table, *names)
        depth = _common_prefix(defined, key)
        if depth == len(defined) and depth > best_depth:
            best_line, best_depth = number, depth
            if depth == len(key):
                break
    return best_line


def _within_latest_entries(names: tuple[str, ...], counts: dict[KeyPath, int]) -> KeyPath:
    """A header's dotted names as a key path: a name that is an array of tables so far
    (``counts``) means its latest entry (``[[vdisk.lun]]`` after the 2nd ``[[vdisk]]``:
    vdisk, 1, lun)."""
    path: KeyPath = ()
    for name in names[:-1]:
        path = (*path, name)
        if path in counts:
            path = (*path, counts[path] - 1)
    return (*path, names[-1])


def _common_prefix(a: KeyPath, b: KeyPath) -> int:
    depth = 0
    for left, right in zip(a, b, strict=False):
        if left != right:
            break
        depth += 1
    return depth


@dataclass
class TableReader:
    """Typed getters over one table; `finish` refuses the keys no getter asked for."""

    document: ConfigDocument
    key: KeyPath
    table: dict[str, Any]
    _read: set[str] = field(default_factory=set)

    def error(self, name: str | int, message: str) -> ConfigError:
        return self.document.error((*self.key, name), message)

    def typed(self, name: str, kinds: tuple[type, ...], what: str) -> Any:
        self._read.add(name)
        if name not in self.table:
            return None
        value = self.table[name]
        # bool is an int to Python, not to TOML: `depth = true` is a mistake.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise self.error(name, f"must be {what}, not {value!r}")
        return value

    def string(self, name: str) -> str | None:
        value: str | None = self.typed(name, (str,), "a string")
        return value

    def integer(self, name: str) -> int | None:
        value: int | None = self.typed(name, (int,), "an integer")
        return value

    def number(self, name: str) -> float | None:
        value = self.typed(name, (int, float), "a number")
        return None if value is None else float(value)

    def boolean(self, name: str) -> bool | None:
        value: bool | None = self.typed(name, (bool,), "true or false")
        return value

    def strings(self, name: str) -> list[str] | None:
        value: list[Any] | None = self.typed(name, (list,), "a list of strings")
        if value is not None and not all(isinstance(item, str) for item in value):
            raise self.error(name, f"must be a list of strings, not {value!r}")
        return value

    def subtable(self, name: str) -> TableReader | None:
        value = self.typed(name, (dict,), "a table")
        return None if value is None else TableReader(self.document, (*self.key, name), value)

    def subtables(self, name: str) -> list[TableReader]:
        """An array of tables (``[[name]]``); none when absent."""
        value: list[Any] | None = self.typed(name, (list,), "an array of tables ([[...]])")
        readers = []
        for index, item in enumerate(value or []):
            if not isinstance(item, dict):
                raise self.error(name, f"must be an array of tables ([[{name}]]), not {item!r}")
            readers.append(TableReader(self.document, (*self.key, name, index), item))
        return readers

    def required(self, name: str, getter: Callable[[str], T | None]) -> T:
        value = getter(name)
        if value is None:
            raise self.error(name, "is required")
        return value

    def convert(self, name: str, value: Any, converter: Callable[[Any], T]) -> T:
        """``converter(value)``, its ValueError reported at ``name``'s line."""
        try:
            return converter(value)
        except ValueError as error:
            raise self.error(name, str(error)) from None

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self._read)
        if unknown:
            raise self.error(
                unknown[0], f"unknown key (known here: {', '.join(sorted(self._read))})"
            )


# How a table of scalar keys is declared (stargate.config, cluster.config): the reader
# method for the key's TOML type, and the converter that checks and maps its value.
ScalarGetter = Callable[[TableReader, str], Any]
ScalarSpec = tuple[ScalarGetter, Callable[[Any], Any]]

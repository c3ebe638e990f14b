"""Slowing down failed logins: CHAP guessing costs time, per initiator name and per address.

Every failed CHAP exchange (a wrong secret or a bad challenge: login status 0x0201; not a
policy refusal, nor an injected login fault) of an initiator name and of a source address
pushes that key's "not before" time out by a delay that doubles with each recent failure,
up to a cap; the failures decay (halve every `HALF_LIFE` seconds of quiet). Any login
response to a key that is being held waits until then, in that login's own task: other
connections and sessions never wait. Concurrent guesses queue behind each other, so
parallel connections do not multiply the rate. A successful login clears its initiator
name (a mistyped secret costs its owner nothing afterwards), not its address.

An initiator name is not a secret: someone flooding wrong secrets under another initiator's
name must not lock it out. So a name's hold never reaches more than `MAX_NAME_HOLD` ahead,
within the login timeout: the real initiator, from its own address, still logs in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

FIRST_DELAY = 0.1  # seconds before answering the first failure
MAX_DELAY = 2.0  # the most one failure adds
HALF_LIFE = 30.0  # seconds of quiet after which a key's failures count half
MAX_KEYS = 16384  # bound on the memory an attacker with many names can make us use
MAX_NAME_HOLD = 10.0  # seconds; below the default login timeout (15 s)
# A connection dropped for a protocol error (garbage bytes, a fatal framing error, a
# non-login PDU during login) counts as a failure of its source address, on its own scale:
# the next login from that address is answered from a few ms later, doubling, capped, and
# never more than `MAX_PROTOCOL_HOLD` ahead (a reconnect storm costs the target a few
# logins a second, an honest initiator from the same address at most that).
PROTOCOL_FIRST_DELAY = 0.005
PROTOCOL_MAX_DELAY = 0.5
MAX_PROTOCOL_HOLD = 2.0


@dataclass(slots=True)
class _Record:
    failures: float = 0.0
    last_failure: float = 0.0
    not_before: float = 0.0


@dataclass
class LoginThrottle:
    first_delay: float = FIRST_DELAY
    max_delay: float = MAX_DELAY
    half_life: float = HALF_LIFE
    max_name_hold: float = MAX_NAME_HOLD
    protocol_first_delay: float = PROTOCOL_FIRST_DELAY
    protocol_max_delay: float = PROTOCOL_MAX_DELAY
    max_protocol_hold: float = MAX_PROTOCOL_HOLD
    clock: Callable[[], float] = time.monotonic
    _records: dict[str, _Record] = field(default_factory=dict)

    @staticmethod
    def keys(initiator_name: str, peer: str) -> list[str]:
        keys = [f"address:{peer}"] if peer else []
        return keys + ([f"name:{initiator_name}"] if initiator_name else [])

    def _decayed(self, record: _Record, now: float) -> float:
        quiet = max(0.0, now - record.last_failure)
        return record.failures * 0.5 ** (quiet / self.half_life)

    def failed(self, initiator_name: str, peer: str) -> float:
        """Count a failure; returns the time before which its answer must not go."""
        now = self.clock()
        keys = self.keys(initiator_name, peer)
        self._prune(now, room=len(keys))
        release = now
        for key in keys:
            record = self._count_failure(key, now)
            delay = min(self.max_delay, self.first_delay * 2 ** (record.failures - 1.0))
            record.not_before = max(now, record.not_before) + delay
            if key.startswith("name:"):
                record.not_before = min(record.not_before, now + self.max_name_hold)
            release = max(release, record.not_before)
        return release

    def protocol_error(self, peer: str) -> float:
        """Count a connection from ``peer`` dropped for a protocol error; returns the time
        before which the next login answer to that address must not go."""
        if not peer:
            return 0.0
        now = self.clock()
        self._prune(now, room=1)
        record = self._count_failure(f"address:{peer}", now)
        delay = min(
            self.protocol_max_delay, self.protocol_first_delay * 2 ** (record.failures - 1.0)
        )
        ahead = min(max(now, record.not_before) + delay, now + self.max_protocol_hold)
        record.not_before = max(record.not_before, ahead)
        return record.not_before

    def _count_failure(self, key: str, now: float) -> _Record:
        """One more (decayed) failure for ``key``; its record is re-inserted, so the dict
        stays ordered by last failure, oldest first."""
        record = self._records.pop(key, None) or _Record()
        self._records[key] = record
        record.failures = self._decayed(record, now) + 1.0
        record.last_failure = now
        return record

    def held_until(self, initiator_name: str, peer: str) -> float:
        """When answers to this initiator name / address may go (now or earlier: at once)."""
        records = (self._records.get(key) for key in self.keys(initiator_name, peer))
        return max((record.not_before for record in records if record), default=0.0)

    def succeeded(self, initiator_name: str) -> None:
        self._records.pop(f"name:{initiator_name}", None)

    def _prune(self, now: float, room: int) -> None:
        """Keep at most MAX_KEYS records once ``room`` more are added."""
        if len(self._records) + room <= MAX_KEYS:
            return
        for key, record in list(self._records.items()):
            if record.not_before <= now and self._decayed(record, now) < 0.5:
                del self._records[key]
        while self._records and len(self._records) + room > MAX_KEYS:
            del self._records[next(iter(self._records))]  # still full: forget the oldest

    async def hold(self, failed: bool, initiator_name: str, peer: str) -> None:
        """Wait, if need be, before a login response goes to this initiator and address;
        ``failed``: the response refuses the initiator's credentials."""
        if failed:
            release = self.failed(initiator_name, peer)
        else:
            release = self.held_until(initiator_name, peer)
        wait = release - self.clock()
        if wait > 0:
            await trio.sleep(wait)


@dataclass
class LogLimiter:
    """Per-key rate limit for log lines of an event a peer can repeat at will (a dropped
    garbage connection): the first `per_second` of each second are logged, the rest
    counted; the next line logged for that key says how many were left out."""

    per_second: int = 5
    clock: Callable[[], float] = time.monotonic
    max_keys: int = 4096
    _windows: dict[str, list[float]] = field(default_factory=dict)  # [start, logged, left out]

    def allow(self, key: str) -> tuple[bool, int]:
        """(log this one?, how many were left out since the last logged one)."""
        now = self.clock()
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_keys:
                del self._windows[next(iter(self._windows))]
            window = self._windows[key] = [now, 0.0, 0.0]
        elif now - window[0] >= 1.0:
            window[0], window[1] = now, 0.0
        if window[1] >= self.per_second:
            window[2] += 1
            return False, 0
        window[1] += 1
        left_out, window[2] = int(window[2]), 0.0
        return True, left_out

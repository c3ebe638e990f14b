"""What a fault is: its kind, where it applies (scope and match), when it fires (trigger)
and its parameters. Plain dataclasses that round-trip through JSON/TOML dictionaries, so the
Python API, the HTTP control page, the CLI and scenario files all speak the same shape:

    {"kind": "check_condition", "vdisk": "vd1", "opcodes": [0x28], "lba": [100, 199],
     "sense_key": 3, "asc": 0x11, "ascq": 0, "count": 5, "probability": 0.5}
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from iscsicore.portal import Portal, PortalError


class FaultKind(Enum):
    # SCSI: decided per command
    CHECK_CONDITION = "check_condition"
    BUSY = "busy"
    TASK_SET_FULL = "task_set_full"
    RESERVATION_CONFLICT = "reservation_conflict"
    SHORT_TRANSFER = "short_transfer"  # a read returns fewer bytes: underflow residual
    DELAY = "delay"  # the response waits (trio.sleep, only this command)
    HANG = "hang"  # the command never completes (task management can still abort it)
    # Fails with `scsi_status` (and sense) only while a logout request (AsyncEvent 1) is
    # pending on the command's connection, as EqualLogic firmware 7 did (libiscsi #140).
    LOGOUT_PENDING_FAIL = "logout_pending_fail"
    # iSCSI PDUs and the connection: decided per PDU received
    DROP_CONNECTION = "drop_connection"  # mode: reset | close | blackhole
    DROP_MID_DATA_IN = "drop_mid_data_in"  # half a read's Data-In, then the connection closes
    CORRUPT_HEADER_DIGEST = "corrupt_header_digest"
    CORRUPT_DATA_DIGEST = "corrupt_data_digest"
    STAT_SN_JUMP = "stat_sn_jump"  # amount: +N skips, -1 repeats
    FREEZE_WINDOW = "freeze_window"  # MaxCmdSN stops advancing for `duration` seconds
    DELAY_R2T = "delay_r2t"
    WITHHOLD_R2T = "withhold_r2t"
    SWALLOW_NOP_OUT = "swallow_nop_out"
    SWALLOW_TMF = "swallow_tmf"
    REJECT = "reject"  # reason: RFC 7143 reject reason code
    ABORT_TASK_UNSUPPORTED = "abort_task_unsupported"  # TMF response 5, nothing aborted
    # Login (at this stargate)
    LOGIN_FAIL = "login_fail"  # status: 0x0201, 0x0203, 0x0301, 0x0302...
    LOGIN_REDIRECT = "login_redirect"  # status 0x0101/0x0102 to `portal`
    LOGIN_DELAY = "login_delay"
    # The portal listens but the target is not configured yet (just restarted, spdk #1676):
    # every login of its scope, discovery too, refused with `status` (0x0301).
    LOGIN_NOT_READY = "login_not_ready"
    REQUIRE_CHAP = "require_chap"  # Normal logins must authenticate as chap_user/chap_secret
    # Immediate actions: fire once when armed (now, or at `at`/`after`)
    UNIT_ATTENTION = "unit_attention"  # asc/ascq queued for every nexus of the vDisk
    ASYNC_LOGOUT = "async_logout"  # AsyncEvent 1 with time2wait = Parameter3
    ASYNC_DROP_CONNECTION = "async_drop_connection"  # AsyncEvent 2
    ASYNC_DROP_SESSION = "async_drop_session"  # AsyncEvent 3
    NETWORK_PAUSE = "network_pause"  # blackhole every connection of this stargate


SCSI_KINDS = frozenset(
    {
        FaultKind.CHECK_CONDITION,
        FaultKind.BUSY,
        FaultKind.TASK_SET_FULL,
        FaultKind.RESERVATION_CONFLICT,
        FaultKind.SHORT_TRANSFER,
        FaultKind.DELAY,
        FaultKind.HANG,
        FaultKind.DROP_MID_DATA_IN,
        FaultKind.LOGOUT_PENDING_FAIL,
    }
)
LOGIN_KINDS = frozenset(
    {
        FaultKind.LOGIN_FAIL,
        FaultKind.LOGIN_REDIRECT,
        FaultKind.LOGIN_DELAY,
        FaultKind.LOGIN_NOT_READY,
        FaultKind.REQUIRE_CHAP,
    }
)
ACTION_KINDS = frozenset(
    {
        FaultKind.UNIT_ATTENTION,
        FaultKind.ASYNC_LOGOUT,
        FaultKind.ASYNC_DROP_CONNECTION,
        FaultKind.ASYNC_DROP_SESSION,
        FaultKind.NETWORK_PAUSE,
    }
)
PDU_KINDS = frozenset(FaultKind) - SCSI_KINDS - LOGIN_KINDS - ACTION_KINDS


# Unit attentions by name (the `asc` of a unit_attention fault may be one of these).
UNIT_ATTENTION_NAMES: dict[str, tuple[int, int]] = {
    "power_on": (0x29, 0x01),
    "reset": (0x29, 0x00),
    "capacity_changed": (0x2A, 0x09),
    "luns_changed": (0x3F, 0x0E),
}


class DropMode(Enum):
    RESET = "reset"  # SO_LINGER 0: the initiator sees ECONNRESET at once
    CLOSE = "close"  # an orderly FIN
    BLACKHOLE = "blackhole"  # socket kept open, nothing answered: only NOP timeouts find it


class IoClass(Enum):
    READ = "read"
    WRITE = "write"
    FLUSH = "flush"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Delay:
    """A fixed delay, or one drawn per command: uniform [low, high] or exponential (mean)."""

    seconds: float = 0.0
    distribution: str = "fixed"  # fixed | uniform | exponential
    high: float = 0.0

    def draw(self, rng: random.Random) -> float:
        if self.distribution == "uniform":
            return rng.uniform(self.seconds, max(self.seconds, self.high))
        if self.distribution == "exponential":
            return rng.expovariate(1.0 / self.seconds) if self.seconds > 0 else 0.0
        return self.seconds


DELAY_DISTRIBUTIONS = ("fixed", "uniform", "exponential")
# Range limits: what the wire fields hold, and times a lab run can wait for.
MAX_SECONDS = 1_000_000.0  # delays, durations, after_seconds: under twelve days
MAX_WALL_CLOCK = 1e11  # `at` is time.time(): a finite date, not "never"
MAX_COUNT = 1 << 32  # skip, count
MAX_LBA = (1 << 64) - 1
MAX_TIME2 = 0xFFFF  # Time2Wait/Time2Retain and AsyncEvent parameters are 16 bits
MAX_STAT_SN_JUMP = (1 << 31) - 1  # serial number arithmetic: at most half the space
MAX_VDISK_LENGTH = 256
MAX_CHAP_LENGTH = 255
REDIRECT_STATUSES = (0x0101, 0x0102)
# The statuses a SCSI fault may answer with (logout_pending_fail's `scsi_status`).
FAULT_SCSI_STATUSES = {
    "check_condition": 0x02,
    "busy": 0x08,
    "reservation_conflict": 0x18,
    "task_set_full": 0x28,
}
# Defaults that differ by kind, applied by `Fault.from_dict` (the CLI, /faults, scenarios).
KIND_DEFAULTS: dict[FaultKind, dict[str, int]] = {
    FaultKind.LOGIN_REDIRECT: {"status": 0x0101},
    # RFC 7143 11.13.5: 0x0301 "service unavailable", a target error the initiator may
    # retry later; 0x0203 "not found" would tell it the target is gone for good.
    FaultKind.LOGIN_NOT_READY: {"status": 0x0301},
    # ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED: a volume being moved off this member.
    FaultKind.LOGOUT_PENDING_FAIL: {"sense_key": 0x05, "asc": 0x25, "ascq": 0x00},
}

_ids = itertools.count(1)


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    # Scope: None matches every vDisk (or every connection) of the stargate.
    vdisk: str | None = None
    # Match (SCSI and PDU faults): CDB opcodes, an inclusive LBA range, an I/O class, and
    # for PDU faults the iSCSI opcodes of the PDUs received that count.
    opcodes: tuple[int, ...] = ()
    lba: tuple[int, int] | None = None
    io: IoClass | None = None
    pdu_opcodes: tuple[int, ...] = ()
    # Trigger
    at: float | None = None  # wall-clock time (time.time()) before which it does not fire
    after_seconds: float | None = None  # ... or this long after it was added
    skip: int = 0  # let the first N matches through ("after N commands or PDUs")
    count: int | None = None  # fire at most this many times (None: until cleared)
    probability: float = 1.0
    duration: float | None = None  # disarmed this long after it first could fire
    only_failed_over: bool = False  # only while the vDisk is served away from its home
    # Parameters
    sense_key: int = 0x03  # MEDIUM ERROR
    asc: int = 0x11  # UNRECOVERED READ ERROR
    ascq: int = 0x00
    delay: Delay = field(default_factory=Delay)
    fraction: float = 0.5  # SHORT_TRANSFER: share of the data returned
    mode: DropMode = DropMode.RESET
    amount: int = 1  # STAT_SN_JUMP
    reason: int = 0x09  # REJECT: invalid PDU field
    status: int = 0x0201  # LOGIN_FAIL / LOGIN_REDIRECT: status class << 8 | detail
    scsi_status: int = 0x02  # LOGOUT_PENDING_FAIL: CHECK CONDITION (sense: sense_key...)
    chap_user: str = ""  # REQUIRE_CHAP
    chap_secret: str = ""
    portal: str = ""  # LOGIN_REDIRECT: host:port
    time2wait: int = 2
    time2retain: int = 0
    seed: int | None = None
    # Bookkeeping
    fault_id: int = field(default_factory=lambda: next(_ids))
    fired: int = 0
    seen: int = 0
    added_at: float = 0.0

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Fault:
        """Build from the JSON/TOML shape; raises ValueError naming a bad key."""
        bookkeeping = {"fired", "seen", "added_at"}  # reported by to_dict, never set
        known = {f.name for f in dataclasses.fields(cls)} - bookkeeping
        values: dict[str, Any] = {}
        for key, value in document.items():
            name = key.replace("-", "_")
            if name in bookkeeping:
                continue
            if name == "id":
                name = "fault_id"
            if name not in known:
                raise ValueError(f"unknown fault field {key!r}")
            values[name] = value
        if "kind" not in values:
            raise ValueError("a fault needs a kind")
        try:
            values["kind"] = FaultKind(values["kind"])
            if "mode" in values:
                values["mode"] = DropMode(values["mode"])
            if values.get("io") is not None:
                values["io"] = IoClass(values["io"])
        except ValueError as error:
            raise ValueError(str(error)) from None
        for name in ("opcodes", "pdu_opcodes"):
            if name in values:
                values[name] = tuple(_int(v) for v in values[name])
        if values.get("lba") is not None:
            first, last = values["lba"]
            values["lba"] = (int(first), int(last))
        if "delay" in values:
            values["delay"] = _delay(values["delay"])
        named = UNIT_ATTENTION_NAMES.get(str(values.get("asc", "")))
        if named is not None:
            values["asc"], values["ascq"] = named
        status_name = FAULT_SCSI_STATUSES.get(str(values.get("scsi_status", "")))
        if status_name is not None:
            values["scsi_status"] = status_name
        for name in ("status", "sense_key", "asc", "ascq", "reason", "scsi_status"):
            if name in values:
                try:
                    values[name] = _int(values[name])
                except (ValueError, TypeError):
                    raise ValueError(f"{name} must be an integer, got {values[name]!r}") from None
        for name, default in KIND_DEFAULTS.get(values["kind"], {}).items():
            values.setdefault(name, default)
        fault = cls(**values)
        fault.validate()
        return fault

    def validate(self) -> None:
        """Raise ValueError, saying what is wrong, for parameters that cannot work."""
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must lie in [0, 1]")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1")
        if self.kind is FaultKind.LOGIN_REDIRECT:
            if not self.portal:
                raise ValueError("login_redirect needs a portal (host:port, or self)")
            if self.status not in REDIRECT_STATUSES:
                raise ValueError("login_redirect status: 0x0101 (temporary) or 0x0102 (for good)")
        refusing = (FaultKind.LOGIN_FAIL, FaultKind.LOGIN_NOT_READY)
        if self.kind in refusing and self.status >> 8 not in (0x02, 0x03):
            raise ValueError(
                f"{self.kind.value} status {self.status:#06x}: want an initiator error 0x02xx "
                "(0x0201 authentication, 0x0203 not found...) or a target error 0x03xx "
                "(0x0301 service unavailable, 0x0302 out of resources)"
            )
        if self.kind is FaultKind.LOGOUT_PENDING_FAIL and (
            self.scsi_status not in FAULT_SCSI_STATUSES.values()
        ):
            names = ", ".join(f"{name} ({code:#04x})" for name, code in FAULT_SCSI_STATUSES.items())
            raise ValueError(f"scsi_status {self.scsi_status!r}: one of {names}")
        if self.kind is FaultKind.REQUIRE_CHAP:
            for name in ("chap_user", "chap_secret"):
                value = getattr(self, name)
                if not isinstance(value, str) or not 0 < len(value) <= MAX_CHAP_LENGTH:
                    raise ValueError(
                        f"require_chap needs {name} (1..{MAX_CHAP_LENGTH} characters; "
                        "the CLI: --chap USER:SECRET)"
                    )
        delay = self.delay
        if delay.distribution not in DELAY_DISTRIBUTIONS:
            raise ValueError(f"delay distribution is one of {', '.join(DELAY_DISTRIBUTIONS)}")
        if delay.seconds < 0 or delay.high < 0:
            raise ValueError("a delay is not negative")
        self._validate_ranges()

    def _validate_ranges(self) -> None:
        """Every number within what its wire field or a lab run can hold (finite, no NaN)."""
        if self.vdisk is not None and (
            not isinstance(self.vdisk, str) or not 0 < len(self.vdisk) <= MAX_VDISK_LENGTH
        ):
            raise ValueError(f"vdisk must be a vDisk id of 1..{MAX_VDISK_LENGTH} characters")
        _check_ints("opcodes", self.opcodes, 0, 0xFF)
        _check_ints("pdu_opcodes", self.pdu_opcodes, 0, 0x3F)
        if self.lba is not None:
            first, last = self.lba
            if not 0 <= first <= last <= MAX_LBA:
                raise ValueError(f"lba must be FIRST-LAST with 0 <= FIRST <= LAST <= {MAX_LBA}")
        _check_number("at", self.at, 0.0, MAX_WALL_CLOCK)
        _check_number("after_seconds", self.after_seconds, 0.0, MAX_SECONDS)
        _check_number("duration", self.duration, 0.0, MAX_SECONDS)
        _check_number("delay seconds", self.delay.seconds, 0.0, MAX_SECONDS)
        _check_number("delay high", self.delay.high, 0.0, MAX_SECONDS)
        _check_number("fraction", self.fraction, 0.0, 1.0)
        _check_ints("skip", (self.skip,), 0, MAX_COUNT)
        _check_ints("count", () if self.count is None else (self.count,), 1, MAX_COUNT)
        _check_ints("sense_key", (self.sense_key,), 0, 0x0F)
        _check_ints("asc", (self.asc,), 0, 0xFF)
        _check_ints("ascq", (self.ascq,), 0, 0xFF)
        _check_ints("reason", (self.reason,), 0, 0xFF)
        _check_ints("status", (self.status,), 0, 0xFFFF)
        _check_ints("scsi_status", (self.scsi_status,), 0, 0xFF)
        _check_ints("amount", (self.amount,), -1, MAX_STAT_SN_JUMP)
        _check_ints("time2wait", (self.time2wait,), 0, MAX_TIME2)
        _check_ints("time2retain", (self.time2retain,), 0, MAX_TIME2)
        _check_ints("seed", () if self.seed is None else (self.seed,), 0, (1 << 64) - 1)
        if self.kind is FaultKind.LOGIN_REDIRECT and self.portal != "self":
            try:
                bad = Portal.parse(str(self.portal), default_port=None).tpgt is not None
            except PortalError:
                bad = True
            if bad:  # no tag: the redirect adds the portal group tag itself
                raise ValueError(f"portal {self.portal!r}: HOST:PORT with a port 1..65535")

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, Delay):
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            document["id" if item.name == "fault_id" else item.name] = value
        return document

    def redacted(self) -> dict[str, Any]:
        """`to_dict` for pages anyone may read: a CHAP secret shown as stars."""
        document = self.to_dict()
        if document["chap_secret"]:
            document["chap_secret"] = "***"
        return document

    def describe(self) -> str:
        where = f"vDisk {self.vdisk}" if self.vdisk else "every vDisk"
        return f"#{self.fault_id} {self.kind.value} on {where}"


def login_not_ready_fault(seconds: float, status: int | str = 0x0301) -> Fault:
    """The window after a restart in which the portal listens but the target is not
    configured yet: every login refused with ``status`` for ``seconds``, then normal."""
    return Fault.from_dict({"kind": "login_not_ready", "duration": seconds, "status": status})


def _check_ints(name: str, values: tuple[int, ...], low: int, high: int) -> None:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer {low}..{high}, got {value!r}")


def _check_number(name: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number {low:g}..{high:g}, got {value!r}")


def _int(value: Any) -> int:
    """Integers may come as 17, "17" or "0x11" (sense codes read better in hex)."""
    return int(value, 0) if isinstance(value, str) else int(value)


def _delay(value: Any) -> Delay:
    if isinstance(value, Delay):
        return value
    if isinstance(value, int | float):
        return Delay(float(value))
    if isinstance(value, dict):
        return Delay(
            float(value.get("seconds", 0.0)),
            str(value.get("distribution", "fixed")),
            float(value.get("high", 0.0)),
        )
    raise ValueError(f"delay must be seconds or a table, not {value!r}")

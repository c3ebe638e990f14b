"""BlockDevice: one LUN of one target (one vDisk), the API the cluster tools use.

    async with BlockDevice.open("iscsi://127.0.0.1:3261/iqn...:vmdisk-1/0") as disk:
        data = await disk.read(0, 8)
        await disk.write(8, data, fua=True)

Every call survives target failover transparently (see ``initiator.session``); only a
target gone for longer than the replacement timeout raises ``TargetUnreachable``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from time import monotonic

from iscsicore.pdu import TmfResponse

from . import cdb
from .cdb import Capacity, Inquiry
from .errors import CheckCondition, InitiatorError
from .session import CommandResult, Session, SessionConfig
from .stats import IoStats
from .url import IscsiUrl, parse_url


class BlockDevice:
    def __init__(self, session: Session, url: IscsiUrl, capacity: Capacity) -> None:
        self.session = session
        self.url = url
        self.lun = url.lun
        self.capacity = capacity

    @classmethod
    @asynccontextmanager
    async def open(
        cls, url: str | IscsiUrl, config: SessionConfig | None = None
    ) -> AsyncIterator[BlockDevice]:
        """Log in to the URL's target (following redirects) and read the LUN's capacity.

        CHAP credentials in the URL override those in ``config``.
        """
        parsed = parse_url(url) if isinstance(url, str) else url
        config = config or SessionConfig()
        if parsed.chap is not None:
            config = replace(config, login=replace(config.login, chap=parsed.chap))
        async with Session.connect(parsed.portal, parsed.target, config) as session:
            capacity = await _read_capacity(session, parsed.lun)
            yield cls(session, parsed, capacity)

    @property
    def block_size(self) -> int:
        return self.capacity.block_size

    @property
    def blocks(self) -> int:
        return self.capacity.blocks

    @property
    def stats(self) -> IoStats:
        return self.session.stats

    # ------------------------------------------------------------------ I/O

    async def read(self, lba: int, blocks: int) -> bytes | bytearray:
        length = blocks * self.block_size
        result = await self._io(cdb.read16(lba, blocks), read_length=length, kind="read")
        return result.data

    async def write(
        self, lba: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        blocks = self._blocks_of(data)
        await self._io(cdb.write16(lba, blocks, fua=fua), write_data=data, kind="write")

    def submit_read(
        self, lba: int, blocks: int, on_done: Callable[[bytes | bytearray | InitiatorError], None]
    ) -> None:
        """Start a read without waiting: ``on_done`` gets the data or the error `read`
        would raise. Counted in `stats` as `read` counts (see `Session.submit`)."""
        length = blocks * self.block_size
        started = self._started()

        def finished(outcome: CommandResult | InitiatorError) -> None:
            if isinstance(outcome, InitiatorError):
                self._failed()
                on_done(outcome)
                return
            stats = self._finished(started)
            stats.reads += 1
            stats.bytes_read += len(outcome.data)
            on_done(outcome.data)

        self.session.submit(cdb.read16(lba, blocks), finished, lun=self.lun, read_length=length)

    def submit_write(
        self,
        lba: int,
        data: bytes | bytearray | memoryview,
        on_done: Callable[[InitiatorError | None], None],
    ) -> None:
        """Start a write without waiting: ``on_done`` gets None or the error `write`
        would raise."""
        blocks = self._blocks_of(data)
        size = memoryview(data).nbytes
        started = self._started()

        def finished(outcome: CommandResult | InitiatorError) -> None:
            if isinstance(outcome, InitiatorError):
                self._failed()
                on_done(outcome)
                return
            stats = self._finished(started)
            stats.writes += 1
            stats.bytes_written += size
            on_done(None)

        self.session.submit(cdb.write16(lba, blocks), finished, lun=self.lun, write_data=data)

    async def flush(self) -> None:
        await self._io(cdb.synchronize_cache16())

    async def unmap(self, extents: Sequence[tuple[int, int]]) -> None:
        """Deallocate ``(lba, blocks)`` extents."""
        parameters = cdb.unmap_parameters(list(extents))
        await self._io(cdb.unmap(len(parameters)), write_data=parameters)

    async def write_same(
        self, lba: int, blocks: int, block: bytes | None = None, *, unmap: bool = False
    ) -> None:
        pattern = block if block is not None else bytes(self.block_size)
        if len(pattern) != self.block_size:
            raise ValueError(f"WRITE SAME takes one {self.block_size}-byte block")
        await self._io(cdb.write_same16(lba, blocks, unmap=unmap), write_data=pattern)

    async def compare_and_write(self, lba: int, expected: bytes, new: bytes) -> None:
        """Atomically write ``new`` if the blocks hold ``expected``; a mismatch raises
        ``CheckCondition`` with sense key MISCOMPARE."""
        if len(expected) != len(new):
            raise ValueError("compare and write needs equal-length buffers")
        blocks = self._blocks_of(expected)
        await self._io(cdb.compare_and_write(lba, blocks), write_data=bytes(expected) + bytes(new))

    async def test_unit_ready(self) -> None:
        await self._io(cdb.test_unit_ready())

    async def inquiry(self) -> Inquiry:
        result = await self._io(cdb.inquiry(255), read_length=255)
        return cdb.parse_inquiry(bytes(result.data))

    async def read_capacity(self) -> Capacity:
        self.capacity = await _read_capacity(self.session, self.lun)
        return self.capacity

    async def abort_task(self, itt: int) -> TmfResponse | int:
        return await self.session.abort_task(itt, lun=self.lun)

    async def lun_reset(self) -> None:
        await self.session.lun_reset(lun=self.lun)

    async def execute(
        self,
        cdb_bytes: bytes,
        *,
        read_length: int = 0,
        write_data: bytes | bytearray | memoryview | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Any SCSI command, for what the helpers above do not cover."""
        return await self._io(
            cdb_bytes, read_length=read_length, write_data=write_data, check=check
        )

    # ------------------------------------------------------------------ internals

    def _blocks_of(self, data: bytes | bytearray | memoryview) -> int:
        length = memoryview(data).nbytes
        if length % self.block_size:
            raise ValueError(
                f"{length} bytes is not a whole number of {self.block_size}-byte blocks"
            )
        return length // self.block_size

    def _started(self) -> float:
        started = monotonic()  # the stats clock (not trio's, which has a random offset)
        self.session.stats.pauses.started(started)
        return started

    def _finished(self, started: float) -> IoStats:
        stats = self.session.stats
        finished = monotonic()
        stats.pauses.finished(finished)
        stats.latency.add(finished - started)
        return stats

    def _failed(self) -> None:
        stats = self.session.stats
        stats.errors += 1
        stats.pauses.finished(monotonic())

    async def _io(
        self,
        cdb_bytes: bytes,
        *,
        read_length: int = 0,
        write_data: bytes | bytearray | memoryview | None = None,
        kind: str = "other",
        check: bool = True,
    ) -> CommandResult:
        started = self._started()
        try:
            result = await self.session.execute(
                cdb_bytes,
                lun=self.lun,
                read_length=read_length,
                write_data=write_data,
                check=check,
            )
        except InitiatorError:
            self._failed()
            raise
        except BaseException:  # cancelled: no error, but no longer outstanding
            self.session.stats.pauses.finished(monotonic())
            raise
        stats = self._finished(started)
        if kind == "read":
            stats.reads += 1
            stats.bytes_read += len(result.data)
        elif kind == "write":
            stats.writes += 1
            stats.bytes_written += memoryview(write_data).nbytes if write_data is not None else 0
        else:
            stats.other += 1
        return result


async def _read_capacity(session: Session, lun: int) -> Capacity:
    try:
        result = await session.execute(cdb.read_capacity16(), lun=lun, read_length=32)
        return cdb.parse_read_capacity16(bytes(result.data))
    except CheckCondition:
        # Old targets without READ CAPACITY(16): fall back to the 10-byte form.
        result = await session.execute(cdb.read_capacity10(), lun=lun, read_length=8)
        return cdb.parse_read_capacity10(bytes(result.data))

"""In-process cost of stargate's full-feature path per SCSI command: no sockets, no client.

One `FullFeatureConnection` serves a scripted initiator: batches of ``--qd`` encoded 4 KiB
READ(10)/WRITE(10) commands (writes carry their data as immediate data), one batch per
receive, as a QD-N initiator's commands arrive over loopback; the responses are discarded.
The figure is the process CPU time per command (best of ``--repeat``), which the machine's
other load disturbs far less than a loopback benchmark: use it to A/B a change to the hot
path (framer, connection, queue, logical unit, store) before `python -m benchmarks`.

    python -m benchmarks.hotpath_bench [--kind read|write|mix] [--qd 32] [--batches 400]
                                       [--repeat 5] [--dir /dev/shm] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import trio

from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import SessionParams, SessionType
from iscsicore.pdu import ScsiCommand, lun_from_number
from stargate.queue import CommandQueue
from stargate.scsi.command import Nexus
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.reserve import vdisk_reservations
from stargate.session import Session
from stargate.stores.file import FileStore
from stargate.target import VDiskTarget
from stargate.transport.runner import FullFeatureConnection
from topology.vdisk import VDiskMeta

BLOCK = 512
IO_BYTES = 4096
DISK_BYTES = 64 << 20
SEGMENT = 262144
NEXUS = Nexus("iqn.2026-11.bench:initiator,i,0x000000000001", "iqn.bench:target,t,0x0001")


class Kind(StrEnum):
    READ = "read"
    WRITE = "write"
    MIX = "mix"  # two reads, then a write


@dataclass(frozen=True)
class HotPathResult:
    kind: str
    queue_depth: int
    commands: int
    cpu_us_per_command: float  # best of the repeats
    all_repeats_us: list[float]


def _cdb(opcode: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", opcode, 0, lba, 0, blocks, 0) + bytes(6)


def _command(is_write: bool, itt: int, cmd_sn: int, lba: int, payload: bytes) -> bytes:
    return encode_pdu(
        ScsiCommand(
            final=True,
            read=not is_write,
            write=is_write,
            attr=1,
            lun=lun_from_number(0),
            itt=itt,
            expected_data_transfer_length=IO_BYTES,
            cmd_sn=cmd_sn,
            exp_stat_sn=0,
            cdb=_cdb(0x2A if is_write else 0x28, lba, IO_BYTES // BLOCK),
            data=payload if is_write else b"",
        )
    )


def scripted_batches(kind: Kind, queue_depth: int, batches: int, seed: int = 1) -> list[bytes]:
    """``batches`` receives' worth of commands, CmdSN and ITT in order from 1."""
    rng = random.Random(seed)
    payload = bytes(range(256)) * (IO_BYTES // 256)
    blocks = DISK_BYTES // IO_BYTES
    out, number = [], 1
    for _ in range(batches):
        parts = []
        for _ in range(queue_depth):
            is_write = kind is Kind.WRITE or (kind is Kind.MIX and number % 3 == 0)
            lba = rng.randrange(blocks) * (IO_BYTES // BLOCK)
            parts.append(_command(is_write, number, number, lba, payload))
            number += 1
        out.append(b"".join(parts))
    return out


class ScriptedInitiator:
    """A `ByteChannel`: hands out one batch per receive, then end of stream; drops output."""

    def __init__(self, batches: list[bytes]) -> None:
        self._batches = iter(batches)
        self.bytes_sent = 0

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return next(self._batches, b"")

    async def send_all(self, data: bytes | bytearray) -> None:
        await trio.lowlevel.checkpoint()
        self.bytes_sent += len(data)


async def _serve_once(target: VDiskTarget, batches: list[bytes]) -> None:
    session = Session(
        initiator_name="iqn.2026-11.bench:initiator",
        isid=1,
        tsih=1,
        session_type=SessionType.NORMAL,
        target=target,
        exp_cmd_sn=1,
    )
    session.max_cmd_sn = 1 << 30
    params = SessionParams()
    params.immediate_data = True
    params.initiator_max_recv_data_segment_length = SEGMENT
    params.target_max_recv_data_segment_length = SEGMENT
    params.first_burst_length = 65536
    channel = ScriptedInitiator(batches)
    connection = FullFeatureConnection(
        channel,
        PduFramer(receiving_from="initiator", max_recv_data_segment_length=SEGMENT),
        session,
        params,
        CommandQueue(128),
        nexus=NEXUS,
        cid=0,
        stat_sn=1,
    )
    await connection.run()


def measure(
    kind: Kind, queue_depth: int, batches: int, repeat: int, directory: Path
) -> HotPathResult:
    scripted = scripted_batches(kind, queue_depth, batches)
    scratch = Path(tempfile.mkdtemp(prefix="hotpath-", dir=directory))
    try:
        meta = VDiskMeta("bench", DISK_BYTES)
        store = FileStore.open_or_create(scratch, meta)
        reservations, unit_attentions = vdisk_reservations(None, "bench")
        unit = LogicalUnit(store, meta, reservations=reservations, unit_attentions=unit_attentions)
        unit_attentions.consume(NEXUS)  # the POWER ON unit attention, once
        target = VDiskTarget("bench", unit, block_size=BLOCK)
        trio.run(_serve_once, target, scripted[: max(1, batches // 8)])  # warm-up
        timings = []
        for _ in range(repeat):
            done_before = target.stats.reads + target.stats.writes
            started = time.process_time()
            trio.run(_serve_once, target, scripted)
            timings.append((time.process_time() - started) / (batches * queue_depth) * 1e6)
            done = target.stats.reads + target.stats.writes - done_before
            if done != batches * queue_depth or target.stats.errors:
                raise RuntimeError(
                    f"{done} of {batches * queue_depth} commands done, "
                    f"{target.stats.errors} failed: the script is wrong"
                )
        store.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return HotPathResult(
        kind.value, queue_depth, batches * queue_depth, min(timings), [round(t, 2) for t in timings]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath_bench", description=__doc__)
    parser.add_argument("--kind", choices=[kind.value for kind in Kind], action="append")
    parser.add_argument("--qd", type=int, default=32, help="commands per receive (default 32)")
    parser.add_argument("--batches", type=int, default=400, help="receives per repeat")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--dir", type=Path, default=Path("/dev/shm"), help="where the vDisk file goes"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.qd < 1 or args.batches < 1 or args.repeat < 1:
        parser.error("--qd, --batches and --repeat must be at least 1")
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory")
    results = [
        measure(Kind(kind), args.qd, args.batches, args.repeat, args.dir)
        for kind in (args.kind or [Kind.READ.value, Kind.WRITE.value])
    ]
    for result in results:
        print(
            f"{result.kind:5} QD{result.queue_depth}: {result.cpu_us_per_command:.2f} µs CPU per "
            f"command (best of {len(result.all_repeats_us)}: {result.all_repeats_us})"
        )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Micro-benchmark of the BHS codecs: µs per build and per parse, construct vs struct fast path,
for the five hot PDUs; plus whole-PDU framing of a 4 KiB Data-In.

    python -m benchmarks.codec_bench [--json FILE] [--repeat N]

Figures are the best of ``--repeat`` timeit runs (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from iscsicore import fastpath, wire
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.pdu import R2T, DataIn, DataOut, Pdu, ScsiCommand, ScsiResponse, lun_from_number

SAMPLES: tuple[Pdu, ...] = (
    ScsiCommand(
        final=True,
        read=True,
        lun=lun_from_number(0),
        itt=0x1234,
        expected_data_transfer_length=4096,
        cmd_sn=77,
        exp_stat_sn=66,
        cdb=bytes.fromhex("28000000100000000800000000000000"),
    ),
    ScsiResponse(itt=0x1234, stat_sn=66, exp_cmd_sn=78, max_cmd_sn=141, residual_count=0),
    DataIn(
        final=True,
        status_present=True,
        itt=0x1234,
        stat_sn=66,
        exp_cmd_sn=78,
        max_cmd_sn=141,
        data=bytes(4096),
    ),
    DataOut(final=True, itt=0x1234, ttt=9, exp_stat_sn=66, buffer_offset=8192, data=bytes(4096)),
    R2T(itt=0x1234, ttt=9, stat_sn=66, exp_cmd_sn=78, max_cmd_sn=141, r2t_sn=1),
)


@dataclass(frozen=True, slots=True)
class Result:
    pdu: str
    operation: str  # "build" | "parse"
    codec: str  # "construct" | "fastpath"
    microseconds: float


def _best_us(call: Callable[[], object], repeat: int) -> float:
    timer = timeit.Timer(call)
    loops, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=loops)) / loops * 1e6


def run(repeat: int = 5) -> list[Result]:
    results: list[Result] = []
    for pdu in SAMPLES:
        header = wire.encode_bhs(pdu)
        name = type(pdu).__name__
        for codec, encode, decode in (
            ("construct", wire.encode_bhs, wire.decode_bhs),
            ("fastpath", fastpath.encode_bhs, fastpath.decode_bhs),
        ):
            if decode(header) != wire.decode_bhs(header):  # never time a wrong answer
                raise AssertionError(f"{codec} decodes {name} differently")
            results.append(
                Result(name, "build", codec, _best_us(lambda e=encode, p=pdu: e(p), repeat))
            )
            results.append(
                Result(name, "parse", codec, _best_us(lambda d=decode, h=header: d(h), repeat))
            )
    data_in = SAMPLES[2]
    framed = encode_pdu(data_in, header_digest=True, data_digest=True)
    framer = PduFramer(receiving_from="target", header_digest=True, data_digest=True)

    def frame_one() -> object:
        framer.feed(framed)
        return framer.next_pdu()

    results.append(
        Result(
            "DataIn+4KiB+digests",
            "build",
            "framing",
            _best_us(lambda: encode_pdu(data_in, header_digest=True, data_digest=True), repeat),
        )
    )
    results.append(Result("DataIn+4KiB+digests", "parse", "framing", _best_us(frame_one, repeat)))
    return results


def _table(results: list[Result]) -> str:
    rows = [f"{'PDU':<22}{'op':<7}{'construct µs':>14}{'fastpath µs':>13}{'speed-up':>10}"]
    by_key = {(r.pdu, r.operation, r.codec): r.microseconds for r in results}
    for pdu in dict.fromkeys(r.pdu for r in results):
        for operation in ("build", "parse"):
            if (pdu, operation, "framing") in by_key:
                framing_us = by_key[pdu, operation, "framing"]
                rows.append(f"{pdu:<22}{operation:<7}{'':>14}{framing_us:>13.2f}   (framing)")
                continue
            slow = by_key[pdu, operation, "construct"]
            fast = by_key[pdu, operation, "fastpath"]
            rows.append(f"{pdu:<22}{operation:<7}{slow:>14.2f}{fast:>13.2f}{slow / fast:>9.1f}x")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--repeat", type=int, default=5, help="timeit repetitions (best kept)")
    args = parser.parse_args(argv)
    results = run(args.repeat)
    print(_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

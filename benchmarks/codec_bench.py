"""Micro-benchmark of the BHS codecs: µs per build and per parse, construct vs struct fast path,
for the five hot PDUs; plus whole PDUs through encode_pdu and PduFramer (a SCSI Command, and
a 4 KiB Data-In with both digests).

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
from functools import partial
from pathlib import Path

from iscsicore import fastpath, wire
from iscsicore.framing import PduFramer, Peer, encode_pdu
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
            results.append(Result(name, "build", codec, _best_us(partial(encode, pdu), repeat)))
            results.append(Result(name, "parse", codec, _best_us(partial(decode, header), repeat)))
    results += _framing_results(
        "ScsiCommand", SAMPLES[0], "initiator", digests=False, repeat=repeat
    )
    results += _framing_results(
        "DataIn+4KiB+digests", SAMPLES[2], "target", digests=True, repeat=repeat
    )
    return results


def _framing_results(
    name: str, pdu: Pdu, sender: Peer, *, digests: bool, repeat: int
) -> list[Result]:
    """Whole PDUs: encode_pdu, and PduFramer.feed + next_pdu of one complete PDU."""
    framed = encode_pdu(pdu, header_digest=digests, data_digest=digests)
    framer = PduFramer(receiving_from=sender, header_digest=digests, data_digest=digests)

    def frame_one() -> object:
        framer.feed(framed)
        return framer.next_pdu()

    def build() -> object:
        return encode_pdu(pdu, header_digest=digests, data_digest=digests)

    return [
        Result(name, "build", "framing", _best_us(build, repeat)),
        Result(name, "parse", "framing", _best_us(frame_one, repeat)),
    ]


def _table(results: list[Result]) -> str:
    rows = [f"{'PDU':<22}{'op':<7}{'construct µs':>14}{'fastpath µs':>13}{'speed-up':>10}"]
    by_key = {(r.pdu, r.operation, r.codec): r.microseconds for r in results}
    for pdu in dict.fromkeys(r.pdu for r in results if r.codec != "framing"):
        for operation in ("build", "parse"):
            slow = by_key[pdu, operation, "construct"]
            fast = by_key[pdu, operation, "fastpath"]
            rows.append(f"{pdu:<22}{operation:<7}{slow:>14.2f}{fast:>13.2f}{slow / fast:>9.1f}x")
    rows.append("")
    rows.append(f"{'whole PDU':<22}{'op':<7}{'framing µs':>14}")
    for result in results:
        if result.codec == "framing":
            rows.append(f"{result.pdu:<22}{result.operation:<7}{result.microseconds:>14.2f}")
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

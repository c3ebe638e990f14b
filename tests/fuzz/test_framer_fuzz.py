"""Fuzz targets for `iscsicore.framing.PduFramer`: hostile byte streams, any split.

Streams are built from legal PDUs (tests/iscsicore/strategies.py), mutated byte by byte,
truncated and mixed with random bytes, so that most of them get past the opcode check and
reach the length, AHS, digest and field checks. The oracles:

* only `IscsiProtocolError` subclasses come out; after a fatal one the framer stays failed
  (the same error again, later bytes ignored);
* the framer never holds more than one maximal PDU plus the chunk just fed;
* the outcome (PDUs and errors, in order) does not depend on how the stream is split,
  whatever MaxRecvDataSegmentLength and digests are in force: the SCSI Command fast path
  and the general path agree;
* legal PDUs round-trip through any split, with any MaxRecvDataSegmentLength that admits
  them; with digests on, a corrupted header is always a HeaderDigestError and a corrupted
  data segment always exactly one DataDigestError, the stream staying in sync.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

from hypothesis import given
from hypothesis import strategies as st

from iscsicore import wire
from iscsicore.digest import DIGEST_LENGTH
from iscsicore.errors import DataDigestError, HeaderDigestError, IscsiProtocolError
from iscsicore.framing import LOGIN_DATA_SEGMENT_LIMIT, PduFramer, encode_pdu
from iscsicore.pdu import BHS_LENGTH, Opcode, Pdu, ScsiCommand
from tests.fuzz.driver import count_example, fuzz_target
from tests.iscsicore.strategies import initiator_pdus, pdus_of, target_pdus

Peer = Literal["initiator", "target"]

MIN_MRDSL = 512
MAX_MRDSL = (1 << 24) - 1
MAX_AHS = 255 * 4
# The PDU loop below stops after this many PDUs per feed: each consumes >= 48 bytes.
MAX_STREAM = 1 << 16

mrdsls = st.one_of(
    st.sampled_from([MIN_MRDSL, 8192, 262144, MAX_MRDSL]), st.integers(MIN_MRDSL, MAX_MRDSL)
)


def max_pdu_bytes(mrdsl: int) -> int:
    """The longest PDU the framer may have to hold whole: header, AHS, digests, data, pad."""
    data = max(mrdsl, LOGIN_DATA_SEGMENT_LIMIT)
    return BHS_LENGTH + MAX_AHS + DIGEST_LENGTH + data + 3 + DIGEST_LENGTH


@dataclass(frozen=True)
class Settings:
    direction: Peer
    mrdsl: int
    header_digest: bool
    data_digest: bool

    def framer(self) -> PduFramer:
        return PduFramer(
            receiving_from=self.direction,
            max_recv_data_segment_length=self.mrdsl,
            header_digest=self.header_digest,
            data_digest=self.data_digest,
        )


settings_strategy = st.builds(
    Settings,
    direction=st.sampled_from(["initiator", "target"]),
    mrdsl=mrdsls,
    header_digest=st.booleans(),
    data_digest=st.booleans(),
)

# An outcome of one `next_pdu` call: a PDU, or the error's class, fatality and header.
Outcome = Pdu | tuple[str, bool, bytes | None]


def split(blob: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(blob), *(c % (len(blob) + 1) for c in cuts)})
    return [blob[a:b] for a, b in itertools.pairwise(points)]


def run_framer(settings: Settings, chunks: list[bytes]) -> list[Outcome]:
    """Feed ``chunks`` one by one, draining after each, checking the framer's invariants."""
    framer = settings.framer()
    bound = max_pdu_bytes(settings.mrdsl)
    outcomes: list[Outcome] = []
    failure: IscsiProtocolError | None = None
    for chunk in chunks:
        framer.feed(chunk)
        for _ in range(len(chunk) // BHS_LENGTH + 2):
            try:
                pdu = framer.next_pdu()
            except IscsiProtocolError as error:
                if failure is not None:
                    assert error is failure, "a failed framer raises its first error again"
                    break
                outcomes.append((type(error).__name__, error.fatal, error.header))
                if error.fatal:
                    failure = error
                    assert framer.failed
                    break
                assert isinstance(error, DataDigestError) and settings.data_digest
                continue
            # Anything else escaping `next_pdu` fails the test with its traceback.
            if pdu is None:
                break
            assert failure is None, "a PDU after a fatal error"
            assert pdu.OPCODE.from_initiator == (settings.direction == "initiator")
            limit = LOGIN_DATA_SEGMENT_LIMIT if pdu.OPCODE in _LOGIN else settings.mrdsl
            assert len(pdu.data) <= limit
            outcomes.append(pdu)
        else:
            raise AssertionError("next_pdu kept returning PDUs beyond the bytes fed")
        if failure is None:
            # Memory: at most one incomplete PDU is held once everything complete is out,
            # and the buffer's consumed prefix is compacted away.
            assert framer.buffered < bound
            assert len(framer._buffer) <= 2 * bound + len(chunk)
    return outcomes


_LOGIN = frozenset({Opcode.LOGIN_REQUEST, Opcode.LOGIN_RESPONSE})


@st.composite
def hostile_streams(draw: st.DrawFn, settings: Settings) -> bytes:
    """Legal PDUs (either direction) with byte mutations, cut short or mixed with junk."""
    pieces: list[bytes] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["own", "own", "other", "junk", "plain command"]))
        if kind == "junk":
            pieces.append(draw(st.binary(max_size=200)))
            continue
        own = settings.direction == "initiator"
        strategy = initiator_pdus() if (kind == "own") == own else target_pdus()
        if kind == "plain command":
            # No AHS: what the SCSI Command fast path of `next_pdu` takes (when no
            # digests are on). A coverage-guided run (atheris) showed it was rarely hit.
            strategy = pdus_of(ScsiCommand).map(_without_ahs)
        blob = bytearray(
            encode_pdu(
                draw(strategy),
                header_digest=settings.header_digest,
                data_digest=settings.data_digest,
            )
        )
        for _ in range(draw(st.integers(0, 4))):
            index = draw(st.integers(0, len(blob) - 1))
            if draw(st.booleans()) and index < BHS_LENGTH:
                # Aim at the bytes that steer framing: opcode, flags, AHS and data lengths.
                index = draw(st.sampled_from([0, 1, 4, 5, 6, 7]))
            blob[index] = draw(st.integers(0, 255))
        if draw(st.integers(0, 5)) == 0:
            del blob[draw(st.integers(0, len(blob))) :]
        pieces.append(bytes(blob))
    return b"".join(pieces)[:MAX_STREAM]


def _without_ahs(pdu: Pdu) -> Pdu:
    pdu.ahs = []
    return pdu


@fuzz_target(examples=400)
@given(data=st.data(), settings=settings_strategy)
def test_fuzz_framer_hostile_streams(data: st.DataObject, settings: Settings) -> None:
    """Only protocol errors, bounded memory, and the same outcome however it is split."""
    count_example("test_fuzz_framer_hostile_streams")
    stream = data.draw(
        st.one_of(hostile_streams(settings), st.binary(max_size=600)), label="stream"
    )
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=16), label="cuts")
    whole = run_framer(settings, [stream])
    pieces = run_framer(settings, split(stream, cuts))
    assert pieces == whole, "the outcome depends on how the stream was split"
    one_byte_at_a_time = run_framer(settings, [stream[i : i + 1] for i in range(len(stream))])
    assert one_byte_at_a_time == whole


@fuzz_target(examples=200)
@given(data=st.data(), settings=settings_strategy)
def test_fuzz_framer_round_trip_and_corruption(data: st.DataObject, settings: Settings) -> None:
    """Legal PDUs arrive intact through any split; with digests on, one corrupted byte
    per chosen PDU is caught by the right digest and costs only that PDU (data) or the
    stream (header)."""
    count_example("test_fuzz_framer_round_trip_and_corruption")
    strategy = initiator_pdus() if settings.direction == "initiator" else target_pdus()
    sent = data.draw(st.lists(strategy, min_size=1, max_size=6), label="pdus")
    mrdsl = max(settings.mrdsl, *(len(p.data) for p in sent))
    settings = Settings(settings.direction, mrdsl, settings.header_digest, settings.data_digest)
    blob = bytearray()
    expected: list[Outcome] = []
    header_corrupted = False
    for pdu in sent:
        encoded = bytearray(
            encode_pdu(pdu, header_digest=settings.header_digest, data_digest=settings.data_digest)
        )
        header_end = BHS_LENGTH + len(wire.encode_ahs(pdu.ahs))
        if settings.header_digest:
            header_end += DIGEST_LENGTH
        target = data.draw(st.sampled_from(["none", "header", "data"]), label="corrupt")
        if target == "header" and settings.header_digest and not header_corrupted:
            encoded[data.draw(st.integers(0, header_end - 1))] ^= data.draw(st.integers(1, 255))
            expected.append((HeaderDigestError.__name__, True, None))
            header_corrupted = True  # nothing after it is read
        elif target == "data" and settings.data_digest and pdu.data and not header_corrupted:
            position = data.draw(st.integers(header_end, len(encoded) - 1))
            encoded[position] ^= data.draw(st.integers(1, 255))
            expected.append((DataDigestError.__name__, False, None))
        elif not header_corrupted:
            expected.append(pdu)
        blob += encoded
    if header_corrupted:
        # A corrupted length may claim more header than was sent: the digest is checked
        # once the claimed header has arrived, so send that much (never read as PDUs).
        blob += bytes(MAX_AHS + 2 * DIGEST_LENGTH)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=16), label="cuts")
    received = run_framer(settings, split(bytes(blob), cuts))
    # The header a digest error carries is whatever arrived: compare the rest.
    normalised = [o if isinstance(o, Pdu) else (o[0], o[1], None) for o in received]
    assert normalised == expected

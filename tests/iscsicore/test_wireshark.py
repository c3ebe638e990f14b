"""Cross-check the codec with Wireshark's iSCSI dissector.

Every PDU class is written into a pcap as TCP segments on port 3260 (scapy, a proper
handshake and sequence numbers in both directions), dissected with ``tshark -T json``, and
the fields Wireshark reads back are compared with the dataclasses. A second conversation
negotiates CRC32C digests at login and carries them in the full feature phase, so
Wireshark checks our header and data digests too.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from iscsicore import wire
from iscsicore.digest import digest_bytes
from iscsicore.framing import encode_pdu
from iscsicore.pdu import (
    BHS_LENGTH,
    PDU_CLASSES,
    R2T,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    lun_from_number,
    lun_number,
)
from tests.conftest import require_tool

from .strategies import initiator_pdus, target_pdus

TSHARK = shutil.which("tshark")


@pytest.fixture(scope="module", autouse=True)
def _tshark_installed() -> None:
    """Fails in CI, skips elsewhere, when tshark is missing (the project's rule for peers)."""
    require_tool("tshark", why="Wireshark's iSCSI dissector")


TARGET_PORT = 3260
INITIATOR = ("127.0.0.1", 40001)
TARGET = ("127.0.0.2", TARGET_PORT)
ISID = 0x00023D000001
TARGET_NAME = "iqn.2010-06.com.nutanix:vmdisk-42"
INITIATOR_NAME = "iqn.1994-05.com.redhat:client"


def _keys(*pairs: str) -> bytes:
    return b"".join(pair.encode() + b"\x00" for pair in pairs)


def _cdb(*head: int) -> bytes:
    return bytes(head).ljust(16, b"\x00")


WRITE10 = _cdb(0x2A, 0, 0, 0, 0, 8, 0, 0, 2, 0)
READ10 = _cdb(0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0)
SENSE = bytes.fromhex("0012 700005000000000a0000000024000000000000")  # ILLEGAL REQUEST


def conversation() -> list[Pdu]:
    """A plausible session touching all 18 PDU classes, in the order they would flow."""
    lun = lun_from_number(3)
    return [
        LoginRequest(
            transit=True,
            csg=1,
            nsg=3,
            isid=ISID,
            itt=0,
            cid=0,
            cmd_sn=1,
            data=_keys(
                f"InitiatorName={INITIATOR_NAME}",
                f"TargetName={TARGET_NAME}",
                "SessionType=Normal",
                "MaxRecvDataSegmentLength=262144",
            ),
        ),
        LoginResponse(
            transit=True,
            csg=1,
            nsg=3,
            isid=ISID,
            tsih=0x21,
            itt=0,
            stat_sn=0x100,
            exp_cmd_sn=1,
            max_cmd_sn=64,
            data=_keys("TargetPortalGroupTag=1", "MaxRecvDataSegmentLength=65536"),
        ),
        TextRequest(itt=1, cmd_sn=1, exp_stat_sn=0x101, data=_keys("SendTargets=All")),
        TextResponse(
            itt=1,
            stat_sn=0x101,
            exp_cmd_sn=2,
            max_cmd_sn=65,
            data=_keys(f"TargetName={TARGET_NAME}", "TargetAddress=127.0.0.2:3260,1"),
        ),
        NopOut(immediate=True, itt=2, cmd_sn=2, exp_stat_sn=0x102, data=b"ping"),
        NopIn(itt=2, stat_sn=0x102, exp_cmd_sn=2, max_cmd_sn=65, data=b"ping"),
        ScsiCommand(
            write=True,
            lun=lun,
            itt=3,
            expected_data_transfer_length=1024,
            cmd_sn=2,
            exp_stat_sn=0x103,
            cdb=WRITE10,
            data=bytes(range(256)) * 2,
        ),
        R2T(
            lun=lun,
            itt=3,
            ttt=0x77,
            stat_sn=0x103,
            exp_cmd_sn=3,
            max_cmd_sn=66,
            buffer_offset=512,
            desired_data_transfer_length=512,
        ),
        DataOut(
            final=True,
            lun=lun,
            itt=3,
            ttt=0x77,
            exp_stat_sn=0x103,
            buffer_offset=512,
            data=bytes(range(255, -1, -1)) * 2,
        ),
        ScsiResponse(itt=3, stat_sn=0x103, exp_cmd_sn=3, max_cmd_sn=66),
        ScsiCommand(
            read=True,
            lun=lun,
            itt=4,
            expected_data_transfer_length=512,
            cmd_sn=3,
            exp_stat_sn=0x104,
            cdb=READ10,
        ),
        DataIn(
            final=True,
            status_present=True,
            lun=lun,
            itt=4,
            stat_sn=0x104,
            exp_cmd_sn=4,
            max_cmd_sn=67,
            data=b"\x5a" * 510,  # two bytes short: exercises padding
            underflow=True,
            residual_count=2,
        ),
        ScsiCommand(lun=lun, itt=5, cmd_sn=4, exp_stat_sn=0x105, cdb=_cdb(0xFF)),  # unknown opcode
        ScsiResponse(
            status=2,
            itt=5,
            stat_sn=0x105,
            exp_cmd_sn=5,
            max_cmd_sn=68,
            data=SENSE,
        ),
        TaskMgmtRequest(
            function=1,
            lun=lun,
            itt=6,
            referenced_task_tag=4,
            cmd_sn=5,
            exp_stat_sn=0x106,
            ref_cmd_sn=3,
        ),
        TaskMgmtResponse(response=1, itt=6, stat_sn=0x106, exp_cmd_sn=5, max_cmd_sn=68),
        SnackRequest(snack_type=1, itt=0xFFFFFFFF, exp_stat_sn=0x106, beg_run=0x105),
        Reject(
            reason=4,
            stat_sn=0x107,
            exp_cmd_sn=5,
            max_cmd_sn=68,
            data=wire.encode_bhs(SnackRequest(snack_type=1, exp_stat_sn=0x106, beg_run=0x105)),
        ),
        AsyncMessage(
            lun=lun,
            stat_sn=0x108,
            exp_cmd_sn=5,
            max_cmd_sn=68,
            async_event=1,
            parameter3=5,
        ),
        LogoutRequest(immediate=True, reason=0, itt=7, cmd_sn=5, exp_stat_sn=0x109),
        LogoutResponse(itt=7, stat_sn=0x109, exp_cmd_sn=5, max_cmd_sn=68, time2wait=2),
    ]


def digest_conversation() -> list[Pdu]:
    """Login negotiating CRC32C digests, then full feature PDUs that carry them."""
    lun = lun_from_number(0)
    digests = ("HeaderDigest=CRC32C", "DataDigest=CRC32C")
    return [
        LoginRequest(
            transit=True,
            csg=1,
            nsg=3,
            isid=ISID + 1,
            itt=0x10,
            cmd_sn=9,
            data=_keys(f"InitiatorName={INITIATOR_NAME}", f"TargetName={TARGET_NAME}", *digests),
        ),
        LoginResponse(
            transit=True,
            csg=1,
            nsg=3,
            isid=ISID + 1,
            tsih=0x22,
            itt=0x10,
            stat_sn=0x500,
            exp_cmd_sn=9,
            max_cmd_sn=72,
            data=_keys(*digests),
        ),
        ScsiCommand(
            read=True,
            lun=lun,
            itt=0x11,
            expected_data_transfer_length=1000,
            cmd_sn=9,
            exp_stat_sn=0x501,
            cdb=READ10,
        ),
        DataIn(
            final=True,
            status_present=True,
            lun=lun,
            itt=0x11,
            stat_sn=0x501,
            exp_cmd_sn=10,
            max_cmd_sn=73,
            data=bytes(range(250)) * 4,
        ),
        NopOut(immediate=True, itt=0x12, cmd_sn=10, exp_stat_sn=0x502, data=b"digest-ping"),
        NopIn(itt=0x12, stat_sn=0x502, exp_cmd_sn=10, max_cmd_sn=73, data=b"digest-ping"),
    ]


# ---------------------------------------------------------------------------------------
# pcap writing (scapy) and dissection (tshark)


@dataclass
class _TcpStream:
    client: tuple[str, int]
    server: tuple[str, int]
    next_seq: dict[bool, int] = field(default_factory=lambda: {True: 1000, False: 50000})
    packets: list[Any] = field(default_factory=list)

    def _segment(self, from_client: bool, flags: str, payload: bytes = b"") -> None:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw

        (src, sport), (dst, dport) = (
            (self.client, self.server) if from_client else (self.server, self.client)
        )
        seq = self.next_seq[from_client]
        ack = self.next_seq[not from_client] if "A" in flags else 0
        packet = (
            Ether()
            / IP(src=src, dst=dst)
            / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=65535)
        )
        if payload:
            packet = packet / Raw(payload)
        packet.time = 1_700_000_000 + len(self.packets) * 0.001
        self.packets.append(packet)
        self.next_seq[from_client] = seq + len(payload) + (1 if "S" in flags or "F" in flags else 0)

    def handshake(self) -> None:
        self._segment(True, "S")
        self._segment(False, "SA")
        self._segment(True, "A")

    def send(self, from_client: bool, payload: bytes) -> None:
        self._segment(from_client, "PA", payload)


def write_pcap(path: Path, streams: list[tuple[_TcpStream, list[tuple[Pdu, bytes]]]]) -> None:
    from scapy.utils import wrpcap

    packets = []
    for stream, pdus in streams:
        stream.handshake()
        for pdu, encoded in pdus:
            stream.send(pdu.opcode.from_initiator, encoded)
        packets += stream.packets
    wrpcap(str(path), packets)


@dataclass
class DissectedPdu:
    """One top-level iSCSI PDU as Wireshark shows it (nested headers, as in a Reject,
    included after the outer fields)."""

    fields: dict[str, list[str]]  # field name -> "show" values, in document order
    shownames: list[str]


@dataclass
class DissectedPacket:
    pdus: list[DissectedPdu]
    problems: list[str]  # malformed, warning/error expert infos, bad digests


_PI_WARN = 0x00600000  # Wireshark expert severities: chat < note < warn < error


def _descendants(element: ET.Element) -> Iterator[ET.Element]:
    yield from element.iter()


def _summarise(proto: ET.Element) -> DissectedPdu:
    fields: dict[str, list[str]] = defaultdict(list)
    shownames = []
    for item in _descendants(proto):
        name = item.get("name")
        if name and item.get("show") is not None:
            fields[name].append(item.get("show", ""))
        if item.get("showname"):
            shownames.append(item.get("showname", ""))
    return DissectedPdu(fields, shownames)


def dissect(path: Path, *, bogus_pdu_filter: bool = True) -> list[DissectedPacket]:
    """Dissect with tshark (PDML: the display text carries Wireshark's digest verdicts).

    Wireshark's bogus-PDU heuristic refuses some legal but odd headers (an all-zero
    NOP-Out, say); tests of arbitrary field values switch it off.
    """
    assert TSHARK is not None
    completed = subprocess.run(
        [
            TSHARK,
            "-r",
            str(path),
            "-T",
            "pdml",
            "-d",
            f"tcp.port=={TARGET_PORT},iscsi",
            "-o",
            f"iscsi.target_ports:{TARGET_PORT}",
            "-o",
            f"iscsi.bogus_pdu_filter:{'TRUE' if bogus_pdu_filter else 'FALSE'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    packets = []
    for number, packet in enumerate(ET.fromstring(completed.stdout).iter("packet"), start=1):
        problems = []
        for item in _descendants(packet):
            name, showname = item.get("name", ""), item.get("showname", "")
            if name == "_ws.malformed":
                problems.append(f"frame {number}: malformed: {showname}")
            elif name == "_ws.expert.severity" and int(item.get("show", "0")) >= _PI_WARN:
                problems.append(f"frame {number}: expert: {showname}")
            elif "Bad CRC32" in showname:
                problems.append(f"frame {number}: {showname}")
        pdus = [
            _summarise(proto) for proto in packet.findall("proto") if proto.get("name") == "iscsi"
        ]
        packets.append(DissectedPacket(pdus, problems))
    return packets


def _iscsi_pdus(packets: list[DissectedPacket]) -> list[DissectedPdu]:
    return [pdu for packet in packets for pdu in packet.pdus]


def _problems(packets: list[DissectedPacket]) -> list[str]:
    return [problem for packet in packets for problem in packet.problems]


def _number(pdu: DissectedPdu, name: str) -> int:
    values = pdu.fields.get(name)
    assert values, f"{name} not dissected: {sorted(pdu.fields)}"
    return int(values[0], 0)


# ---------------------------------------------------------------------------------------
# Tests

Dissection = tuple[list[Pdu], list[DissectedPacket]]


def _digest_encoded(pdus: list[Pdu]) -> list[tuple[Pdu, bytes]]:
    """Digests from the first full feature PDU on (the two login PDUs carry none)."""
    return [
        (pdu, encode_pdu(pdu, header_digest=index >= 2, data_digest=index >= 2))
        for index, pdu in enumerate(pdus)
    ]


@pytest.fixture(scope="module")
def plain_dissection(tmp_path_factory: pytest.TempPathFactory) -> Dissection:
    pdus = conversation()
    path = tmp_path_factory.mktemp("pcap") / "plain.pcap"
    write_pcap(path, [(_TcpStream(INITIATOR, TARGET), [(p, encode_pdu(p)) for p in pdus])])
    return pdus, dissect(path)


@pytest.fixture(scope="module")
def digest_dissection(tmp_path_factory: pytest.TempPathFactory) -> Dissection:
    pdus = digest_conversation()
    path = tmp_path_factory.mktemp("pcap") / "digests.pcap"
    write_pcap(path, [(_TcpStream(INITIATOR, TARGET), _digest_encoded(pdus))])
    return pdus, dissect(path)


def test_conversation_covers_every_pdu_class() -> None:
    assert {type(p) for p in conversation()} == set(PDU_CLASSES.values())


def test_nothing_is_malformed(plain_dissection: Dissection) -> None:
    _, packets = plain_dissection
    assert _problems(packets) == []


_COMMON_FIELDS = (
    ("itt", "iscsi.initiatortasktag"),
    ("cmd_sn", "iscsi.cmdsn"),
    ("exp_stat_sn", "iscsi.expstatsn"),
    ("stat_sn", "iscsi.statsn"),
    ("exp_cmd_sn", "iscsi.expcmdsn"),
    ("max_cmd_sn", "iscsi.maxcmdsn"),
    ("ttt", "iscsi.targettransfertag"),
    ("buffer_offset", "iscsi.bufferOffset"),
    ("data_sn", "iscsi.datasn"),
)


def test_every_pdu_reads_back(plain_dissection: Dissection) -> None:
    pdus, packets = plain_dissection
    dissected = _iscsi_pdus(packets)
    assert [_number(d, "iscsi.opcode") for d in dissected] == [p.opcode for p in pdus]
    for pdu, shown in zip(pdus, dissected, strict=True):
        where = type(pdu).__name__
        if pdu.data or "iscsi.datasegmentlength" in shown.fields:  # absent on some empty ones
            assert _number(shown, "iscsi.datasegmentlength") == len(pdu.data), where
        compared = 0
        for attribute, name in _COMMON_FIELDS:
            if hasattr(pdu, attribute) and name in shown.fields:
                assert _number(shown, name) == getattr(pdu, attribute), f"{where} {name}"
                compared += 1
        assert compared >= 2 or isinstance(pdu, SnackRequest), f"{where}: too few fields shown"
        if isinstance(pdu, ScsiCommand | DataOut | R2T | TaskMgmtRequest | NopOut):
            assert _number(shown, "scsi.lun") == lun_number(pdu.lun), where


def test_header_fields_in_detail(plain_dissection: Dissection) -> None:
    pdus, packets = plain_dissection
    by_pdu = dict(zip((id(p) for p in pdus), _iscsi_pdus(packets), strict=True))

    def shown(cls: type[Pdu], index: int = 0) -> tuple[Any, DissectedPdu]:
        pdu = [p for p in pdus if type(p) is cls][index]
        return pdu, by_pdu[id(pdu)]

    command, fields = shown(ScsiCommand)
    assert _number(fields, "iscsi.I") == int(command.immediate)
    assert _number(fields, "iscsi.scsicommand.expecteddatatransferlength") == 1024
    login, fields = shown(LoginRequest)
    assert _number(fields, "iscsi.login.T") == 1
    assert _number(fields, "iscsi.login.C") == 0
    assert _number(fields, "iscsi.login.csg") == 1
    assert _number(fields, "iscsi.login.nsg") == 3
    assert int(fields.fields["iscsi.isid"][0].replace(":", ""), 16) == login.isid
    login_response, fields = shown(LoginResponse)
    assert _number(fields, "iscsi.tsih") == login_response.tsih
    assert _number(fields, "iscsi.login.status") == 0
    r2t, fields = shown(R2T)
    assert _number(fields, "iscsi.desireddatalength") == r2t.desired_data_transfer_length
    assert _number(fields, "iscsi.r2tsn") == r2t.r2t_sn
    data_in, fields = shown(DataIn)
    assert _number(fields, "iscsi.flags") == 0x83  # F, U, S
    assert _number(fields, "iscsi.scsidata.readresidualcount") == data_in.residual_count
    _, fields = shown(ScsiResponse, 1)
    assert _number(fields, "iscsi.scsiresponse.status") == 2
    assert _number(fields, "iscsi.scsiresponse.senselength") == 18
    tmf, fields = shown(TaskMgmtRequest)
    assert _number(fields, "iscsi.taskmanfun.function") == tmf.function
    assert _number(fields, "iscsi.taskmanfun.referencedtasktag") == tmf.referenced_task_tag
    assert _number(fields, "iscsi.refcmdsn") == tmf.ref_cmd_sn
    _, fields = shown(TaskMgmtResponse)
    assert _number(fields, "iscsi.taskmanfun.response") == 1
    snack, fields = shown(SnackRequest)
    assert _number(fields, "iscsi.snack.begrun") == snack.beg_run
    reject, fields = shown(Reject)
    assert _number(fields, "iscsi.reject.reason") == reject.reason
    assert fields.fields["iscsi.opcode"][1] == "0x10"  # the rejected SNACK header, dissected
    message, fields = shown(AsyncMessage)
    assert _number(fields, "iscsi.asyncevent") == message.async_event
    assert _number(fields, "iscsi.parameter3") == message.parameter3
    logout, fields = shown(LogoutRequest)
    assert _number(fields, "iscsi.logout.reason") == logout.reason
    _, fields = shown(LogoutResponse)
    assert _number(fields, "iscsi.time2wait") == 2


def test_text_keys_read_back(plain_dissection: Dissection) -> None:
    pdus, packets = plain_dissection
    checked = 0
    for pdu, shown in zip(pdus, _iscsi_pdus(packets), strict=True):
        if isinstance(pdu, LoginRequest | LoginResponse | TextRequest | TextResponse):
            expected = [pair.decode() for pair in bytes(pdu.data).split(b"\x00") if pair]
            assert shown.fields.get("iscsi.keyvalue") == expected, type(pdu).__name__
            checked += 1
    assert checked == 4


def test_digests_are_verified_good_by_wireshark(digest_dissection: Dissection) -> None:
    pdus, packets = digest_dissection
    assert _problems(packets) == []
    dissected = _iscsi_pdus(packets)
    assert [_number(d, "iscsi.opcode") for d in dissected] == [p.opcode for p in pdus]
    for index, (pdu, shown) in enumerate(zip(pdus, dissected, strict=True)):
        verdicts = [name for name in shown.shownames if "Digest:" in name]
        if index < 2:
            assert verdicts == []
            continue
        expected = 2 if pdu.data else 1
        assert len(verdicts) == expected, verdicts
        assert all("(Good CRC32)" in verdict for verdict in verdicts), verdicts
        # Wireshark shows the four digest bytes as a big-endian number.
        header = encode_pdu(pdu)[:BHS_LENGTH]
        shown_digest = _number(shown, "iscsi.headerdigest32").to_bytes(4, "big")
        assert shown_digest == digest_bytes(header)


@pytest.mark.parametrize("where", ["header", "data"])
def test_a_corrupted_digest_is_noticed(tmp_path: Path, where: str) -> None:
    """The Good verdicts above mean something: a wrong header digest is shown as Bad; a
    wrong data digest loses its Good verdict (Wireshark then guesses there is none)."""
    pdus = digest_conversation()
    encoded = _digest_encoded(pdus)
    data_in, blob = encoded[3]
    corrupted = bytearray(blob)
    corrupted[BHS_LENGTH if where == "header" else -1] ^= 0xFF
    encoded[3] = (data_in, bytes(corrupted))
    path = tmp_path / "bad-digest.pcap"
    write_pcap(path, [(_TcpStream(INITIATOR, TARGET), encoded)])
    packets = dissect(path)
    if where == "header":
        problems = _problems(packets)
        assert any("Bad CRC32" in problem for problem in problems), problems
    else:
        shown = _iscsi_pdus(packets)[3]
        assert _number(shown, "iscsi.opcode") == data_in.opcode
        assert not any(
            name.startswith("DataDigest:") and "Good" in name for name in shown.shownames
        )


def _is_text_keys(data: bytes) -> bool:
    pairs = data.split(b"\x00")
    return data.endswith(b"\x00") and all(b"=" in pair and pair.isascii() for pair in pairs[:-1])


def _dissectable(pdu: Pdu) -> Pdu:
    """Keep arbitrary header fields, within what Wireshark recognises as a header.

    Its SCSI layer knows nothing of random CDBs and sense bytes, so payloads go; it looks
    for AHSs on SCSI Commands only; and its heuristics take headers with zero tags (or an
    non-final Text PDU) for zeros inside a data block.
    """
    changes: dict[str, Any] = {"ahs": pdu.ahs if isinstance(pdu, ScsiCommand) else []}
    for tag in ("itt", "ttt"):
        if getattr(pdu, tag, None) == 0:
            changes[tag] = 1
    if isinstance(pdu, ScsiCommand):
        changes.update(cdb=bytes(16), data=b"")
    elif isinstance(pdu, Reject):
        changes.update(data=wire.encode_bhs(NopOut()))
    elif isinstance(pdu, LoginRequest | LoginResponse | TextRequest | TextResponse):
        if not _is_text_keys(bytes(pdu.data)):
            changes.update(data=b"")  # Wireshark rightly calls anything else malformed
        if isinstance(pdu, TextRequest | TextResponse):
            changes.update(final=True, cont=False)
    elif not isinstance(pdu, NopOut | NopIn):
        changes.update(data=b"")
    return dataclasses.replace(pdu, **changes)


# Each example runs tshark (seconds on a loaded machine): few examples, no shrinking, and
# the same ones on every run (WIRESHARK_EXAMPLES=50 explores further).
@settings(
    max_examples=int(os.environ.get("WIRESHARK_EXAMPLES", "4")),
    derandomize="WIRESHARK_EXAMPLES" not in os.environ,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    initiator_side=st.lists(initiator_pdus().map(_dissectable), min_size=1, max_size=10),
    target_side=st.lists(target_pdus().map(_dissectable), min_size=1, max_size=10),
)
def test_arbitrary_headers_read_back(initiator_side: list[Pdu], target_side: list[Pdu]) -> None:
    pdus = [
        pdu for pair in itertools.zip_longest(initiator_side, target_side) for pdu in pair if pdu
    ]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "arbitrary.pcap"
        write_pcap(path, [(_TcpStream(INITIATOR, TARGET), [(p, encode_pdu(p)) for p in pdus])])
        packets = dissect(path, bogus_pdu_filter=False)
    dissected = _iscsi_pdus(packets)
    assert [_number(d, "iscsi.opcode") for d in dissected] == [p.opcode for p in pdus]
    for pdu, shown in zip(pdus, dissected, strict=True):
        for attribute, name in _COMMON_FIELDS:
            if hasattr(pdu, attribute) and name in shown.fields:
                assert _number(shown, name) == getattr(pdu, attribute), f"{pdu} {name}"
        if pdu.data or "iscsi.datasegmentlength" in shown.fields:
            assert _number(shown, "iscsi.datasegmentlength") == len(pdu.data)
    assert [p for p in _problems(packets) if "malformed" in p] == []

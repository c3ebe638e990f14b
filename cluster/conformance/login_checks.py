"""Judges of the login suite: each reads the `Evidence` of one test and gives an `Outcome`."""

from __future__ import annotations

from collections import Counter

from cluster.conformance.evidence import ConnectionLog, Evidence, Seen
from cluster.conformance.verdict import Outcome, failed, informative, not_applicable, passed
from iscsicore.pdu import RESERVED_TAG, DataOut, LoginRequest, LoginResponse, ScsiCommand
from iscsicore.seqnum import SERIAL_MASK

EVIDENCE_PDUS = 12  # PDUs quoted per verdict: enough to see the exchange, not a dump
ISID_TYPES = {0: "OUI", 1: "EN", 2: "random", 3: "reserved"}


def quote(seen: list[Seen], limit: int = EVIDENCE_PDUS) -> tuple[dict[str, object], ...]:
    return tuple(item.summary() for item in seen[:limit])


def first_connection(evidence: Evidence, listener: str = "entry") -> ConnectionLog | None:
    connections = [conn for conn in evidence.on(listener) if conn.login_requests()]
    return connections[0] if connections else None


def never_logged_in(listener: str = "entry") -> Outcome:
    return failed(f"the initiator sent no Login Request to the {listener} portal")


def isid_tsih(evidence: Evidence) -> Outcome:
    """RFC 7143 11.12.5-11.12.6: a new session starts with TSIH 0; ISID and TSIH stay the
    same on every request of the login; the ISID type is not the reserved one."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    requests = conn.login_requests()
    first = requests[0]
    quoted = quote(conn.pdus, 4)
    if first.tsih != 0:
        return failed(f"first Login Request of a new session has TSIH {first.tsih}", *quoted)
    changed = [req for req in requests if (req.isid, req.tsih) != (first.isid, first.tsih)]
    if changed:
        return failed(f"ISID/TSIH changed during the login ({len(changed)} requests)", *quoted)
    kind = ISID_TYPES[first.isid >> 46]
    if kind == "reserved":
        return failed(f"ISID 0x{first.isid:012x} has the reserved type 11b", *quoted)
    return passed(
        f"TSIH 0, ISID 0x{first.isid:012x} ({kind} type) on all {len(requests)} requests",
        *quoted,
    )


def _key_counts(conn: ConnectionLog) -> Counter[str]:
    return Counter(
        key
        for seen in conn.received()
        if isinstance(seen.pdu, LoginRequest)
        for key, _ in seen.text()
    )


def _some(keys: list[str], shown: int = 4) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _repeated_keys(conn: ConnectionLog) -> list[str]:
    return sorted(key for key, count in _key_counts(conn).items() if count > 1)


def negotiate_once(evidence: Evidence) -> Outcome:
    """RFC 7143 6.2: no key is declared or negotiated twice in one login."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    counts = _key_counts(conn)
    twice = _repeated_keys(conn)
    quoted = quote(conn.received())
    if twice:
        return failed(f"sent {_some(twice)} more than once in one login", *quoted)
    return passed(f"{len(counts)} keys, each sent once", *quoted)


def transit_held(evidence: Evidence) -> Outcome:
    """RFC 7143 6.3 and 11.13.3: an initiator stays in its stage while the target answers
    T=0, repeats its T=1 request, and completes once the target lets it go on."""
    conns = [conn for conn in evidence.on("entry") if conn.login_requests()]
    if not conns:
        return never_logged_in()
    for conn in conns:
        last: LoginResponse | None = None
        for seen in conn.pdus:
            pdu = seen.pdu
            if isinstance(pdu, LoginResponse):
                last = pdu
            elif (
                isinstance(pdu, LoginRequest)
                and last is not None
                and not last.transit
                and pdu.csg != last.csg
            ):
                return failed(
                    f"moved to stage {pdu.csg} after a T=0 answer in stage {last.csg}",
                    *quote(conn.pdus),
                )
    repeated = _repeated_keys(conns[0])
    if repeated:
        return failed(
            f"sent {_some(repeated)} more than once while the target held T=0 "
            "(RFC 7143 6.2: negotiate once)",
            *quote(conns[0].pdus),
        )
    held = sum(
        1 for resp in conns[0].login_responses() if not resp.transit and resp.status_class == 0
    )
    if not any(conn.logged_in for conn in conns):
        return failed(
            f"gave up after {held} T=0 answers in {len(conns)} connection(s)",
            *quote(conns[0].pdus),
        )
    return passed(
        f"stayed in stage through {held} T=0 answers, then logged in", *quote(conns[0].pdus)
    )


def stat_sn_followed(evidence: Evidence) -> Outcome:
    """RFC 7143 11.12.8 and 4.2.2.2: each Login Request after the first acknowledges the
    last StatSN (ExpStatSN = StatSN + 1, modulo 2**32), as does the first PDU after login."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    last_stat_sn: int | None = None
    checked = 0
    for seen in conn.pdus:
        pdu = seen.pdu
        if isinstance(pdu, LoginResponse):
            last_stat_sn = pdu.stat_sn
            continue
        exp_stat_sn = getattr(pdu, "exp_stat_sn", None)
        if seen.direction != "in" or exp_stat_sn is None or last_stat_sn is None:
            continue
        expected = (last_stat_sn + 1) & SERIAL_MASK
        if exp_stat_sn != expected:
            return failed(
                f"{seen.name} has ExpStatSN {exp_stat_sn}, expected {expected}",
                *quote(conn.pdus),
            )
        checked += 1
        if not isinstance(pdu, LoginRequest):
            break  # the first full feature PDU; later ones may lag behind responses in flight
        last_stat_sn = None  # until the next response
    if not checked:
        return failed("no PDU after the first login response to check", *quote(conn.pdus))
    first_stat_sn = conn.login_responses()[0].stat_sn
    return passed(
        f"StatSN from {first_stat_sn}: {checked} ExpStatSN values right", *quote(conn.pdus)
    )


def segment_length_honoured(evidence: Evidence, declared: int) -> Outcome:
    """RFC 7143 13.12: no data segment longer than the MaxRecvDataSegmentLength the target
    declared (here smaller than any default)."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    sent = [seen for c in evidence.on("entry") for seen in c.full_feature() if seen.data_length]
    if not sent:
        return not_applicable("the initiator sent no data segment after login")
    longest = max(sent, key=lambda seen: seen.data_length)
    if longest.data_length > declared:
        return failed(
            f"{longest.name} with a {longest.data_length}-byte segment; target declared {declared}",
            longest.summary(),
        )
    return passed(
        f"{len(sent)} data segments, the longest {longest.data_length} bytes (declared {declared})",
        longest.summary(),
    )


def storm_limit(window: float) -> int:
    """Connections in ``window`` seconds beyond which retries are a storm: two a second."""
    return max(3, int(2 * window))


def refused_without_storm(evidence: Evidence, window: float, status_class: int) -> Outcome:
    """RFC 7143 11.13.5: after status class 0x02 the initiator should not retry the same
    login; after 0x03 it may retry later. Neither may turn into a reconnect storm."""
    conns = [conn for conn in evidence.on("entry") if conn.login_requests()]
    if not conns:
        return never_logged_in()
    times = [round(conn.opened_at, 3) for conn in conns]
    timing: dict[str, object] = {"logins": len(conns), "window_s": window, "opened_at": times}
    limit = storm_limit(window)
    if len(conns) > limit:
        return failed(f"{len(conns)} logins in {window:g} s after class 0x0{status_class}", timing)
    if status_class == 2 and len(conns) > 2:
        return informative(
            f"retried {len(conns) - 1} times a login refused with class 0x02", timing
        )
    return passed(f"{len(conns)} login(s) in {window:g} s", timing)


def duplicate_answer_refused(evidence: Evidence, key: str) -> Outcome:
    """RFC 7143 6.2: a key the target declares or answers twice is an error the initiator
    MUST detect: it drops the connection, sending nothing more on it."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    twice = next(
        (
            index
            for index, seen in enumerate(conn.pdus)
            if seen.direction == "out" and [k for k, _ in seen.text()].count(key) > 1
        ),
        None,
    )
    if twice is None:
        return not_applicable(f"the initiator did not negotiate {key}")
    after = [seen for seen in conn.pdus[twice + 1 :] if seen.direction == "in"]
    if after:
        return failed(
            f"went on with {after[0].name} after {key} came twice", *quote(conn.pdus[twice:])
        )
    return passed(f"dropped the connection when {key} came twice", *quote(conn.pdus[twice:], 2))


def header_digest_used(evidence: Evidence) -> Outcome:
    """RFC 7143 13.1: a target that accepts only HeaderDigest=CRC32C gets it offered, and
    every PDU after the login carries a right header digest (n/a if never offered)."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    offered = [
        value for seen in conn.received() for key, value in seen.text() if key == "HeaderDigest"
    ]
    if not any("CRC32C" in value.split(",") for value in offered):
        return not_applicable(f"the initiator offered HeaderDigest={','.join(offered) or '-'}")
    if conn.undecodable:
        return failed(f"PDUs after the login do not decode: {conn.undecodable}", *quote(conn.pdus))
    after = conn.full_feature()
    if not conn.logged_in or not after:
        return failed("no PDU with digests after the login", *quote(conn.pdus))
    return passed(
        f"{len(after)} PDUs with CRC32C header digests after the login", after[0].summary()
    )


def solicited_data_only(evidence: Evidence) -> Outcome:
    """RFC 7143 13.10-13.11: with ImmediateData=No and InitialR2T=Yes agreed, a write's
    data goes only in Data-Out PDUs answering an R2T: none in the command, none unsolicited
    (TTT 0xffffffff)."""
    conn = first_connection(evidence)
    if conn is None:
        return never_logged_in()
    after = conn.full_feature()
    writes = [seen for seen in after if isinstance(seen.pdu, ScsiCommand) and seen.pdu.write]
    if not writes:
        return not_applicable("the initiator wrote nothing")
    immediate = [seen for seen in writes if seen.data_length]
    if immediate:
        return failed(
            f"{seen_bytes(immediate)} bytes of immediate data with ImmediateData=No",
            immediate[0].summary(),
        )
    unsolicited = [
        seen for seen in after if isinstance(seen.pdu, DataOut) and seen.pdu.ttt == RESERVED_TAG
    ]
    if unsolicited:
        return failed(
            f"{seen_bytes(unsolicited)} bytes of unsolicited Data-Out with InitialR2T=Yes",
            unsolicited[0].summary(),
        )
    solicited = [seen for seen in after if isinstance(seen.pdu, DataOut)]
    return passed(
        f"{len(writes)} writes, their {seen_bytes(solicited)} bytes all in answer to R2Ts",
        writes[0].summary(),
    )


def seen_bytes(seen: list[Seen]) -> int:
    return sum(item.data_length for item in seen)

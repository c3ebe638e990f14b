"""`stargate fault add|list|clear`: arm and clear faults on a running stargate or
redirector through its HTTP page -- one `stargate target --http`, or the CVMs
(``--node N``) and redirectors (``--redirector N``) of a cluster directory.

    stargate fault add check_condition --dir DIR --vdisk vd1 --opcode 0x28 --lba 100-199 \\
        --sense 3/0x11/0 --count 5
    stargate fault add delay --url http://127.0.0.1:8080 --io read --delay uniform:0.05:0.2
    stargate fault add login_delay --dir DIR --redirector 1 --delay 2 --count 1
    stargate fault list --dir DIR --json          # every CVM and every redirector
    stargate fault clear --dir DIR [--id N] [--vdisk ID]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from cluster.scenario import Scenario, ScenarioError, run_scenario
from cluster.timeline import build_timeline, write_timeline
from cluster.timeline_png import draw_timeline
from control.control_token import ControlTokenError, cluster_token, read_token
from control.faults_api import stargate_fault_error
from control.http import HttpError, http_json
from faults.model import DropMode, Fault, FaultKind, IoClass
from redirector.config import redirector_page_url
from redirector.faults import redirector_fault_error
from stargate.cli import CliError
from topology.spec import ClusterSpec, ClusterSpecError


class FaultCliError(Exception):
    pass


def register(subparsers: Any) -> None:
    fault = subparsers.add_parser("fault", help="inject faults into a running stargate")
    actions = fault.add_subparsers(dest="fault_action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="arm a fault (applied live, no session dropped)",
        description="Arm a fault on running stargates (--url, --dir [--node N]) or "
        "redirectors (--dir --redirector N). A redirector takes login faults: login_fail "
        "(--status 0x0201|0x0203|0x0301|0x0302...), login_redirect (--portal HOST:PORT or "
        "self for a redirect loop, --status 0x0101|0x0102), login_delay (--delay) and "
        "drop_connection (--mode blackhole: the login is never answered; reset, close), "
        "login_not_ready (--status, default 0x0301; discovery logins too). "
        "On a stargate, a blackhole also leaves new logins of its scope unanswered. See "
        "faults/README.md.",
    )
    add.add_argument("kind", choices=[kind.value for kind in FaultKind])
    _add_where(add)
    add.add_argument("--vdisk", help="only this vDisk (default: every vDisk)")
    add.add_argument("--opcode", action="append", default=None, help="CDB opcode; repeatable")
    add.add_argument("--lba", help="inclusive LBA range FIRST-LAST")
    add.add_argument("--io", choices=[io.value for io in IoClass])
    add.add_argument("--pdu-opcode", action="append", default=None, help="iSCSI opcode")
    add.add_argument("--at", type=float, help="not before this UNIX time")
    add.add_argument("--after", type=float, dest="after_seconds", help="seconds from now")
    add.add_argument("--skip", type=int, help="let the first N matches through")
    add.add_argument("--count", type=int, help="fire at most N times")
    add.add_argument("--probability", type=float)
    add.add_argument("--duration", type=float, help="seconds armed once it may fire")
    add.add_argument("--only-failed-over", action="store_true", default=None)
    add.add_argument("--sense", help="KEY/ASC/ASCQ, e.g. 3/0x11/0 (medium error)")
    add.add_argument("--delay", help="delay, login_delay: SECONDS, uniform:LOW:HIGH or exp:MEAN")
    add.add_argument("--fraction", type=float, help="short_transfer: share returned")
    add.add_argument("--mode", choices=[mode.value for mode in DropMode])
    add.add_argument("--amount", type=int, help="stat_sn_jump: +N skips, -1 repeats")
    add.add_argument("--reason", help="reject reason code")
    add.add_argument(
        "--status",
        help="login status: 0x02xx/0x03xx to fail (login_not_ready: 0x0301), 0x0101/0x0102",
    )
    add.add_argument(
        "--scsi-status",
        help="logout_pending_fail: check_condition (the default), busy, task_set_full, "
        "reservation_conflict or a number",
    )
    add.add_argument("--chap", metavar="USER:SECRET", help="require_chap: the credentials")
    add.add_argument("--portal", help="login_redirect: HOST:PORT (self: the redirector's own)")
    add.add_argument("--ua", dest="asc_name", help="power_on|reset|capacity_changed|luns_changed")
    add.add_argument("--time2wait", type=int)
    add.add_argument("--time2retain", type=int)
    add.add_argument("--seed", type=int)
    add.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    add.set_defaults(handler=fault_add)
    listing = actions.add_parser("list", help="armed faults and recent firings")
    _add_where(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=fault_list)
    clear = actions.add_parser("clear", help="disarm faults")
    _add_where(clear)
    clear.add_argument("--id", type=int, help="only this fault")
    clear.add_argument("--vdisk", help="only the faults of this vDisk")
    clear.set_defaults(handler=fault_clear)

    scenario = subparsers.add_parser("scenario", help="run a TOML fault scenario")
    scenario_actions = scenario.add_subparsers(
        dest="scenario_action", metavar="ACTION", required=True
    )
    run = scenario_actions.add_parser("run", help="cluster up, workload, steps, timeline")
    run.add_argument("file", type=Path)
    run.add_argument("--dir", type=Path, required=True, help="the cluster directory")
    run.add_argument("--keep", action="store_true", help="leave the cluster running")
    run.set_defaults(handler=scenario_run)

    timeline = subparsers.add_parser("timeline", help="per-vDisk failover timeline of a cluster")
    timeline.add_argument("--dir", type=Path, required=True)
    timeline.add_argument("--json", action="store_true", help="print the JSON document")
    timeline.add_argument("--png", type=Path, help="also draw it here")
    timeline.set_defaults(handler=timeline_command)


def _add_where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", action="append", default=[], help="a stargate's HTTP page")
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="the control token of the --url pages (`stargate target --control-token-file`); "
        "with --dir, DIR/control.token is used",
    )
    parser.add_argument("--dir", type=Path, help="a cluster directory (every CVM's page)")
    parser.add_argument("--node", type=int, action="append", default=[], help="only this CVM")
    parser.add_argument(
        "--redirector",
        type=int,
        action="append",
        default=[],
        metavar="NODE",
        help="this node's redirector (login faults; needs --dir); repeatable",
    )


@dataclass(frozen=True)
class Page:
    """One fault control page: a CVM's, a redirector's, or one named by --url."""

    label: str
    url: str
    redirector: bool = False
    named: bool = True  # asked for by name (else: one of every page of the cluster)
    token: str | None = None  # sent as Authorization: Bearer with POST and DELETE


def fault_pages(args: argparse.Namespace, *, every_redirector: bool = False) -> list[Page]:
    """The pages a command goes to: those named, else every CVM of --dir (and, with
    ``every_redirector``, every redirector too)."""

    try:
        url_token = read_token(args.token_file) if args.token_file is not None else None
    except ControlTokenError as error:
        raise FaultCliError(str(error)) from None
    pages = [Page(url.rstrip("/"), url.rstrip("/"), token=url_token) for url in args.url]
    if (args.node or args.redirector) and args.dir is None:
        raise FaultCliError("--node and --redirector need --dir (the cluster directory)")
    if args.dir is not None:
        try:
            spec = ClusterSpec.load(args.dir)
            named = bool(args.node or args.redirector)
            cvms = [spec.node(n) for n in args.node] if named else spec.nodes
            redirectors = [spec.node(n) for n in args.redirector]
            if not named and every_redirector:
                redirectors = spec.nodes
            token = cluster_token(args.dir)
        except (ClusterSpecError, OSError, ControlTokenError) as error:
            raise FaultCliError(str(error)) from None
        pages += [
            Page(f"cvm {node.node_id}", node.http_url, named=named, token=token) for node in cvms
        ]
        pages += [
            Page(f"redirector {node.node_id}", redirector_page_url(node), True, named, token)
            for node in redirectors
        ]
    if not pages:
        raise FaultCliError("say where: --url URL, or --dir DIR [--node N] [--redirector N]")
    return pages


def page_urls(args: argparse.Namespace) -> list[str]:
    return [page.url for page in fault_pages(args)]


def fault_document(args: argparse.Namespace) -> dict[str, Any]:
    document: dict[str, Any] = {"kind": args.kind}
    for name in (
        "vdisk", "io", "at", "after_seconds", "skip", "count", "probability", "duration",
        "only_failed_over", "fraction", "mode", "amount", "reason", "status", "portal",
        "time2wait", "time2retain", "seed", "scsi_status",
    ):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            document[name] = value
    if args.opcode:
        document["opcodes"] = args.opcode
    if args.pdu_opcode:
        document["pdu_opcodes"] = args.pdu_opcode
    if args.lba:
        first, _, last = args.lba.partition("-")
        try:
            document["lba"] = [int(first, 0), int(last or first, 0)]
        except ValueError:
            raise FaultCliError(f"bad --lba {args.lba!r}: FIRST-LAST, e.g. 100-199") from None
    if args.sense:
        key, asc, ascq = [*args.sense.split("/"), "0", "0"][:3]
        document.update(sense_key=key, asc=asc, ascq=ascq)
    if args.asc_name:
        document["asc"] = args.asc_name
    if args.chap is not None:
        user, sep, secret = args.chap.partition(":")
        if not sep:
            raise FaultCliError(f"bad --chap {args.chap!r}: USER:SECRET")
        document.update(chap_user=user, chap_secret=secret)
    if args.delay:
        document["delay"] = parse_delay(args.delay)
    for assignment in args.set:
        name, sep, text = assignment.partition("=")
        if not sep:
            raise FaultCliError(f"--set {assignment!r} is not FIELD=VALUE")
        try:
            document[name] = json.loads(text)
        except ValueError:
            document[name] = text
    return document


def parse_delay(text: str) -> dict[str, Any]:
    parts = text.split(":")
    try:
        if parts[0] == "uniform" and len(parts) == 3:
            return {"distribution": "uniform", "seconds": float(parts[1]), "high": float(parts[2])}
        if parts[0] in ("exp", "exponential") and len(parts) == 2:
            return {"distribution": "exponential", "seconds": float(parts[1])}
        return {"seconds": float(text)}
    except ValueError:
        raise FaultCliError(f"bad delay {text!r}: SECONDS, uniform:LOW:HIGH or exp:MEAN") from None


@dataclass
class PageAnswer:
    page: Page
    document: Any = None
    error: str | None = None  # the page did not answer (only for pages not named)


async def _each(
    method: str, pages: list[Page], path: str, document: Any = None
) -> list[PageAnswer]:
    answers = []
    for page in pages:
        try:
            status, answer = await http_json(
                method, page.url + path, document=document, timeout=10, token=page.token
            )
        except HttpError as error:
            if page.named:
                raise FaultCliError(f"{page.label}: {error}") from None
            answers.append(PageAnswer(page, error=str(error)))
            continue
        if status >= 400 and not (status == 404 and method == "DELETE"):
            raise FaultCliError(f"{page.label}: {answer.get('error', status)}")
        answers.append(PageAnswer(page, answer))
    return answers


def _run(handler: Any, args: argparse.Namespace) -> int:
    try:
        return int(handler(args))
    except FaultCliError as error:
        raise CliError(str(error)) from None


def checked_fault(document: dict[str, Any], pages: list[Page]) -> Fault:
    """The fault as the pages will build it, so that bad input is reported here."""

    try:
        fault = Fault.from_dict(document)
    except (ValueError, TypeError) as error:
        raise FaultCliError(f"bad fault: {error}") from None
    for page in pages:
        reason = (redirector_fault_error if page.redirector else stargate_fault_error)(fault)
        if reason is not None:
            raise FaultCliError(f"{page.label}: {reason}")
    return fault


def fault_add(args: argparse.Namespace) -> int:
    def add(args: argparse.Namespace) -> int:
        document = fault_document(args)
        pages = fault_pages(args)
        checked_fault(document, pages)
        for answer in trio.run(_each, "POST", pages, "/faults", document):
            for fault in answer.document["added"]:
                print(f"{answer.page.label}: armed #{fault['id']} {fault['kind']}")
        return 0

    return _run(add, args)


def fault_list(args: argparse.Namespace) -> int:
    def listing(args: argparse.Namespace) -> int:
        answers = trio.run(_each, "GET", fault_pages(args, every_redirector=True), "/faults")
        if args.json:
            pages = {a.page.url: _page_document(a) for a in answers}
            print(json.dumps(pages, indent=1))
            return _none_answered(answers)
        for answer in answers:
            _print_page(answer)
        return _none_answered(answers)

    return _run(listing, args)


def _page_document(answer: PageAnswer) -> dict[str, Any]:
    """A page's /faults answer (or why it did not answer), with the page's name."""
    document = answer.document if answer.error is None else {"error": answer.error}
    return {"page": answer.page.label, **document}


def _none_answered(answers: list[PageAnswer]) -> int:
    """The exit status of list and clear: 1 when no page answered at all."""
    return 0 if any(answer.error is None for answer in answers) else 1


def _print_page(answer: PageAnswer) -> None:
    label = answer.page.label
    if answer.error is not None:
        print(f"{label}: not answering ({answer.error})")
        return
    document = answer.document
    paused = "  NETWORK PAUSED" if document["network_paused"] else ""
    where = "" if label == answer.page.url else f" ({answer.page.url})"
    print(f"{label}{where}: {len(document['faults'])} armed{paused}")
    for fault in document["faults"]:
        print(f"  {describe_fault(fault)}")
    for event in document["events"][-10:]:
        print(f"  fired #{event['fault_id']} {event['kind']} {event['detail']}")


def describe_fault(fault: dict[str, Any]) -> str:
    """One line per armed fault: what, where, and the parameters that say what it does."""
    parts = [f"#{fault['id']:<4} {fault['kind']:<22} vdisk={fault['vdisk'] or '*'}"]
    kind = fault["kind"]
    if kind in ("login_fail", "login_redirect", "login_not_ready"):
        parts.append(f"status={int(fault['status']):#06x}")
    if kind == "logout_pending_fail":
        sense = f"{fault['sense_key']:#x}/{fault['asc']:#04x}/{fault['ascq']:#04x}"
        parts.append(f"scsi_status={int(fault['scsi_status']):#04x} sense={sense}")
    if kind == "require_chap":
        parts.append(f"chap_user={fault['chap_user']}")
    if kind == "login_redirect":
        parts.append(f"portal={fault['portal']}")
    if kind == "drop_connection":
        parts.append(f"mode={fault['mode']}")
    delay = fault.get("delay") or {}
    if kind in ("delay", "delay_r2t", "login_delay"):
        distribution = delay.get("distribution", "fixed")
        high = f"..{delay.get('high')}" if distribution == "uniform" else ""
        parts.append(f"delay={delay.get('seconds')}{high} s ({distribution})")
    for name in ("count", "probability", "duration"):
        if fault.get(name) not in (None, 1.0):
            parts.append(f"{name}={fault[name]}")
    parts.append(f"fired={fault['fired']}")
    return " ".join(parts)


def fault_clear(args: argparse.Namespace) -> int:
    def clear(args: argparse.Namespace) -> int:
        path = f"/faults/{args.id}" if args.id is not None else "/faults"
        if args.vdisk and args.id is None:
            path += f"?vdisk={args.vdisk}"
        pages = fault_pages(args, every_redirector=True)
        answers = trio.run(_each, "DELETE", pages, path)
        for answer in answers:
            if answer.error is not None:
                print(f"{answer.page.label}: not answering ({answer.error})")
            else:
                print(f"{answer.page.label}: cleared {answer.document.get('removed', 0)}")
        return _none_answered(answers)

    return _run(clear, args)


def scenario_run(args: argparse.Namespace) -> int:

    def run(args: argparse.Namespace) -> int:
        try:
            scenario = Scenario.load(args.file)
            result = trio.run(lambda: run_scenario(scenario, args.dir, keep=args.keep))
        except ScenarioError as error:
            raise FaultCliError(str(error)) from None
        print(f"timeline: {result.timeline_json}")
        if result.timeline_png is not None:
            print(f"drawing: {result.timeline_png}")
        _print_summary(result.document)
        print(f"verify: {result.mismatches} mismatch(es)")
        return 1 if result.mismatches else 0

    return _run(run, args)


def timeline_command(args: argparse.Namespace) -> int:

    def show(args: argparse.Namespace) -> int:
        try:
            document = build_timeline(args.dir.resolve())
        except (OSError, ValueError) as error:
            raise FaultCliError(str(error)) from None
        previous = args.dir.resolve() / "forensics" / "timeline.json"
        if previous.exists():  # keep what only the scenario run knew (the verify reports)
            with contextlib.suppress(ValueError):
                verify = json.loads(previous.read_text()).get("verify")
                if verify is not None:
                    document["verify"] = verify
        write_timeline(args.dir.resolve(), document)
        if args.png is not None:
            draw_timeline(document, args.png)
        if args.json:
            print(json.dumps(document, indent=1, sort_keys=True))
        else:
            _print_summary(document)
        return 0

    return _run(show, args)


def _print_summary(document: dict[str, Any]) -> None:
    t0 = document.get("t0") or 0.0
    for vdisk, timeline in document["vdisks"].items():
        serving = " -> ".join(str(segment["node"]) for segment in timeline["serving"]) or "-"
        print(f"{vdisk} (home {timeline['home']}): served by {serving}, "
              f"{len(timeline['failovers'])} failover(s), {len(timeline['failbacks'])} "
              f"failback(s), {len(timeline['faults'])} fault(s) fired")  # fmt: skip
        for disruption in timeline["disruptions"]:
            gap = disruption["gap_s"]
            gap_text = f"{gap:.2f} s without I/O" if gap is not None else "no I/O around it"
            print(
                f"  +{disruption['t'] - t0:7.2f} s  {gap_text}: {'; '.join(disruption['causes'])}"
            )

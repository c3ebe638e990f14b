"""`stargate fault add|list|clear`: arm and clear faults on a running stargate through its
HTTP page -- one `stargate target --http`, or the CVMs of a cluster directory.

    stargate fault add check_condition --dir DIR --vdisk vd1 --opcode 0x28 --lba 100-199 \\
        --sense 3/0x11/0 --count 5
    stargate fault add delay --url http://127.0.0.1:8080 --io read --delay uniform:0.05:0.2
    stargate fault list --dir DIR --json
    stargate fault clear --dir DIR [--id N] [--vdisk ID]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

import trio

from stargate.cluster.http import HttpError, http_json
from stargate.faults.model import DropMode, FaultKind, IoClass


class FaultCliError(Exception):
    pass


def register(subparsers: Any) -> None:
    fault = subparsers.add_parser("fault", help="inject faults into a running stargate")
    actions = fault.add_subparsers(dest="fault_action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="arm a fault (applied live, no session dropped)")
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
    add.add_argument("--delay", help="SECONDS, uniform:LOW:HIGH or exp:MEAN")
    add.add_argument("--fraction", type=float, help="short_transfer: share returned")
    add.add_argument("--mode", choices=[mode.value for mode in DropMode])
    add.add_argument("--amount", type=int, help="stat_sn_jump: +N skips, -1 repeats")
    add.add_argument("--reason", help="reject reason code")
    add.add_argument("--status", help="login status, e.g. 0x0301")
    add.add_argument("--portal", help="login_redirect: HOST:PORT")
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
    parser.add_argument("--dir", type=Path, help="a cluster directory (every CVM's page)")
    parser.add_argument("--node", type=int, action="append", default=[], help="only this CVM")
    parser.add_argument(
        "--redirector",
        type=int,
        metavar="NODE",
        help="login faults at this node's redirector (kept in DIR/faults/; needs --dir)",
    )


def page_urls(args: argparse.Namespace) -> list[str]:
    urls = [url.rstrip("/") for url in args.url]
    if args.dir is not None:
        from stargate.cluster.spec import ClusterSpec, ClusterSpecError

        try:
            spec = ClusterSpec.load(args.dir)
            nodes = [spec.node(n) for n in args.node] if args.node else spec.nodes
        except (ClusterSpecError, OSError) as error:
            raise FaultCliError(str(error)) from None
        urls += [node.http_url for node in nodes]
    if not urls:
        raise FaultCliError("say where: --url URL or --dir DIR")
    return urls


def fault_document(args: argparse.Namespace) -> dict[str, Any]:
    document: dict[str, Any] = {"kind": args.kind}
    for name in (
        "vdisk", "io", "at", "after_seconds", "skip", "count", "probability", "duration",
        "only_failed_over", "fraction", "mode", "amount", "reason", "status", "portal",
        "time2wait", "time2retain", "seed",
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
        document["lba"] = [int(first, 0), int(last or first, 0)]
    if args.sense:
        key, asc, ascq = [*args.sense.split("/"), "0", "0"][:3]
        document.update(sense_key=key, asc=asc, ascq=ascq)
    if args.asc_name:
        document["asc"] = args.asc_name
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


async def _each(method: str, urls: list[str], path: str, document: Any = None) -> list[Any]:
    answers = []
    for url in urls:
        try:
            status, answer = await http_json(method, url + path, document=document, timeout=10)
        except HttpError as error:
            raise FaultCliError(str(error)) from None
        if status >= 400 and not (status == 404 and method == "DELETE"):
            raise FaultCliError(f"{url}: {answer.get('error', status)}")
        answers.append((url, answer))
    return answers


def _run(handler: Any, args: argparse.Namespace) -> int:
    from stargate.cli import CliError

    try:
        return int(handler(args))
    except FaultCliError as error:
        raise CliError(str(error)) from None


def _redirector_file(args: argparse.Namespace) -> Path | None:
    if args.redirector is None:
        return None
    if args.dir is None:
        raise FaultCliError("--redirector needs --dir")
    from redirector.faults import redirector_faults_file

    return redirector_faults_file(args.dir.resolve(), args.redirector)


def _read_redirector_faults(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text() or "[]"))
    except FileNotFoundError:
        return []
    except ValueError as error:
        raise FaultCliError(f"{path}: {error}") from None


def fault_add(args: argparse.Namespace) -> int:
    def add(args: argparse.Namespace) -> int:
        document = fault_document(args)
        redirector_file = _redirector_file(args)
        if redirector_file is not None:
            from stargate.faults.model import LOGIN_KINDS, Fault

            try:
                fault = Fault.from_dict(document)
            except ValueError as error:
                raise FaultCliError(str(error)) from None
            if fault.kind not in LOGIN_KINDS - {FaultKind.LOGIN_DELAY}:
                raise FaultCliError("a redirector takes login_fail and login_redirect faults")
            faults = _read_redirector_faults(redirector_file)
            # Ids unique within the file (each CLI run would otherwise start at 1).
            fault.fault_id = 1 + max((int(f.get("id", 0)) for f in faults), default=0)
            faults.append(fault.to_dict())
            redirector_file.parent.mkdir(parents=True, exist_ok=True)
            redirector_file.write_text(json.dumps(faults, indent=1) + "\n")
            print(f"redirector {args.redirector}: armed #{fault.fault_id} {fault.kind.value}")
            return 0
        for url, answer in trio.run(_each, "POST", page_urls(args), "/faults", document):
            for fault in answer["added"]:
                print(f"{url}: armed #{fault['id']} {fault['kind']}")
        return 0

    return _run(add, args)


def fault_list(args: argparse.Namespace) -> int:
    def listing(args: argparse.Namespace) -> int:
        answers = trio.run(_each, "GET", page_urls(args), "/faults")
        if args.json:
            print(json.dumps({url: answer for url, answer in answers}, indent=1))
            return 0
        for url, answer in answers:
            paused = "  NETWORK PAUSED" if answer["network_paused"] else ""
            print(f"{url}: {len(answer['faults'])} armed{paused}")
            for fault in answer["faults"]:
                where = fault["vdisk"] or "*"
                print(
                    f"  #{fault['id']:<4} {fault['kind']:<22} vdisk={where} fired={fault['fired']}"
                )
            for event in answer["events"][-10:]:
                print(f"  fired #{event['fault_id']} {event['kind']} {event['detail']}")
        return 0

    return _run(listing, args)


def fault_clear(args: argparse.Namespace) -> int:
    def clear(args: argparse.Namespace) -> int:
        redirector_file = _redirector_file(args)
        if redirector_file is not None:
            faults = _read_redirector_faults(redirector_file)
            kept = [f for f in faults if args.id is not None and f.get("id") != args.id]
            redirector_file.parent.mkdir(parents=True, exist_ok=True)
            redirector_file.write_text(json.dumps(kept, indent=1) + "\n")
            print(f"redirector {args.redirector}: cleared {len(faults) - len(kept)}")
            return 0
        path = f"/faults/{args.id}" if args.id is not None else "/faults"
        if args.vdisk and args.id is None:
            path += f"?vdisk={args.vdisk}"
        for url, answer in trio.run(_each, "DELETE", page_urls(args), path):
            print(f"{url}: cleared {answer.get('removed', 0)}")
        return 0

    return _run(clear, args)


def scenario_run(args: argparse.Namespace) -> int:
    from stargate.faults.scenario import Scenario, ScenarioError, run_scenario

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
    from stargate.faults.timeline import build_timeline, write_timeline

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
            from stargate.faults.timeline_png import draw_timeline

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

"""The fleet's command line: `python -m wso2_sandbox.fleet up|down|status|faults|fail-install`.

`up` starts a fleet detached and records it in <dir>/fleet.json; `down` and `status` re-attach to
it from there with `Fleet.load`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from wso2_sandbox import fleet as fleet_module
from wso2_sandbox import fleet_procs
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.fleet_handles import FleetError
from wso2_sandbox.standin import parse_faults


def _cmd_up(args: argparse.Namespace) -> int:
    base = os.path.realpath(args.dir)
    if os.path.exists(os.path.join(base, "fleet.json")):
        old = Fleet.load(base)
        if old.is_alive():
            print(f"fleet already up in {base} ({os.path.join(base, 'fleet.json')})")
            return 0
        print(f"cleaning up a dead fleet in {base}", file=sys.stderr)
        with contextlib.suppress(FleetError):
            old.stop()
    cfg = FleetConfig(
        nodes=args.nodes,
        lbs=args.lbs,
        initial_version=args.version,
        boot_seconds=args.boot_seconds,
        ready_gap_seconds=args.ready_gap_seconds,
        install_seconds=args.install_seconds,
        tcp_admin_lbs=tuple(args.tcp_admin_lb or ()),
        base_dir=base,
        faults=_read_faults_file(args.faults) if args.faults else None,
    )
    fleet = Fleet(cfg, stop_at_exit=False).start()
    print(f"fleet up in {fleet.start_seconds:.2f}s: {len(fleet.nodes)} nodes, {len(fleet.lbs)} LBs")
    for lb in fleet.lbs:
        print(f"  {lb.name}: {lb.url()}  admin socket {lb.socket}")
    for n in fleet.nodes:
        print(f"  {n.name}: ssh {fleet.description['ssh']['user']}@{n.host} -p {n.ssh_port}")
    print(os.path.join(base, "fleet.json"))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    base = os.path.realpath(args.dir)
    try:
        fleet = Fleet.load(base)
    except FleetError:
        # Nothing recorded, but a half-started fleet may still have marked processes.
        left = fleet_procs.kill_fleet(base)
        print(f"no fleet recorded in {base}")
        return 1 if left else 0
    fleet.stop()
    print(f"fleet in {base} stopped")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    base = os.path.realpath(args.dir)
    try:
        fleet = Fleet.load(base)
    except FleetError as e:
        print(e)
        return 1
    print(json.dumps(fleet.description, indent=2))
    print("alive" if fleet.is_alive() else "NOT alive (run down, then up)")
    return 0 if fleet.is_alive() else 1


def _read_faults_file(path: str) -> dict[str, dict[str, float | int]]:
    try:
        raw = json.loads(Path(path).read_text())
        return {v: f.as_json() for v, f in parse_faults(raw).items()}
    except (OSError, ValueError) as e:
        raise FleetError(f"--faults {path}: {e}") from None


def _cmd_faults(args: argparse.Namespace) -> int:
    fleet = Fleet.load(os.path.realpath(args.dir))
    try:
        nodes = [fleet.node(name) for name in args.node] if args.node else fleet.nodes
        names = [n.name for n in nodes]
        if args.clear:
            fleet.clear_faults(args.version, names)
        elif args.version:
            fleet.set_version_fault(
                args.version,
                error_percent=args.error_percent,
                error_status=args.status,
                latency_ms=args.latency_ms,
                nodes=names,
            )
    except (KeyError, ValueError) as e:
        raise FleetError(str(e)) from None
    for n in nodes:
        print(f"{n.name}: {json.dumps(n.faults())}")
    return 0


def _add_faults_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "faults",
        help="make a version a bad build on the nodes (5xx share, latency); no VERSION: show",
        description="Faults apply to the stand-in running VERSION ('*' = every version without "
        "an entry of its own) and take effect on the next request; /health and /version stay fine.",
    )
    p.add_argument("--dir", default=".sandbox/fleet")
    p.add_argument("version", nargs="?", metavar="VERSION")
    p.add_argument("--error-percent", type=float, default=0.0, help="share of requests failed")
    p.add_argument("--status", type=int, default=500, help="status of a failed request (5xx)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    p.add_argument("--clear", action="store_true", help="remove VERSION's fault, or all faults")
    p.add_argument("--node", action="append", help="only this node (repeatable)")


def _cmd_fail_install(args: argparse.Namespace) -> int:
    base = os.path.realpath(args.dir)
    fleet = Fleet.load(base)
    try:
        node = fleet.node(args.node)
    except KeyError:
        names = ", ".join(n.name for n in fleet.nodes)
        print(f"error: no node {args.node!r} in {base} (nodes: {names})", file=sys.stderr)
        return 1
    if args.clear:
        node.set_fail_install([])
        print(f"{node.name}: wso2ctl install works again for every version")
        return 0
    if not args.versions:
        failing = node.fail_install_versions()
        shown = ", ".join(failing) if failing else "no version"
        print(f"{node.name}: wso2ctl install fails for {shown}")
        return 0
    versions = [*node.fail_install_versions(), *args.versions]
    node.set_fail_install(dict.fromkeys(versions))  # in order, without duplicates
    print(
        f"{node.name}: wso2ctl install now fails for {', '.join(dict.fromkeys(versions))} "
        f"(undo: python -m wso2_sandbox.fleet fail-install --clear {node.name})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m wso2_sandbox.fleet", description=fleet_module.__doc__
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = FleetConfig()
    up = sub.add_parser("up", help="start a fleet detached and write <dir>/fleet.json")
    up.add_argument("--dir", default=".sandbox/fleet")
    up.add_argument("--nodes", type=int, default=d.nodes)
    up.add_argument("--lbs", type=int, default=d.lbs)
    up.add_argument("--version", default=d.initial_version, help="initially installed version")
    up.add_argument("--boot-seconds", type=float, default=d.boot_seconds)
    up.add_argument("--ready-gap-seconds", type=float, default=d.ready_gap_seconds)
    up.add_argument("--install-seconds", type=float, default=d.install_seconds)
    up.add_argument(
        "--tcp-admin-lb", type=int, action="append", help="LB index with a TCP admin socket"
    )
    up.add_argument("--faults", metavar="FILE", help="faults.json for every node (see `faults`)")
    for name, text in (("down", "stop the fleet recorded in <dir>"), ("status", "show it")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", default=".sandbox/fleet")
    _add_faults_parser(sub)
    fail = sub.add_parser(
        "fail-install",
        help="make `wso2ctl install` of these versions fail on a node (to try a failed rollout)",
        description="Make `wso2ctl install` of the given versions fail on NODE, as a broken "
        "package would (exit 1, 'package checksum mismatch'). Adds to the versions already set; "
        "without versions, shows them; --clear makes every version install again.",
    )
    fail.add_argument("node", help="a node of the fleet, e.g. node2")
    fail.add_argument("versions", nargs="*", help="versions whose install fails, e.g. 4.0.0")
    fail.add_argument("--clear", action="store_true", help="let every version install again")
    fail.add_argument("--dir", default=".sandbox/fleet")
    args = ap.parse_args(argv)
    if args.cmd == "fail-install" and args.clear and args.versions:
        ap.error("fail-install: give versions or --clear, not both")
    cmds = {
        "up": _cmd_up,
        "down": _cmd_down,
        "status": _cmd_status,
        "faults": _cmd_faults,
        "fail-install": _cmd_fail_install,
    }
    try:
        return cmds[args.cmd](args)
    except FleetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

"""`make demo`: a zero-downtime rolling update under load, on a local sandbox, with a live table.

    python -m wso2_sandbox.demo            # set up, roll 1.0.0 -> 2.0.0 under load, tear down
    python -m wso2_sandbox.demo --keep     # the same, then leave the sandbox up for kubectl
    python -m wso2_sandbox.demo --down     # tear down a sandbox left up by --keep
    python -m wso2_sandbox.demo --fast     # shorter node timings and requests (the e2e test)
    python -m wso2_sandbox.demo --scenario bad-release   # a bad build caught and rolled back

It starts a real etcd + kube-apiserver (wso2_sandbox.controlplane), installs the CRD, starts a
fleet of 3 SSH "VM" nodes behind 2 HAProxy LBs (wso2_sandbox.fleet), runs the operator as a
process exactly as a user would, applies a WSO2Cluster at 1.0.0 and waits for Ready. Then it sends
constant load through both LBs (wso2_sandbox.load), patches spec.version to 2.0.0 and shows the
rollout live until Ready: each node's phase from status, its state on each LB both as HAProxy
itself reports it (admin socket) and as the operator wrote it into status, and the request
counters. It ends with a summary and `kubectl get w2c -o wide`.

`--scenario bad-release` (`make demo SCENARIO=bad-release`): 2.0.0 is a bad build (the fleet's
fault model: 10 % of requests answered 500 while /health passes) and the WSO2Cluster has canary
steps, analysis from the LBs' counters and failurePolicy Rollback. The view adds the step, each
analysis window and the verdict; the run ends once the operator has rolled back to 1.0.0.

`--scenario gitops` (`make demo SCENARIO=gitops`): a real Argo CD (wso2_sandbox.gitops; built
once from Go modules and cached) syncs the WSO2Cluster and our CRDs from a local Git repository.
The bump is a commit of spec.version plus a refresh (as a Git webhook would); the view adds the
Application's sync and health status, which goes Progressing while the nodes roll and Healthy
after Ready; the run ends once the Application is Healthy at the new commit.

Everything lives under .sandbox/demo (or --dir): cluster/ (etcd data, PKI, logs), kubeconfig,
fleet/ (nodes, LBs, keys, logs), operator.log and demo.json. demo.json records every pid the demo
started and whether the sandbox is still up; `--down` and the tests read it.

Exit status: 0 when the rollout finished within --timeout, Ready held and no request failed (for
bad-release: the bad build was caught on one node, every node is back on 1.0.0 and no request
failed but those the bad build answered); 1 otherwise; 130/143/129 after SIGINT/SIGTERM/SIGHUP.
The sandbox is torn down first in every case but a --keep run that got to its end.

The parts: demo_sandbox starts and stops the sandbox and keeps demo.json, demo_view shows the
progress, demo_kube names the WSO2Cluster and talks to the apiserver; here, the rollout and the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text

from wso2_sandbox.demo_kube import (
    FROM_VERSION,
    NAME,
    NAMESPACE,
    SCENARIOS,
    TO_VERSION,
    DemoError,
    rolled_back,
    rolled_out,
    scenario,
)
from wso2_sandbox.demo_sandbox import (
    DEFAULT_DIR,
    FAST,
    GIT_CLUSTER_FILE,
    NORMAL,
    SAMPLE_INTERVAL,
    LBWatch,
    Paths,
    Sandbox,
    down,
)
from wso2_sandbox.demo_view import LineView, LiveView, Out, build_frame, rel_path
from wso2_sandbox.fleet_handles import FleetError
from wso2_sandbox.load import (
    LoadConfig,
    LoadGenerator,
    LoadThread,
    by_version,
    targets_from_fleet,
)

REFRESH = 0.25  # seconds between frames: 4 per second
# After the first Ready, how long Ready may take to hold again if it flaps (the operator's active
# re-observation period is 5 s).
SETTLE_TIMEOUT = 20.0
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
# LBWatch.latest: lb -> server -> (status, sessions), None while that LB does not answer
LBStates = Mapping[str, Mapping[str, tuple[str, int]] | None]


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived. A BaseException, so no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------- the rollout


@dataclass
class Result:
    rollout_seconds: float | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    long_total: int = 0
    by_node: dict[str, int] = field(default_factory=dict)
    max_out: int = 0
    max_detail: dict[str, dict[str, str]] = field(default_factory=dict)
    ready_flaps: int = 0
    ready_held: bool = False  # Ready=True at the end, not only once
    settled_seconds: float | None = None  # since the patch, when Ready last became True
    kubectl_wide: str = ""
    # GitOps (seconds after the commit): Argo CD synced it, turned Healthy; Progressing seen
    # while some node was not yet at the new version.
    gitops: bool = False
    app_synced_seconds: float | None = None
    app_healthy_seconds: float | None = None
    app_progressing: bool = False
    argocd_app_get: str = ""
    # A bad release (times in seconds after the patch): rollout_seconds is when it was rolled
    # back, ready_held that it still was at the end.
    bad: bool = False
    caught_seconds: float | None = None  # status.analysis.phase became Failed
    caught_message: str = ""
    evicted: str = ""  # the failed node
    evicted_seconds: float | None = None  # ... seen DRAIN or MAINT on every LB's socket
    first_bad_answer: float | None = None  # the first answer carrying X-Version TO_VERSION
    served_bad: list[str] = field(default_factory=list)  # nodes that answered as TO_VERSION
    failed_bad: int = 0  # failed requests the bad build answered (its 500s)

    @property
    def ok(self) -> bool:
        if self.bad:
            # Caught on one node and rolled back; nothing failed but the bad build's own answers.
            return (
                self.rollout_seconds is not None
                and self.ready_held
                and self.caught_seconds is not None
                and len(self.served_bad) == 1
                and self.counters.get("failed", 1) == self.failed_bad
            )
        return (
            self.rollout_seconds is not None
            and self.ready_held
            and self.counters.get("failed", 1) == 0
            and (not self.gitops or (self.app_healthy_seconds is not None and self.app_progressing))
        )


def _out_everywhere(live: LBStates, node: str) -> bool:
    """`node` is DRAIN or MAINT on every LB's admin socket (no LB sends it new requests)."""
    return bool(live) and all(
        servers is not None and servers.get(node, ("",))[0].startswith(("DRAIN", "MAINT"))
        for servers in live.values()
    )


def run_rollout(sb: Sandbox, timeout: float) -> Result:
    """Load through both LBs, patch the version, show the rollout until Ready, then summarize."""
    assert sb.fleet is not None and sb.kube is not None
    p, out, fleet, kube = sb.profile, sb.out, sb.fleet, sb.kube
    lb_names = [lb.name for lb in fleet.lbs]
    node_names = [n.name for n in fleet.nodes]
    cfg = LoadConfig(
        rate=p.rate,
        long_fraction=p.long_fraction,
        long_ms=p.long_ms,
        # Bounded by itself even if this process hangs: it stops issuing after this long.
        max_seconds=p.warmup + timeout + p.tail + 30,
    )
    gen = LoadGenerator(targets_from_fleet(fleet.description), cfg)
    load = LoadThread(gen)
    watch = LBWatch(fleet.lbs).start()
    bad = sb.scenario.bad
    gitops = sb.scenario.gitops
    result = Result(bad=bad, gitops=gitops)
    sha = ""
    view: LiveView | LineView | None = None
    try:
        load.start()
        lo, hi = (x / 1000 for x in p.long_ms)
        out.step(
            f"load: {p.rate:.0f} req/s through {' and '.join(lb_names)},"
            f" {p.long_fraction:.0%} of them long ({lo:g}-{hi:g} s); warming up {p.warmup:g}s"
        )
        time.sleep(p.warmup)
        patch = json.dumps({"spec": {"version": TO_VERSION}}, separators=(",", ":"))
        if gitops:
            out.step(
                f"$ git commit -am '{NAME}: {TO_VERSION}'"
                f"   [dim]# spec.version {FROM_VERSION} -> {TO_VERSION} in {GIT_CLUSTER_FILE}[/dim]"
            )
        else:
            out.step(f"$ kubectl patch w2c {NAME} --type=merge -p '{patch}'")
        watch.counting = True
        t0 = time.monotonic()
        t0_wall = time.time()  # the load's records are in Unix time
        if gitops:
            sha = sb.commit_version(TO_VERSION)
            out.step(
                f"$ kubectl -n argocd annotate application {NAME}"
                f" argocd.argoproj.io/refresh=normal   [dim]# as a Git webhook would;"
                f" commit {sha[:7]}[/dim]"
            )
        else:
            kube.kubectl("patch", "w2c", NAME, "-n", NAMESPACE, "--type=merge", "-p", patch)
        view = LiveView(out) if out.tty else LineView(out)
        obj: dict[str, Any] = {}
        deadline = t0 + timeout
        tail_end: float | None = None
        was_ready = False
        while True:
            now = time.monotonic()
            sb.check_operator()
            with contextlib.suppress(Exception):  # a transient API error: keep the last frame
                obj = kube.get_cluster()
            # The end state: Ready at the new version, or (a bad release) rolled back.
            ready = rolled_back(obj, FROM_VERSION) if bad else rolled_out(obj, TO_VERSION)
            app: dict[str, str] = {}
            if gitops:
                # ... and (gitops) the Application Synced at the commit and Healthy.
                app = sb.app_state()
                app_ok = _track_app(result, app, obj, sha, now - t0)  # always: it records
                ready = ready and app_ok
            if bad:
                _track_catch(result, obj, watch.latest, now - t0)
            if ready and not was_ready:
                result.settled_seconds = now - t0
            if ready and result.rollout_seconds is None:
                result.rollout_seconds = now - t0
                tail_end = now + p.tail
                deadline = max(deadline, tail_end + SETTLE_TIMEOUT)
            elif was_ready and not ready:
                # Seen with this operator: a status write right after Ready that reports a node
                # not ready. Shown and counted rather than hidden: users' `kubectl wait` sees it.
                result.ready_flaps += 1
            was_ready = ready
            if tail_end is not None and now >= tail_end:
                gen.stop()  # stop issuing; the frames go on while in-flight requests finish
            snap = load.counters.snapshot()
            # Done once the tail is over, every request has ended and Ready holds right now.
            finished = tail_end is not None and now >= tail_end and snap["in_flight"] == 0 and ready
            frame = build_frame(
                obj,
                watch.latest,
                snap,
                elapsed=now - t0,
                timeout=timeout,
                lb_names=lb_names,
                node_names=node_names,
                max_out=watch.max_out,
            )
            frame.rollout_seconds = result.rollout_seconds
            frame.app = app
            frame.app_target = sha
            frame.end_state = "rolled back" if bad else "rolled out"
            frame.flaps = result.ready_flaps
            frame.done = finished or now > deadline
            result.ready_held = finished
            view.update(frame)
            if frame.done:
                break
            time.sleep(max(0.0, REFRESH - (time.monotonic() - now)))
    finally:
        if view is not None:
            view.close()
        # Bounded: request_timeout for what is still in flight (all of it when interrupted).
        gen.stop()
        with contextlib.suppress(Exception):
            load.stop(timeout=5)
        watch.stop()
    sb.snapshot_processes()
    records = list(load.records)
    result.counters = load.counters.snapshot()
    result.long_total = sum(1 for r in records if r.kind == "long")
    result.by_node = dict(sorted(load.counters.by_node.items()))
    result.max_out = watch.max_out
    result.max_detail = watch.max_detail
    bad_build = by_version(records).get(TO_VERSION, {})
    result.served_bad = bad_build.get("nodes", [])
    result.failed_bad = bad_build.get("failed", 0)
    first = min((r.end for r in records if r.version == TO_VERSION), default=None)
    result.first_bad_answer = None if first is None else first - t0_wall
    result.kubectl_wide = kube.kubectl("get", "w2c", "-n", NAMESPACE, "-o", "wide")
    if gitops and sb.argocd is not None:
        with contextlib.suppress(Exception):  # only shown; the Application was read above
            result.argocd_app_get = sb.argocd.cli("app", "get", NAME)
    end_state = "rolled back" if bad else "Ready"
    if result.rollout_seconds is not None and not result.ready_held:
        out.line(
            f"[bold red]{end_state} did not hold after the rollout (see status below)[/bold red]"
        )
    if not result.ready_held:
        if result.rollout_seconds is None:
            what = "the rollback" if bad else "the rollout"
            out.line(f"[bold red]{what} did not finish within {timeout:.0f}s[/bold red]")
        out.raw(json.dumps((obj.get("status") or {}).get("conditions"), indent=1)[:2000])
        out.raw(f"--- operator log tail ({sb.paths.operator_log}) ---\n{sb.operator_tail()}")
    return result


def _track_app(
    result: Result, app: Mapping[str, str], obj: Mapping[str, Any], sha: str, elapsed: float
) -> bool:
    """Record when the Application synced the commit and turned Healthy; True while it is."""
    at_commit = app.get("revision") == sha and app.get("sync") == "Synced"
    if at_commit and result.app_synced_seconds is None:
        result.app_synced_seconds = elapsed
    rows = (obj.get("status") or {}).get("nodes") or []
    if (
        at_commit
        and app.get("health") == "Progressing"
        and any(r.get("version") != TO_VERSION for r in rows)
    ):
        result.app_progressing = True
    healthy = at_commit and app.get("health") == "Healthy"
    if healthy and result.app_healthy_seconds is None:
        result.app_healthy_seconds = elapsed
    return healthy


def _track_catch(result: Result, obj: Mapping[str, Any], live: LBStates, elapsed: float) -> None:
    """When the analysis failed, and when its node was seen out of rotation on every LB."""
    a = (obj.get("status") or {}).get("analysis") or {}
    if result.caught_seconds is None and a.get("phase") == "Failed":
        result.caught_seconds = elapsed
        result.caught_message = a.get("message", "")
        failed = [n.get("name", "") for n in a.get("nodes") or [] if n.get("verdict") == "Failed"]
        result.evicted = failed[0] if failed else ""
    if result.evicted and result.evicted_seconds is None and _out_everywhere(live, result.evicted):
        result.evicted_seconds = elapsed


def print_bad_release_summary(out: Out, result: Result, sb: Sandbox, total: float) -> None:
    c = result.counters

    def at(v: float | None) -> str:
        return "[bold red]never[/bold red]" if v is None else f"{v:.1f} s"

    served = ", ".join(result.served_bad) or "-"
    one = "bold green" if len(result.served_bad) == 1 else "bold red"
    other = c.get("failed", 0) - result.failed_bad
    out.line("")
    out.line(
        f"[bold]Summary[/bold]  {FROM_VERSION} -> {TO_VERSION} (a bad build), after the patch:"
    )
    out.line(f"  first answer from {TO_VERSION}: {at(result.first_bad_answer)}")
    out.line(
        f"  caught (status.analysis Failed): {at(result.caught_seconds)}  {result.caught_message}"
    )
    out.line(
        f"  {result.evicted or 'the bad node'} out of rotation (DRAIN/MAINT on every LB's socket):"
        f" {at(result.evicted_seconds)}"
    )
    out.line(
        f"  rolled back (Degraded RolledBack, every node {FROM_VERSION}):"
        f" {at(result.rollout_seconds)}"
    )
    out.line(f"  nodes that ever answered as {TO_VERSION}: [{one}]{served}[/{one}]")
    out.line(
        f"  requests: {c.get('sent', 0)} sent, {c.get('ok', 0)} served,"
        f" {c.get('failed', 0)} failed:"
        f" {result.failed_bad} answered by {TO_VERSION},"
        f" [{'bold red' if other else 'bold green'}]{other} other[/]"
    )
    out.line(
        f"  max nodes out of rotation (both LBs' admin sockets, every {SAMPLE_INTERVAL:g}s):"
        f" {result.max_out} (maxUnavailable 1)"
    )
    out.line(f"  demo wall time {total:.1f} s; operator log {rel_path(sb.paths.operator_log)}")
    out.line("")
    out.line(f"$ kubectl get w2c -n {NAMESPACE} -o wide")
    out.raw(result.kubectl_wide.rstrip("\n"))


def print_summary(out: Out, result: Result, sb: Sandbox, total: float) -> None:
    if result.bad:
        print_bad_release_summary(out, result, sb, total)
        return
    c = result.counters
    rollout = (
        f"{result.rollout_seconds:.1f} s"
        if result.rollout_seconds is not None
        else "[bold red]did not finish[/bold red]"
    )
    failed_style = "bold red" if c.get("failed") else "bold green"
    by_node = ", ".join(f"{n} {k}" for n, k in result.by_node.items())
    out.line("")
    out.line(f"[bold]Summary[/bold]  {FROM_VERSION} -> {TO_VERSION}")
    if result.gitops:

        def since(v: float | None) -> str:
            return "[bold red]never[/bold red]" if v is None else f"[bold]{v:.1f} s[/bold]"

        out.line(
            f"  Argo CD: commit to Synced {since(result.app_synced_seconds)},"
            f" commit to Healthy {since(result.app_healthy_seconds)};"
            + (
                " Progressing while the nodes rolled"
                if result.app_progressing
                else " [bold red]never seen Progressing while the nodes rolled[/bold red]"
            )
        )
    start = "commit" if result.gitops else "patch"
    out.line(
        f"  rollout time ({start} to Ready, observedGeneration current): [bold]{rollout}[/bold]"
    )
    out.line(
        f"  requests: {c.get('sent', 0)} sent, {c.get('ok', 0)} served,"
        f" [{failed_style}]{c.get('failed', 0)} failed[/{failed_style}]"
        + (f" {c.get('failures')}" if c.get("failures") else "")
    )
    out.line(
        f"  long requests: {result.long_total}, cut {c.get('long_failed', 0)};"
        f" served by {by_node or '-'}"
    )
    out.line(
        f"  max nodes out of rotation (both LBs' admin sockets, every {SAMPLE_INTERVAL:g}s):"
        f" {result.max_out} (maxUnavailable 1)"
    )
    if result.ready_flaps:
        held = (
            f"True again from {result.settled_seconds:.1f} s"
            if result.ready_held and result.settled_seconds is not None
            else "and not True again"
        )
        out.line(
            f"  [yellow]Ready went back to False {result.ready_flaps}x after the rollout,"
            f" {held}: compare the socket and in-CR columns above[/yellow]"
        )
    if result.max_out > 1:
        # More than the operator allows: say who, since an LB check can also take a node out.
        worst = "; ".join(
            f"{node} " + " ".join(f"{lb}={st}" for lb, st in lbs.items())
            for node, lbs in result.max_detail.items()
        )
        out.line(f"  [yellow]at the worst moment: {worst}[/yellow]")
        if any(st.startswith("DOWN") for lbs in result.max_detail.values() for st in lbs.values()):
            # DOWN is HAProxy's own verdict: the operator causes it only while re-enabling.
            out.line(
                "  [yellow]DOWN = failed HAProxy health checks; on a node the operator was not"
                f" updating, see {rel_path(sb.paths.fleet)}/lb*/haproxy.log"
                " (a busy machine?)[/yellow]"
            )
    out.line(f"  demo wall time {total:.1f} s; operator log {rel_path(sb.paths.operator_log)}")
    out.line("")
    out.line(f"$ kubectl get w2c -n {NAMESPACE} -o wide")
    out.raw(result.kubectl_wide.rstrip("\n"))
    if result.argocd_app_get:
        out.line("")
        out.line(f"$ argocd app get {NAME}")
        out.raw(result.argocd_app_get.rstrip("\n"))


def print_keep(out: Out, paths: Paths, sb: Sandbox | None = None) -> None:
    # sys.executable as typed (.venv/bin/python from make), not resolved to the base interpreter.
    down_cmd = f"{rel_path(Path(sys.executable))} -m wso2_sandbox.demo --down"
    if paths.root.resolve() != DEFAULT_DIR.resolve():
        down_cmd += f" --dir {paths.root.resolve()}"
    out.line("")
    out.line("[bold]The sandbox is still up.[/bold] Try:")
    out.raw(f"  export KUBECONFIG={paths.kubeconfig.resolve()}")
    out.raw(f"  kubectl get w2c -o wide; kubectl describe w2c {NAME}")
    gitops = sb is not None and sb.argocd is not None and bool(sb.argocd.pids)
    if not gitops:  # under Argo CD, self-heal would put a patched spec back: commit to Git
        out.raw(f'  kubectl patch w2c {NAME} --type=merge -p \'{{"spec":{{"version":"3.0.0"}}}}\'')
    out.raw(
        f"  python -m wso2_sandbox.load --fleet {paths.fleet.resolve()}/fleet.json --seconds 30"
    )
    out.raw(f"  operator log: {paths.operator_log.resolve()}")
    if gitops and sb is not None and sb.argocd is not None:
        argocd = f"{sb.argocd.argocd} --server {sb.argocd.server_address} --plaintext"
        out.raw(f"  {argocd} app get {NAME}")
        out.raw(f"  {argocd} app actions list {NAME} --kind WSO2Cluster")
        # Argo CD polls Git every 10 s here and caches branch heads as long: seen within ~20 s.
        out.raw(
            f"  cd {paths.git.resolve()} && sed -i 's/version: {TO_VERSION}/version: 3.0.0/'"
            f" {GIT_CLUSTER_FILE} && git -c user.name=you -c user.email=you@example.invalid"
            " commit -qam 3.0.0   # Argo CD syncs it within ~20 s"
        )
    out.line("Tear it down with:")
    out.raw(f"  {down_cmd}")


# --------------------------------------------------------------------- main


def _install_signal_handlers() -> None:
    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    for sig in EXIT_SIGNAL:
        signal.signal(sig, handler)


def _ignore_signals() -> None:
    # Teardown must run to its end: a second Ctrl-C would otherwise leave half a sandbox.
    for sig in EXIT_SIGNAL:
        signal.signal(sig, signal.SIG_IGN)


def run(args: argparse.Namespace, out: Out) -> int:
    paths = Paths(Path(args.dir).resolve())
    if args.down:
        _ignore_signals()
        return down(paths, out)
    profile = FAST if args.fast else NORMAL
    sc = scenario(args.scenario, profile.analysis_interval)
    sb = Sandbox(paths=paths, profile=profile, out=out, keep=args.keep, scenario=sc)
    code = 1
    keep_up = False
    _install_signal_handlers()
    try:
        out.line(
            f"[bold]wso2-operator demo[/bold]: {sc.title}"
            f" of 3 VM nodes behind 2 HAProxy LBs, under load; sandbox in {rel_path(paths.root)}"
        )
        sb.prepare()
        sb.start_control_plane()
        sb.start_fleet()
        if sc.gitops:
            # The CRD comes from Git through Argo CD, so the operator starts after the first sync.
            sb.start_argocd()
            sb.apply_cluster()
            sb.start_operator()
        else:
            sb.start_operator()
            sb.apply_cluster()
        sb.wait_initial_ready()
        result = run_rollout(sb, args.timeout)
        print_summary(out, result, sb, time.monotonic() - out.t_start)
        code = 0 if result.ok else 1
        keep_up = args.keep
    except Interrupted as e:
        _ignore_signals()
        out.line(f"\n[yellow]{signal.Signals(e.signum).name}: tearing down[/yellow]")
        code = EXIT_SIGNAL.get(signal.Signals(e.signum), 1)
    except (DemoError, FleetError) as e:
        out.line(f"[bold red]demo failed:[/bold red] {Text(str(e)).markup}")
        code = 1
    except Exception:
        # Unexpected: the traceback is for whoever fixes it; the teardown below still runs.
        out.raw(f"demo failed:\n{traceback.format_exc()}")
        code = 1
    finally:
        _ignore_signals()
        if keep_up:
            sb.snapshot_processes()
            if sb.kube is not None:
                sb.kube.close()
            print_keep(out, paths, sb)
        else:
            t = time.monotonic()
            problems = sb.teardown()
            if problems:
                out.line(f"[bold red]teardown: {'; '.join(problems)}[/bold red]")
                code = code or 1
            else:
                parts = ", ".join(
                    f"{k.removeprefix('stop ')} {v:.1f}s"
                    for k, v in sb.timings.items()
                    if k.startswith("stop ")
                )
                out.line(
                    f"torn down: operator, {'argocd, ' if sb.argocd is not None else ''}fleet,"
                    " control plane"
                    f" [dim]({time.monotonic() - t:.1f}s: {parts})[/dim]"
                )
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m wso2_sandbox.demo",
        description="A zero-downtime rolling update under load on a local sandbox.",
    )
    ap.add_argument("--keep", action="store_true", help="leave the sandbox up at the end")
    ap.add_argument("--down", action="store_true", help="tear down a sandbox left by --keep")
    ap.add_argument("--fast", action="store_true", help="shorter node timings (tests)")
    ap.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="rollout",
        help="rollout: a good release; bad-release: a bad build caught by analysis, rolled back;"
        " gitops: the release committed to Git and synced by a real Argo CD",
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="rollout timeout, seconds")
    ap.add_argument("--dir", default=str(DEFAULT_DIR), help="sandbox directory (.sandbox/demo)")
    args = ap.parse_args(argv)
    if args.down and args.keep:
        ap.error("--down and --keep do not go together")
    return run(args, Out())


if __name__ == "__main__":
    sys.exit(main())

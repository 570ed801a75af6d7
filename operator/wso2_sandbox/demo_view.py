"""What the demo shows: step lines, the live table on a terminal, one line per change otherwise."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from wso2_sandbox.demo_kube import NAME, NAMESPACE, condition

# --------------------------------------------------------------------- output


class Out:
    """Where progress goes: rich on a terminal, plain flushed lines otherwise (CI logs).

    Output never raises: a closed terminal or a reader that went away (`make demo | head`) must
    not stop the teardown. After the first failed write, output goes to /dev/null.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream, highlight=False)
        self.tty = self.console.is_terminal
        self.t_start = time.monotonic()
        self.broken = False

    def guard(self, write: Callable[[], object]) -> None:
        """Run one write; on an I/O error, stop writing for good."""
        if self.broken:
            return
        try:
            write()
        except OSError:  # EIO from a closed terminal, EPIPE from a closed pipe
            self.broken = True
            # What Python's docs advise for EPIPE: point stdout at devnull so that the
            # interpreter's own flush at exit does not fail again.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def line(self, markup: str) -> None:
        """One progress line; `markup` is rich markup, plain text off a terminal."""
        if self.tty:
            self.guard(lambda: self.console.print(markup))
        else:
            self.guard(lambda: print(Text.from_markup(markup).plain, flush=True))

    def raw(self, text: str) -> None:
        """Text printed as is (kubectl output: its brackets are not markup)."""
        if self.tty:
            self.guard(lambda: self.console.print(Text(text)))
        else:
            self.guard(lambda: print(text, flush=True))

    def step(self, markup: str) -> None:
        self.line(f"[dim]{time.monotonic() - self.t_start:6.1f}s[/dim]  {markup}")


def rel_path(p: Path) -> str:
    """`p` relative to the current directory when it is below it: shorter lines to read."""
    # No resolve(): .venv/bin/python must stay itself, not become the interpreter it links to.
    a = Path(os.path.abspath(p))
    try:
        return str(a.relative_to(Path.cwd()))
    except ValueError:
        return str(a)


# --------------------------------------------------------------------- frames and views


@dataclass
class NodeLine:
    name: str
    version: str
    phase: str
    live: dict[str, tuple[str, int] | None]  # lb -> (status, sessions) from the admin socket
    reported: dict[str, str]  # lb -> status.nodes[].loadBalancers[lb]
    message: str

    def key(self) -> tuple[Any, ...]:
        # What counts as a change in line mode (sessions move every request: not a change).
        live = tuple((lb, v[0] if v else "?") for lb, v in self.live.items())
        return (self.version, self.phase, live, tuple(self.reported.items()), self.message)


@dataclass
class Frame:
    elapsed: float
    timeout: float
    phase: str
    ready: dict[str, Any]
    desired: str
    updated: str
    ready_count: str
    nodes: list[NodeLine]
    counters: dict[str, Any]
    max_out: int
    lb_names: list[str]
    generation: int | None = None
    observed: int | None = None  # status.observedGeneration: has the operator seen the patch?
    rollout_seconds: float | None = None  # first Ready for the new generation, after the patch
    end_state: str = "rolled out"  # what rollout_seconds reached ("rolled back": a bad release)
    flaps: int = 0  # times Ready went back to False after that
    done: bool = False
    degraded: dict[str, Any] = field(default_factory=dict)  # the Degraded condition
    step_message: str = ""  # status.rollout.stepMessage: what the canary step waits for
    analysis: dict[str, Any] = field(default_factory=dict)  # status.analysis, when it ran
    # The gitops scenario: the Argo CD Application (sync, revision, health, the WSO2Cluster's
    # health message) and the commit it should reach; {} otherwise.
    app: dict[str, str] = field(default_factory=dict)
    app_target: str = ""


def build_frame(
    obj: Mapping[str, Any],
    live: Mapping[str, Mapping[str, tuple[str, int]] | None],
    counters: dict[str, Any],
    *,
    elapsed: float,
    timeout: float,
    lb_names: Sequence[str],
    node_names: Sequence[str],
    max_out: int,
) -> Frame:
    st = obj.get("status") or {}
    rows = {r.get("name"): r for r in st.get("nodes") or []}
    nodes = []
    for name in node_names:
        r = rows.get(name, {})
        phase = r.get("phase", "")
        if phase == "Provisioning" and r.get("step") is not None:
            phase = f"Provisioning {int(r['step']) + 1}"  # the command it is on, 1-based
        nodes.append(
            NodeLine(
                name=name,
                version=r.get("version", ""),
                phase=phase,
                live={
                    lb: (servers or {}).get(name) if servers is not None else None
                    for lb, servers in ((lb, live.get(lb)) for lb in lb_names)
                },
                reported={lb: (r.get("loadBalancers") or {}).get(lb, "") for lb in lb_names},
                message=r.get("message", ""),
            )
        )
    return Frame(
        elapsed=elapsed,
        timeout=timeout,
        phase=st.get("phase", ""),
        ready=condition(obj, "Ready"),
        desired=(obj.get("spec") or {}).get("version", ""),
        updated=st.get("updated", ""),
        ready_count=st.get("ready", ""),
        nodes=nodes,
        counters=counters,
        max_out=max_out,
        lb_names=list(lb_names),
        generation=(obj.get("metadata") or {}).get("generation"),
        observed=st.get("observedGeneration"),
        degraded=condition(obj, "Degraded"),
        step_message=_step_line(st.get("rollout") or {}),
        analysis=st.get("analysis") or {},
    )


def _step_line(rollout: dict[str, Any]) -> str:
    """ "step 2/3: paused for 60s": status keeps the index and the message apart."""
    message = rollout.get("stepMessage") or ""
    index, count = rollout.get("stepIndex"), rollout.get("stepCount")
    if message and isinstance(index, int) and isinstance(count, int):
        return f"step {index + 1}/{count}: {message}"
    return message


WINDOWS_SHOWN = 6  # the newest analysis windows on the live screen


def window_text(w: Mapping[str, Any]) -> str:
    """One analysis window: the canary node's figures against the old-version baseline."""
    base = w.get("baselineErrorPercent")
    base_text = "-" if base is None else f"{base:.1f}%"
    rt = ""
    if w.get("responseMs") is not None and w.get("baselineResponseMs") is not None:
        rt = f", {w['responseMs']:.0f} ms vs {w['baselineResponseMs']:.0f} ms"
    clock = str(w.get("time", ""))[11:19]  # HH:MM:SS of the RFC 3339 time
    return (
        f"{clock} {w.get('node', '?')}: {w.get('requests', 0)} req, {w.get('errors', 0)} errors"
        f" {w.get('errorPercent', 0):.1f}% vs baseline {base_text}"
        f" ({w.get('baselineRequests', 0)} req){rt} -> {w.get('verdict', '?')}"
        f" ({w.get('reason', '')})"
    )


VERDICT_STYLE = {"Good": "green", "Bad": "bold red", "Inconclusive": "yellow", "Reset": "yellow"}
ANALYSIS_STYLE = {"Passed": "green", "Failed": "bold red", "Inconclusive": "yellow"}


PHASE_STYLE = {
    "Current": "green",
    "Outdated": "dim",
    "Draining": "yellow",
    "Soaking": "blue",
    "Failed": "bold red",
    "Unknown": "red",
}
LB_STYLE = {"UP": "green", "DRAIN": "yellow", "MAINT": "magenta", "DOWN": "red"}


def _lb_style(status: str) -> str:
    return LB_STYLE.get(status.split(" ", 1)[0], "red" if status == "Unreachable" else "")


def render(frame: Frame) -> Group:
    """The live screen: cluster line, node table, request counters."""
    ready = frame.ready
    ready_style = "green" if ready.get("status") == "True" else "yellow"
    head = Text.assemble(
        ("WSO2Cluster ", "bold"),
        (f"{NAMESPACE}/{NAME}", "bold cyan"),
        f"   spec.version {frame.desired}   phase ",
        (frame.phase or "-", "bold " + PHASE_STYLE.get(frame.phase, "cyan")),
        "   Ready ",
        (ready.get("status", "-"), ready_style),
        f" ({ready.get('reason', '')})" if ready.get("reason") else "",
        f"   updated {frame.updated or '-'}   ready {frame.ready_count or '-'}",
    )
    since = "commit" if frame.app_target else "patch"  # the gitops bump is a Git commit
    clock = Text.assemble(
        ("elapsed ", "dim"),
        (f"{frame.elapsed:5.1f} s", "bold"),
        (f" since the {since} (timeout {frame.timeout:.0f} s)", "dim"),
        # Until observedGeneration catches up, Ready still describes the old spec.
        f"   generation {frame.generation or '-'}, observed {frame.observed or '-'}",
    )
    if frame.rollout_seconds is not None:
        clock.append(f"   {frame.end_state} in {frame.rollout_seconds:.1f} s", "bold green")
    if frame.flaps:
        clock.append(f"   Ready went back to False {frame.flaps}x since", "bold yellow")
    if ready.get("message"):
        clock.append(f"   {ready['message']}", "dim")

    table = Table(header_style="bold")
    table.add_column("node")
    table.add_column("version")
    table.add_column("phase", min_width=15)
    for lb in frame.lb_names:
        table.add_column(f"{lb} socket", min_width=9)
    for lb in frame.lb_names:
        table.add_column(f"{lb} in CR", min_width=8)
    table.add_column("message", overflow="fold", max_width=60)
    for n in frame.nodes:
        cells: list[Text | str] = [
            n.name,
            Text(n.version, "green" if n.version == frame.desired else ""),
            Text(n.phase, PHASE_STYLE.get(n.phase, "cyan")),
        ]
        for lb in frame.lb_names:
            v = n.live.get(lb)
            if v is None:
                cells.append(Text("?", "red"))
            else:
                status, sessions = v
                cell = Text(status, _lb_style(status))
                if sessions:
                    cell.append(f" {sessions}", "dim")  # requests the LB has on it right now
                cells.append(cell)
        for lb in frame.lb_names:
            status = n.reported.get(lb, "")
            cells.append(Text(status, _lb_style(status)))
        cells.append(Text(n.message, "dim"))
        table.add_row(*cells)

    c = frame.counters
    counters = Text.assemble(
        ("requests ", "bold"),
        f"sent {c.get('sent', 0)}   ok ",
        (str(c.get("ok", 0)), "green"),
        "   failed ",
        (str(c.get("failed", 0)), "bold red" if c.get("failed") else "green"),
        f"   in flight {c.get('in_flight', 0)}   long cut ",
        (str(c.get("long_failed", 0)), "bold red" if c.get("long_failed") else "green"),
        f"   max nodes out of rotation {frame.max_out}",
    )
    if c.get("failures"):
        counters.append(f"   {c['failures']}", "red")
    if c.get("failed_by_version"):
        counters.append(f"   failed by build {c['failed_by_version']}", "red")
    legend = Text(
        "socket: HAProxy's own state from its admin socket (+ requests on the server now); "
        "in CR: status.nodes[].loadBalancers as the operator last wrote it",
        "dim",
    )
    return Group(head, clock, *_app_lines(frame), *_canary_lines(frame), table, counters, legend)


APP_HEALTH_STYLE = {
    "Healthy": "bold green",
    "Progressing": "bold cyan",
    "Suspended": "bold yellow",
    "Degraded": "bold red",
    "Missing": "red",
}


def app_text(app: Mapping[str, str], target: str) -> str:
    """The Application in one line: sync (revision, and whether it is the new commit), health."""
    rev = app.get("revision", "")
    which = "" if not target else (" = the commit" if rev == target else " = not yet the commit")
    return (
        f"sync {app.get('sync') or '-'} ({rev[:7] or '-'}{which})"
        f"  health {app.get('health') or '-'}"
        + (f": {app['message']}" if app.get("message") else "")
    )


def _app_lines(frame: Frame) -> list[Text]:
    if not frame.app:
        return []
    a = frame.app
    rev = a.get("revision", "")
    which = " = the commit" if rev and rev == frame.app_target else " = not yet the commit"
    return [
        Text.assemble(
            ("Argo CD ", "bold"),
            (f"Application argocd/{NAME}", "bold cyan"),
            f"   sync {a.get('sync') or '-'} ({rev[:7] or '-'}{which})   health ",
            (a.get("health") or "-", APP_HEALTH_STYLE.get(a.get("health", ""), "")),
            (f"  {a['message']}", "dim") if a.get("message") else "",
        )
    ]


def _canary_lines(frame: Frame) -> list[Text]:
    """Step, analysis verdict and its newest windows, Degraded: only when there is any."""
    lines = []
    if frame.step_message:
        lines.append(Text.assemble(("canary ", "bold"), frame.step_message))
    a = frame.analysis
    if a:
        phase = a.get("phase", "")
        lines.append(
            Text.assemble(
                ("analysis ", "bold"),
                (phase, ANALYSIS_STYLE.get(phase, "cyan")),
                f"  {a.get('message', '')}",
                (f"  metric {a['metric']}", "bold red") if a.get("metric") else "",
            )
        )
        for w in (a.get("windows") or [])[-WINDOWS_SHOWN:]:
            style = VERDICT_STYLE.get(w.get("verdict", ""), "")
            lines.append(Text(f"  window {window_text(w)}", style))
    d = frame.degraded
    if d.get("status") == "True":
        lines.append(
            Text.assemble(
                ("Degraded ", "bold red"), f"{d.get('reason', '')}: {d.get('message', '')}"
            )
        )
    return lines


class LiveView:
    """A table that updates in place (rich.live), for a terminal."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self._live = Live(console=out.console, auto_refresh=False, transient=False)
        out.guard(self._live.start)

    def update(self, frame: Frame) -> None:
        # refresh=True here, at our own 4 Hz: no refresh thread racing the signal handlers.
        self.out.guard(lambda: self._live.update(render(frame), refresh=True))

    def close(self) -> None:
        self.out.guard(self._live.stop)  # leaves the last frame on the screen


class LineView:
    """One line per change, for logs: node rows, the cluster's phase, counters every 5 s."""

    COUNTER_EVERY = 5.0

    def __init__(self, out: Out) -> None:
        self.out = out
        self._nodes: dict[str, tuple[Any, ...]] = {}
        self._cluster: tuple[Any, ...] = ()
        self._next_counters = 0.0
        self._canary: dict[str, Any] = {}  # last printed step / analysis / Degraded line
        self._windows: set[tuple[str, str]] = set()  # (time, node) of windows printed
        self._app = ""  # last printed Application line

    def update(self, frame: Frame) -> None:
        ts = f"[+{frame.elapsed:5.1f}s]"
        r = frame.ready
        cluster = (
            frame.phase,
            r.get("status"),
            r.get("reason"),
            frame.updated,
            frame.ready_count,
            frame.observed,
        )
        if cluster != self._cluster:
            self._cluster = cluster
            self.out.raw(
                f"{ts} cluster {frame.phase or '-'}  Ready={r.get('status', '-')}"
                f" ({r.get('reason', '')})  updated {frame.updated or '-'}"
                f"  ready {frame.ready_count or '-'}"
                f"  generation {frame.generation or '-'} (observed {frame.observed or '-'})"
            )
        for n in frame.nodes:
            if self._nodes.get(n.name) != n.key():
                self._nodes[n.name] = n.key()
                socket = " ".join(f"{lb}={v[0] if v else '?'}" for lb, v in n.live.items())
                cr = " ".join(f"{lb}={s or '-'}" for lb, s in n.reported.items())
                self.out.raw(
                    f"{ts} {n.name} {n.version or '-':<6} {n.phase or '-':<15}"
                    f" socket[{socket}] cr[{cr}] {n.message}"
                )
        if frame.app:
            text = f"Application {app_text(frame.app, frame.app_target)}"
            if text != self._app:
                self._app = text
                self.out.raw(f"{ts} {text}")
        self._canary_update(frame, ts)
        if frame.elapsed >= self._next_counters or frame.done:
            self._next_counters = frame.elapsed + self.COUNTER_EVERY
            self.out.raw(f"{ts} {_counter_text(frame.counters)}")

    def _canary_update(self, frame: Frame, ts: str) -> None:
        a, d = frame.analysis, frame.degraded
        lines = {
            "step": f"canary {frame.step_message}" if frame.step_message else "",
            "analysis": (
                f"analysis {a.get('phase', '')}" + (f": {a['message']}" if a.get("message") else "")
                if a
                else ""
            ),
            "degraded": (
                f"Degraded {d.get('reason', '')}: {d.get('message', '')}"
                if d.get("status") == "True"
                else ""
            ),
        }
        for key, text in lines.items():
            if text and text != self._canary.get(key):
                self.out.raw(f"{ts} {text}")
            self._canary[key] = text
        for w in a.get("windows") or []:
            k = (str(w.get("time")), str(w.get("node")))
            if k not in self._windows:
                self._windows.add(k)
                self.out.raw(f"{ts} window {window_text(w)}")

    def close(self) -> None:
        pass


def _counter_text(c: Mapping[str, Any]) -> str:
    return (
        f"requests: sent {c.get('sent', 0)}, ok {c.get('ok', 0)}, failed {c.get('failed', 0)}, "
        f"in flight {c.get('in_flight', 0)}, long cut {c.get('long_failed', 0)}"
    )

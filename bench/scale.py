"""Scale bench: one operator, many clusters on a shared LB pair, one big cluster, and idle cost.

    python -m bench.scale                         # = make bench SCALE=1: the full size, ~15 min
    python -m bench.scale --clusters 6 --loaded 2 --alone 2 --big-nodes 8 --idle-seconds 20

Three parts, each on a fresh scale fleet (`wso2_sandbox.fleet_scale`: an sshd and host key per
node, real HAProxy 2.6 with one backend per cluster) and one local control plane:

- concurrent: C clusters x N nodes (maxUnavailable 1) in one namespace, one operator process
  (`python -m wso2_operator --standalone -n NS`). The first `--loaded` clusters get
  `--rate` req/s each through both LBs for the whole part, from a load generator in its own
  process (wso2_sandbox.load_process). First a sample of clusters is rolled
  one at a time (1.0.0 -> 2.0.0: each cluster's time alone on this fleet), then all C at once
  (-> 3.0.0). Per cluster: time to Ready at the new version (when a watch on the namespace,
  bench.scale_watch, first delivered that status), that time as a ratio to the same cluster
  alone (or, for a cluster outside the sample, to the median of the sampled clusters of its
  kind, loaded or not), the most nodes out of rotation in any LB sweep (every 0.2 s,
  `show stat` of every backend), failed requests, apart from them the requests the generator
  refused to send, and its lag against its schedule; the bench's own CPU.
  For the operator: peak RSS (VmHWM), CPU seconds, apiserver requests per rollout by verb (from
  apiserver_request_total, the bench's own LISTs, WATCHes and PATCHes taken off), the most TCP
  connections it held to any one host (`ss`, every 2 s).
- idle: the same C clusters, all Ready, for `--idle-seconds`: operator CPU as a share of one
  core, apiserver requests per minute, SSH commands per minute per node (the operator's
  wso2_adapter_call_duration_seconds_count{adapter="ssh"}).
- big: one cluster of `--big-nodes` nodes, maxUnavailable `--big-max-unavailable`, under
  `--rate` req/s: rollout time against its physical limit: per batch (nodes in the order they
  left rotation, maxUnavailable at a time) the slowest node's own time (drain + install + boot
  + one check interval, bench.analysis), summed over the batches.

Writes bench/results/scale.json and prints a table with the targets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.analysis import analyze
from bench.kube import GROUP, PLURAL, VERSION, Kube, OperatorProcess
from bench.paths import RESULTS_DIR
from bench.report import machine_info
from bench.runs import _free_port
from bench.sampling import LBSampler, all_serving
from bench.scale_measure import (
    ConnectionSampler,
    ScaleSampler,
    apiserver_requests,
    busy_share,
    counter_delta,
    cpu_seconds,
    machine_cpu_jiffies,
    own_cpu_seconds,
)
from bench.scale_watch import ReadyWatch
from wso2_sandbox.fleet_scale import LB_MODES, ClusterSlice, ScaleFleet, ScaleFleetConfig
from wso2_sandbox.load import REFUSED, LoadConfig, Target, client_figures, summarize
from wso2_sandbox.load_process import LoadProcess
from wso2_sandbox.manifest import fleet_manifests

V1, V2, V3 = "1.0.0", "2.0.0", "3.0.0"
BIG_PARTS = ("big", "big-slow")
LOAD_NICE = -10
SLOW_NODE = {"boot_seconds": 25.0, "install_seconds": 5.0}
TARGETS = {
    "ratio_p95": 1.2,
    "peak_rss_mib": 250,
    "connections_per_host": 1,
    "big_overhead": 1.1,
    "idle_cpu_percent": 3.0,
}


class ScaleKube:
    """The bench's API calls, counted, so they can be taken off the apiserver's own counters.

    Ready times come from a watch (bench.scale_watch), started by `start()`."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.ns = namespace
        self.lists = 0
        self.patches = 0
        self.ready = ReadyWatch(kube, namespace)

    def start(self) -> ScaleKube:
        self.ready.__enter__()
        return self

    def stop(self) -> None:
        self.ready.__exit__()

    def clusters(self) -> dict[str, dict[str, Any]]:
        self.lists += 1
        items = self.kube._custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)
        return {o["metadata"]["name"]: o for o in items.get("items", [])}

    def patch(self, name: str, version: str) -> None:
        self.patches += 1
        self.kube.patch_version(self.ns, version, name=name)

    def wait_done(
        self, names: list[str], version: str, timeout: float, t0: float, partial: bool = False
    ) -> dict[str, float]:
        return self.ready.wait_done(names, version, timeout, t0, partial)

    def own_requests(self) -> Counter[str]:
        own = Counter(self.ready.own_requests())
        own.update({"LIST": self.lists, "PATCH": self.patches})
        return own

    def metrics(self) -> Any:
        return apiserver_requests(self.kube.kubectl("get", "--raw", "/metrics"))

    def requests_since(self, before: Counter[str], own_before: Counter[str]) -> dict[str, int]:
        """The apiserver's requests by verb since `before`, the bench's own taken off."""
        requests = counter_delta(self.metrics(), before)
        own = self.own_requests()
        own.subtract(own_before)
        for verb, n in own.items():
            if n:
                requests[verb] = requests.get(verb, 0) - n
        return requests


def _fleet_config(
    a: argparse.Namespace, *, clusters: int, nodes_per_cluster: int
) -> ScaleFleetConfig:
    return ScaleFleetConfig(
        clusters=clusters,
        nodes_per_cluster=nodes_per_cluster,
        initial_version=V1,
        boot_seconds=a.boot_seconds,
        ready_gap_seconds=a.ready_gap_seconds,
        install_seconds=a.install_seconds,
        lb_mode=a.lb_mode,
    )


def _apply_clusters(
    kube: Kube, ns: str, clusters: list[ClusterSlice], update: dict[str, Any] | None = None
) -> None:
    docs = []
    for c in clusters:
        docs += fleet_manifests(
            c.description(), name=c.name, namespace=ns, version=V1, update=update
        )
    kube.apply(docs, ns)


def _load_for(clusters: list[ClusterSlice], rate: float, seconds: float) -> LoadProcess:
    """`rate` req/s per cluster through both of its LBs; target names are `<cluster>@<lb>`.

    In its own process: in a thread of this one it shared the GIL with the LB sweeps and the
    cluster polls and, at 50 clusters, fell behind its schedule until it refused requests."""
    targets = [Target(f"{c.name}@{lb.name}", lb.url()) for c in clusters for lb in c.lbs]
    cfg = LoadConfig(rate=rate * len(clusters), long_ms=(2000, 5000), max_seconds=seconds)
    # Ahead of everything else on the machine (when root): a client has a machine of its own.
    # At the default priority it fell seconds behind its schedule while 50 clusters rolled and
    # refused thousands of requests, which says nothing about the product's path.
    return LoadProcess(targets, cfg, nice=LOAD_NICE)


def _start_operator(kube: Kube, ns: str, log_dir: Path) -> OperatorProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    return OperatorProcess(
        kube.kubeconfig, ns, log_dir / "operator.log", metrics_port=_free_port()
    ).start()


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]


def _ssh_commands(op: OperatorProcess) -> float:
    m = op.step_metrics()
    return sum(v.get("count", 0) for k, v in m.items() if k.startswith("adapter_call:ssh:"))


def run_concurrent(kube: Kube, a: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    cfg = _fleet_config(a, clusters=a.clusters, nodes_per_cluster=a.nodes)
    out: dict[str, Any] = {"clusters": a.clusters, "nodes_per_cluster": a.nodes}
    out["lb_mode"] = a.lb_mode
    with ScaleFleet(cfg) as fleet:
        out["fleet_start_seconds"] = round(fleet.start_seconds or 0, 2)
        ns = kube.new_namespace("scale")
        sk = ScaleKube(kube, ns)
        names = [c.name for c in fleet.clusters]
        loaded = fleet.clusters[: a.loaded]
        loaded_names = {c.name for c in loaded}
        _apply_clusters(kube, ns, fleet.clusters)
        op = _start_operator(kube, ns, log_dir)
        load = _load_for(loaded, a.rate, 3 * a.timeout + a.idle_seconds)
        try:
            sk.start()
            t = time.time()
            sk.wait_done(names, V1, a.timeout, t)
            out["initial_ready_seconds"] = round(time.time() - t, 2)
            own = _OwnCpu(sk)
            with ScaleSampler(fleet) as sampler:
                load.start()
                out["load_priority"] = load.priority
                time.sleep(a.warmup)
                # Each sampled cluster alone (half of them loaded, half not).
                k_loaded = (a.alone + 1) // 2
                sample = [c.name for c in loaded[:k_loaded]]
                sample += [n for n in names if n not in loaded_names][: a.alone - len(sample)]
                alone: dict[str, float] = {}
                alone_out: dict[str, int] = {}
                for name in sample:
                    sampler.reset()
                    t0 = time.time()
                    sk.patch(name, V2)
                    alone.update(sk.wait_done([name], V2, a.timeout, t0))
                    alone_out[name] = sampler.rotation[name].max_admin_out
                sampler.reset()
                # All at once.
                before, cpu0, rss_before = sk.metrics(), cpu_seconds(op.proc.pid), op.peak_rss_kib()
                own0 = sk.own_requests()
                ports = {h.ssh_port for h in [*fleet.nodes, *fleet.lb_hosts]}
                with ConnectionSampler(op.proc.pid, ports) as conns:
                    t0 = time.time()
                    t_together = t0
                    machine0 = machine_cpu_jiffies()
                    for name in names:
                        sk.patch(name, V3)
                    together = sk.wait_done(names, V3, a.timeout, t0, partial=True)
                    # Saturated cores, not scheduling, is what makes 50 at once slower than one.
                    busy = busy_share(machine0, machine_cpu_jiffies())
                bench_cpu = own.figures(sampler.cpu_seconds)
                stuck = {n: _reason(o) for n, o in sk.clusters().items() if n not in together}
                cpu1 = cpu_seconds(op.proc.pid)
                requests = sk.requests_since(before, own0)
                time.sleep(a.tail)
                records = load.stop()
            bench_cpu["load_process_seconds"] = load.child_cpu_seconds  # its whole life
            out.update(
                _concurrent_figures(fleet, names, loaded_names, alone, together, sampler, records),
                bench_cpu=bench_cpu,
                alone_max_nodes_out=alone_out,
                not_ready=stuck,
                load=_load_figures(records, t_together),
                operator_cpu_seconds=round(cpu1 - cpu0, 2),
                machine_busy_percent=None if busy is None else round(100 * busy, 1),
                operator_peak_rss_mib=round((op.peak_rss_kib() or 0) / 1024, 1),
                operator_rss_before_mib=round((rss_before or 0) / 1024, 1),
                apiserver_requests_by_verb=requests,
                apiserver_requests_per_rollout=round(sum(requests.values()) / len(names), 1),
                connections_max_per_host=max(conns.max_by_host.values(), default=0),
                connections_hosts=len(conns.max_by_host),
                connections_max_total=conns.max_total,
                connections_hosts_over_one=sorted(h for h, n in conns.max_by_host.items() if n > 1),
            )
            if a.idle_seconds > 0:
                out["idle"] = _idle(sk, op, len(fleet.nodes), a.idle_seconds)
            if not op.alive():
                out["error"] = "operator exited"
            elif stuck:
                out["error"] = f"not Ready at {V3} within {a.timeout:.0f}s: {stuck}"
        finally:
            sk.stop()
            load.close()
            op.stop()
    out["fleet_stop_seconds"] = round(fleet.stop_seconds or 0, 2)
    return out


def _concurrent_figures(
    fleet: ScaleFleet,
    names: list[str],
    loaded: set[str],
    alone: dict[str, float],
    together: dict[str, float],
    sampler: ScaleSampler,
    records: list[Any],
) -> dict[str, Any]:
    def baseline(name: str) -> float:
        if name in alone:
            return alone[name]
        same_kind = [t for n, t in alone.items() if (n in loaded) == (name in loaded)]
        return statistics.median(same_kind or list(alone.values()))

    per: dict[str, dict[str, Any]] = {}
    for name in names:
        recs = [r for r in records if r.lb.split("@")[0] == name]
        refused = sum(1 for r in recs if r.error == REFUSED)
        rot = sampler.rotation[name]
        took = together.get(name)
        per[name] = {
            "seconds": took,
            "alone_seconds": alone.get(name),
            "ratio": None if took is None else round(took / baseline(name), 3),
            "max_nodes_out": rot.max_out,
            "max_nodes_admin_out": rot.max_admin_out,
            "loaded": name in loaded,
            "requests": len(recs),
            "failed": sum(1 for r in recs if not r.ok),
            "refused": refused,
        }
    ratios = [p["ratio"] for p in per.values() if p["ratio"] is not None]
    return {
        "alone_seconds": alone,
        "together_seconds_max": max(together.values(), default=None),
        "ratio_p50": _percentile(ratios, 0.5),
        "ratio_p95": _percentile(ratios, 0.95),
        "ratio_max": max(ratios, default=None),
        "ratio_of_sampled": {n: per[n]["ratio"] for n in alone},
        **_request_figures(records),
        "max_nodes_out_any_cluster": max(p["max_nodes_out"] for p in per.values()),
        "max_nodes_admin_out_any_cluster": max(p["max_nodes_admin_out"] for p in per.values()),
        "sampler_sweeps": sampler.sweeps,
        "sampler_errors": sampler.errors,
        "all_ready_at_new_version": len(together) == len(names),
        "per_cluster": per,
    }


def _request_figures(records: list[Any]) -> dict[str, Any]:
    """Failed requests, and of them the ones the generator refused to send (they never reached
    a LB: the client machine's limit, not the product's), and how late it sent the others."""
    client = client_figures(records)
    return {
        "requests_total": len(records),
        "requests_failed": sum(1 for r in records if not r.ok),
        "requests_refused": client["refused"],
        "requests_failed_sent": client["failed_sent"],
        "load_lag_p50_s": client["lag_p50_s"],
        "load_lag_p99_s": client["lag_p99_s"],
        "load_lag_max_s": client["lag_max_s"],
    }


class _OwnCpu:
    """The bench process's own CPU from its creation on, and what its cluster watch and LB
    sweeps took of it: if the bench starves the machine, its figures are the bench's."""

    def __init__(self, sk: ScaleKube) -> None:
        self.sk = sk
        self.t0, self.cpu0 = time.monotonic(), own_cpu_seconds()
        self.watch0, self.events0 = sk.ready.cpu_seconds, sk.ready.events

    def figures(self, sweeps_cpu: float) -> dict[str, Any]:
        wall, cpu = time.monotonic() - self.t0, own_cpu_seconds() - self.cpu0
        events = self.sk.ready.events - self.events0
        return {
            "wall_seconds": round(wall, 1),
            "process_seconds": round(cpu, 2),
            "process_percent_of_core": round(100 * cpu / wall, 1),
            "cluster_watch_seconds": round(self.sk.ready.cpu_seconds - self.watch0, 2),
            "cluster_watch_events": events,
            # What one LIST of the namespace weighs: the 0.25 s poll the watch replaced sent
            # this four times a second; the watch sent `cluster_watch_events` objects in all.
            "list_bytes": len(json.dumps(self.sk.ready.clusters())),
            "lb_sweeps_seconds": round(sweeps_cpu, 2),
        }


def _load_figures(records: list[Any], t_together: float) -> dict[str, Any]:
    """Failures by cause, and when: while clusters were rolled alone, or all at once."""
    failed = [r for r in records if not r.ok]
    return {
        **summarize(records),
        "failed_before_concurrent": sum(1 for r in failed if r.start < t_together),
        "failed_from_concurrent": sum(1 for r in failed if r.start >= t_together),
        "lag_p99_from_concurrent_s": client_figures(r for r in records if r.start >= t_together)[
            "lag_p99_s"
        ],
        "failed_by_node": dict(Counter(r.node or "-" for r in failed).most_common(20)),
    }


def _reason(obj: dict[str, Any]) -> str:
    """Why a cluster is not Ready: its Degraded (or else Ready) condition's reason and message."""
    conds = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    c = conds.get("Degraded") if conds.get("Degraded", {}).get("status") == "True" else None
    c = c or conds.get("Ready") or {}
    return f"{c.get('reason', '?')}: {str(c.get('message', ''))[:200]}"


def _idle(sk: ScaleKube, op: OperatorProcess, nodes: int, seconds: float) -> dict[str, Any]:
    assert op.proc is not None
    time.sleep(5)  # the last status writes of the rollout settle
    before, cpu0, ssh0 = sk.metrics(), cpu_seconds(op.proc.pid), _ssh_commands(op)
    own0 = sk.own_requests()
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(op.proc.pid) - cpu0
    requests = sk.requests_since(before, own0)
    minutes = wall / 60
    return {
        "seconds": round(wall, 1),
        "operator_cpu_seconds": round(cpu, 2),
        "operator_cpu_percent_of_core": round(100 * cpu / wall, 2),
        "apiserver_requests_by_verb": requests,
        "apiserver_requests_per_minute": round(sum(requests.values()) / minutes, 1),
        "ssh_commands_per_minute_per_node": round((_ssh_commands(op) - ssh0) / minutes / nodes, 3),
    }


def run_big(kube: Kube, a: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    cfg = _fleet_config(a, clusters=1, nodes_per_cluster=a.big_nodes)
    out: dict[str, Any] = {"nodes": a.big_nodes, "max_unavailable": a.big_max_unavailable}
    out.update(boot_seconds=a.boot_seconds, install_seconds=a.install_seconds)
    with ScaleFleet(cfg) as fleet:
        cluster = fleet.clusters[0]
        ns = kube.new_namespace("scale-big")
        sk = ScaleKube(kube, ns)
        update = {"maxUnavailable": a.big_max_unavailable}
        _apply_clusters(kube, ns, [cluster], update)
        op = _start_operator(kube, ns, log_dir)
        load = _load_for([cluster], a.rate, 2 * a.timeout)
        try:
            sk.start()
            sk.wait_done([cluster.name], V1, a.timeout, time.time())
            with LBSampler(cluster.lbs) as sampler:
                load.start()
                out["load_priority"] = load.priority
                time.sleep(a.warmup)
                t0 = time.time()
                machine0, op_cpu0 = machine_cpu_jiffies(), cpu_seconds(op.proc.pid)
                sk.patch(cluster.name, V2)
                sk.wait_done([cluster.name], V2, a.timeout, t0)
                # How saturated the cores were while the batches ran: what the per-node
                # overhead beyond the limit grows with.
                busy = busy_share(machine0, machine_cpu_jiffies())
                out["machine_busy_percent"] = None if busy is None else round(100 * busy, 1)
                out["operator_cpu_seconds"] = round(cpu_seconds(op.proc.pid) - op_cpu0, 2)
                sampler.wait(lambda s: all_serving(s, len(cluster.lbs)), 30, after=time.time())
                time.sleep(a.tail)
                records = load.stop()
            out["operator_peak_rss_mib"] = round((op.peak_rss_kib() or 0) / 1024, 1)
        finally:
            sk.stop()
            load.close()
            op.stop()
        result = analyze(
            t0=t0,
            samples=sampler.samples,
            records=records,
            events={n.name: n.events() for n in cluster.nodes},
            version=V2,
        )
    per_batch = _batch_limit(result["nodes"], _max_unavailable(a.big_max_unavailable, a.big_nodes))
    out.update(
        rollout_seconds=result["rollout_seconds"],
        max_nodes_out=result["max_nodes_out"],
        max_nodes_admin_out=result["max_nodes_admin_out"],
        batches=len(per_batch),
        batch_limits_seconds=per_batch,
        physical_limit_seconds=round(sum(per_batch), 3),
        overhead=round(result["rollout_seconds"] / sum(per_batch), 3)
        if result["rollout_seconds"] and per_batch
        else None,
        overhead_per_batch_seconds=round(
            (result["rollout_seconds"] - sum(per_batch)) / len(per_batch), 2
        )
        if result["rollout_seconds"] and per_batch
        else None,
        **_request_figures(records),
        node_seconds_median=statistics.median(
            n["physical"]["total"] for n in result["nodes"] if "physical" in n
        ),
        node_timeline_mean_seconds=_timeline_means(result["nodes"]),
    )
    return out


def _timeline_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Where a node's time went beyond its own work, averaged over the nodes (analysis.py's
    timeline, without `lead`: with nodes in flight together it is not one node's wait)."""
    keys = ("drain", "to_stop", "stop_to_install", "install_to_start", "ready_to_up")
    out = {}
    for k in keys:
        values = [r["timeline"][k] for r in rows if r.get("timeline", {}).get(k) is not None]
        if values:
            out[k] = round(statistics.mean(values), 3)
    return out


def _max_unavailable(value: str, nodes: int) -> int:
    if value.endswith("%"):
        return max(1, nodes * int(value[:-1]) // 100)
    return int(value)


def _batch_limit(rows: list[dict[str, Any]], width: int) -> list[float]:
    """Per batch (nodes in the order they left rotation, `width` at a time): its slowest node."""
    done = sorted((r for r in rows if "physical" in r), key=lambda r: r["times"]["drain_begin"])
    return [
        round(max(r["physical"]["total"] for r in done[i : i + width]), 3)
        for i in range(0, len(done), width)
    ]


def _met(value: float | None, target: float, below: bool = True) -> str:
    if value is None:
        return "n/a"
    return "met" if (value <= target if below else value >= target) else "**missed**"


def _requests_verdict(part: dict[str, Any]) -> str:
    """0 failed is shown only if the generator sent every request: a refused one never reached
    a LB, so it proves nothing either way about the product."""
    if part["requests_failed_sent"]:
        return "**missed**"
    if part["requests_refused"]:
        return "not shown: the generator refused requests (client overloaded)"
    return "met"


def _bench_cpu(cpu: dict[str, Any]) -> str:
    if not cpu:
        return "n/a"
    return (
        f"{cpu['process_percent_of_core']} % of a core ({cpu['cluster_watch_seconds']} s, "
        f"{cpu['lb_sweeps_seconds']} s), load process {cpu.get('load_process_seconds')} s"
    )


def _big_rows(part: str, b: dict[str, Any]) -> list[tuple[str, Any, str]]:
    if "rollout_seconds" not in b:
        return []
    node = f"boot {b['boot_seconds']:g} s, install {b['install_seconds']:g} s"
    return [
        (f"{part}: {b['nodes']} nodes ({node}), maxUnavailable {b['max_unavailable']}: "
         "rollout / limit",
         f"{b['rollout_seconds']} s / {b['physical_limit_seconds']} s ({b['batches']} batches) "
         f"= {b['overhead']}x; {b.get('overhead_per_batch_seconds')} s a batch beyond the limit",
         _met(b["overhead"], TARGETS["big_overhead"])),
        (f"{part}: failed requests (refused by the generator), lag p99, most nodes out",
         f"{b['requests_failed']} of {b['requests_total']} ({b['requests_refused']}), "
         f"{b['load_lag_p99_s']} s, {b['max_nodes_admin_out']}", _requests_verdict(b)),
        (f"{part}: machine busy while it rolled (both cores), operator CPU",
         f"{b.get('machine_busy_percent')} %, {b.get('operator_cpu_seconds')} s", ""),
        (f"{part}: per node, mean s (drain, to_stop, stop_to_install, install_to_start, "
         "ready_to_up)",
         ", ".join(str(v) for v in (b.get("node_timeline_mean_seconds") or {}).values()), ""),
    ]  # fmt: skip


def print_table(report: dict[str, Any]) -> None:
    for part in ("concurrent", *BIG_PARTS):
        if err := (report.get(part) or {}).get("error"):
            print(f"{part}: FAILED: {err}")
    c = report.get("concurrent") or {}
    c = c if "clusters" in c and "requests_total" in c else {}
    i = c.get("idle") or {}
    rows: list[tuple[str, Any, str]] = []
    if c:
        n = f"{c['clusters']} x {c['nodes_per_cluster']} ({c['lb_mode']} LBs)"
        rows += [
            (f"{n}: fleet start / stop",
             f"{c['fleet_start_seconds']} s / {c['fleet_stop_seconds']} s", ""),
            (f"{n}: every cluster Ready at the new version", c["all_ready_at_new_version"], ""),
            (f"{n}: failed requests (of them refused by the generator)",
             f"{c['requests_failed']} of {c['requests_total']} ({c['requests_refused']})",
             _requests_verdict(c)),
            (f"{n}: generator lag p50 / p99 / max (its nice value), bench CPU (cluster watch, "
             "LB sweeps)",
             f"{c['load_lag_p50_s']} / {c['load_lag_p99_s']} / {c['load_lag_max_s']} s "
             f"({c.get('load_priority')}), {_bench_cpu(c.get('bench_cpu') or {})}", ""),
            (f"{n}: most nodes out in a cluster (maxUnavailable 1)", c["max_nodes_out_any_cluster"],
             _met(c["max_nodes_admin_out_any_cluster"], 1)),
            (f"{n}: rollout time vs alone, p50 / p95 / max",
             f"{c['ratio_p50']} / {c['ratio_p95']} / {c['ratio_max']}",
             _met(c["ratio_p95"], TARGETS["ratio_p95"])),
            (f"{n}: slowest cluster, alone times",
             f"{c['together_seconds_max']} s, {c['alone_seconds']}", ""),
            (f"{n}: operator peak RSS", f"{c['operator_peak_rss_mib']} MiB",
             _met(c["operator_peak_rss_mib"], TARGETS["peak_rss_mib"])),
            (f"{n}: operator CPU for the concurrent rollout; machine busy (both cores)",
             f"{c['operator_cpu_seconds']} s; {c.get('machine_busy_percent')} %", ""),
            (f"{n}: apiserver requests per rollout", f"{c['apiserver_requests_per_rollout']} "
             f"{c['apiserver_requests_by_verb']}", ""),
            (f"{n}: most connections to one host (hosts)",
             f"{c['connections_max_per_host']} ({c['connections_hosts']} hosts)",
             _met(c["connections_max_per_host"], TARGETS["connections_per_host"])),
        ]  # fmt: skip
    if i:
        rows += [
            (f"idle {i['seconds']} s: operator CPU",
             f"{i['operator_cpu_percent_of_core']} % of a core",
             _met(i["operator_cpu_percent_of_core"], TARGETS["idle_cpu_percent"])),
            ("idle: apiserver requests per minute", f"{i['apiserver_requests_per_minute']} "
             f"{i['apiserver_requests_by_verb']}", ""),
            ("idle: SSH commands per minute per node", i["ssh_commands_per_minute_per_node"], ""),
        ]  # fmt: skip
    for part in BIG_PARTS:
        rows += _big_rows(part, report.get(part) or {})
    print("| figure | measured | target |")
    print("|---|---|---|")
    for name, value, verdict in rows:
        print(f"| {name} | {value} | {verdict} |")


def run(a: argparse.Namespace, log_root: Path = RESULTS_DIR / "last-scale") -> dict[str, Any]:
    from wso2_sandbox.controlplane import ControlPlane

    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    log_dir = log_root
    shutil.rmtree(log_dir, ignore_errors=True)
    report: dict[str, Any] = {
        "machine": machine_info(),
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "argv": vars(a) | {"out": str(a.out)},
        "loadavg_before": os.getloadavg(),
        "targets": TARGETS,
    }
    cp_dir = Path(tempfile.mkdtemp(prefix="bench-scale-cp-"))
    try:
        with ControlPlane(workdir=cp_dir) as cp:
            assert cp.kubeconfig is not None
            kube = Kube(cp.kubeconfig)
            kube.install_crd()
            steps: dict[str, Callable[[], dict[str, Any]]] = {
                "concurrent": lambda: run_concurrent(kube, a, log_dir / "concurrent"),
                "big": lambda: run_big(kube, a, log_dir / "big"),
                # The same cluster with nodes that take ~30 s of their own (still well under a
                # WSO2 node's minutes): the overhead is a roughly fixed cost per batch, so the
                # ratio to the limit depends on the node's own time (bench/README.md).
                "big-slow": lambda: run_big(
                    kube,
                    argparse.Namespace(**{**vars(a), **SLOW_NODE}),
                    log_dir / "big-slow",
                ),
            }
            for part in parts:
                t = time.monotonic()
                try:
                    report[part] = steps[part]()
                except Exception as e:  # one broken part must not lose the others
                    report[part] = {"error": f"{type(e).__name__}: {e}"}
                report[part]["part_seconds"] = round(time.monotonic() - t, 1)
                report[part]["loadavg_after"] = os.getloadavg()
                print(f"--- {part} done in {report[part]['part_seconds']} s", flush=True)
            kube.close()
    finally:
        shutil.rmtree(cp_dir, ignore_errors=True)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--nodes", type=int, default=4, help="nodes per cluster")
    ap.add_argument("--loaded", type=int, default=10, help="clusters behind load")
    ap.add_argument("--rate", type=float, default=50.0, help="req/s per loaded cluster")
    ap.add_argument("--alone", type=int, default=6, help="clusters first rolled alone")
    ap.add_argument(
        "--lb-mode", choices=LB_MODES, default="shared", help="one LB pair for all, or one each"
    )
    ap.add_argument("--big-nodes", type=int, default=40)
    ap.add_argument("--big-max-unavailable", default="25%")
    ap.add_argument("--idle-seconds", type=float, default=300.0)
    ap.add_argument(
        "--parts",
        default="concurrent,big,big-slow",
        help="concurrent (with idle), big, big-slow (the big cluster with ~30-s nodes)",
    )
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--tail", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json")
    # The default profile's node timing (bench.profiles), so figures compare with `make bench`.
    ap.add_argument("--boot-seconds", type=float, default=3.0)
    ap.add_argument("--ready-gap-seconds", type=float, default=2.0)
    ap.add_argument("--install-seconds", type=float, default=0.5)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    report = run(a)
    report["loadavg_after"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"wrote {a.out}")
    failed = [p for p in ("concurrent", *BIG_PARTS) if (report.get(p) or {}).get("error")]
    for p in failed:
        print(f"{p} failed: {report[p]['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

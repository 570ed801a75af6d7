"""Prometheus metrics. prometheus-client is the reference exporter; nothing else is as well kept.

The exporter is started by `--metrics-port` (see __main__); without it the calls below only
update in-process values, which costs next to nothing. It has no authentication and serves the
series below plus the Python process metrics; the labels carry WSO2Cluster namespaces and names,
step names and error class names, never commands or Secret data. Hosts appear in one series
only, `wso2_open_connections` (the LB and node addresses of the WSO2Cluster specs).
`--metrics-address` picks the interface (0.0.0.0 by default, so Prometheus can scrape the Pod
IP; the NetworkPolicy in manifests/ limits who can connect).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

ROLLOUT_DURATION = Histogram(
    "wso2_rollout_duration_seconds",
    "Wall time of finished rollouts, from the spec change to the last node back in rotation.",
    ["namespace", "name", "result"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
ROLLOUTS_STARTED = Counter(
    "wso2_rollouts_started_total", "Rollouts started.", ["namespace", "name"]
)
ROLLOUT_FAILURES = Counter(
    "wso2_rollout_failures_total",
    "Node updates that failed definitively.",
    ["namespace", "name", "reason"],
)
STEP_DURATION = Histogram(
    "wso2_node_step_duration_seconds",
    "Duration of each per-node step (Drain, Provision, Verify, WaitHealthy, Enable, Soak).",
    ["step", "result"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
NODES_OUT = Gauge(
    "wso2_nodes_out_of_rotation",
    "Nodes out of rotation or unhealthy, as last observed.",
    ["namespace", "name"],
)
ADAPTER_LATENCY = Histogram(
    "wso2_adapter_call_duration_seconds",
    "Latency of LB runtime-API commands and SSH commands.",
    ["adapter", "result"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
)
ADAPTER_ERRORS = Counter(
    "wso2_adapter_errors_total", "LB and SSH call errors by type.", ["adapter", "error"]
)
ANALYSIS_VERDICTS = Counter(
    "wso2_analysis_verdicts_total",
    "Analysis verdicts reached for a node (Passed, Failed, Inconclusive), by failing metric.",
    ["namespace", "name", "verdict", "metric"],
)


class OpenConnections(Collector):
    """Open SSH connections and LB admin sessions per host, read when scraped (they close on
    their own: idle, server gone), so sharing between clusters can be checked: one per host."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from .sharing import open_connections

        g = GaugeMetricFamily(
            "wso2_open_connections",
            "Open connections of this operator by kind (ssh: SSH connections to a host; lb: "
            "HAProxy admin sessions, over SSH or TCP) and host:port, shared by all clusters.",
            labels=["kind", "host"],
        )
        for (kind, host), n in sorted(open_connections().items()):
            g.add_metric([kind, host], n)
        yield g


REGISTRY.register(OpenConnections())


def serve(port: int, addr: str = "0.0.0.0") -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on addr:port from a daemon thread; returns the server (to shut it down)."""
    return start_http_server(port, addr=addr)


def rollout_started(namespace: str, name: str) -> None:
    ROLLOUTS_STARTED.labels(namespace, name).inc()


def rollout_finished(namespace: str, name: str, result: str, seconds: float) -> None:
    ROLLOUT_DURATION.labels(namespace, name, result).observe(seconds)


def rollout_failed(namespace: str, name: str, reason: str) -> None:
    ROLLOUT_FAILURES.labels(namespace, name, reason).inc()


def step_done(step: str, seconds: float, ok: bool) -> None:
    STEP_DURATION.labels(str(step), "ok" if ok else "error").observe(seconds)


def nodes_out(namespace: str, name: str, count: int) -> None:
    NODES_OUT.labels(namespace, name).set(count)


def analysis_verdict(namespace: str, name: str, verdict: str, metric: str) -> None:
    ANALYSIS_VERDICTS.labels(namespace, name, verdict, metric if verdict != "Passed" else "").inc()


def adapter_call(adapter: str, seconds: float, error: BaseException | None = None) -> None:
    ADAPTER_LATENCY.labels(adapter, "error" if error else "ok").observe(seconds)
    if error is not None:
        ADAPTER_ERRORS.labels(adapter, type(error).__name__).inc()

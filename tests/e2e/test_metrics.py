"""Prometheus metrics move during a real rollout."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import pytest

from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+0-9.eE]+|NaN)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def value(metrics: dict[str, float], metric: str, /, **labels: str) -> float:
    total = 0.0
    for key, v in metrics.items():
        if key.split("{")[0] != metric:
            continue
        if all(f'{k}="{val}"' in key for k, val in labels.items()):
            total += v
    return total


def test_metrics_move_during_rollout(make_env):
    env: Env = make_env()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.operator.args = ["--metrics-port", str(port)]
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    before = scrape(port)
    assert value(before, "wso2_adapter_call_duration_seconds_count", adapter="ssh") > 0
    env.patch_spec({"version": "2.0.0"})
    peak_out = 0.0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        m = scrape(port)
        peak_out = max(peak_out, value(m, "wso2_nodes_out_of_rotation", name=env.name))
        if value(m, "wso2_rollout_duration_seconds_count", result="Succeeded") >= 1:
            break
        time.sleep(0.2)
    after = scrape(port)
    assert peak_out >= 1
    assert value(after, "wso2_nodes_out_of_rotation", name=env.name) == 0
    assert value(after, "wso2_rollouts_started_total", name=env.name) > value(
        before, "wso2_rollouts_started_total", name=env.name
    )
    assert value(after, "wso2_rollout_duration_seconds_count", result="Succeeded") == 1
    assert value(after, "wso2_rollout_duration_seconds_sum", result="Succeeded") > 1
    for step in ("Drain", "Provision", "Verify", "WaitHealthy", "Enable", "Soak"):
        assert value(after, "wso2_node_step_duration_seconds_count", step=step) >= 3, step
    assert value(after, "wso2_adapter_call_duration_seconds_count", adapter="lb") > value(
        before, "wso2_adapter_call_duration_seconds_count", adapter="lb"
    )
    assert value(after, "wso2_rollout_failures_total") == 0

    # Idle: every pass writes status (its `writer` stamp counts the writes) and reads health
    # and LB state, but reads versions over SSH only every second pass (probe_cadence.py).
    time.sleep(4)  # the rollout's last passes settle

    def writes() -> int:
        return int(str(env.get()["status"]["writer"]).rpartition("#")[2])

    w0, ssh0 = (
        writes(),
        value(scrape(port), "wso2_adapter_call_duration_seconds_count", adapter="ssh"),
    )
    time.sleep(16)  # 5 passes at WSO2_OBSERVE_PERIOD=3
    w1, ssh1 = (
        writes(),
        value(scrape(port), "wso2_adapter_call_duration_seconds_count", adapter="ssh"),
    )
    passes, per_node = w1 - w0, (ssh1 - ssh0) / 3
    assert passes >= 4, (passes, per_node)
    assert passes / 2 - 1 <= per_node <= passes / 2 + 1, (passes, per_node)

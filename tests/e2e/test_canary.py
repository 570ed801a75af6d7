"""Canary steps and analysis from HAProxy's counters, end to end under load.

The fleet's stand-in misbehaves by installed version (etc/faults.json): a bad build answers a
share of plain requests with 500, or answers slower, while /health and /version stay fine, as a
real bad build does. The load generator records which node and version answered each request.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import Env, LBSampler, installs_completed
from wso2_sandbox.load import LoadConfig, LoadGenerator, LoadThread, targets_from_fleet

pytestmark = pytest.mark.e2e

ANALYSIS = {"intervalSeconds": 3, "minRequests": 10, "failureLimit": 2, "successWindows": 2}


def start_load(env: Env, rate: float = 60) -> LoadThread:
    # Plain requests only: a mean response time over a mix with 2-5 s requests is noise, and
    # drains of long requests are covered elsewhere.
    config = LoadConfig(rate=rate, long_fraction=0.0, seed=11)
    load = LoadThread(LoadGenerator(targets_from_fleet(env.fleet.description), config))
    load.start()
    return load


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def events_named(env: Env, reason: str) -> list[dict[str, Any]]:
    return [e for e in env.events() if e.get("reason") == reason]


@pytest.mark.timeout(300)
def test_bad_release_is_caught_on_the_first_node_and_rolled_back(make_env):
    env: Env = make_env()
    env.fleet.set_version_fault("2.0.0", error_percent=10, error_status=500)
    env.operator.start()
    update = {
        "failurePolicy": "Rollback",
        "steps": [{"nodes": 1}, {"pause": {"durationSeconds": 60}}],
        "analysis": ANALYSIS,
    }
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    load = start_load(env)
    try:
        with LBSampler(env.fleet) as sampler:
            time.sleep(2)
            env.patch_spec({"version": "2.0.0"})
            obj = env.wait_for(
                lambda o: o.get("status", {}).get("analysis", {}).get("phase") == "Failed",
                timeout=120,
                what="analysis Failed",
            )
            obj = env.wait_for(
                lambda o: conditions(o).get("Degraded", {}).get("reason") == "RolledBack",
                timeout=120,
                what="RolledBack",
            )
            # The failed verdict stays in status; it must not touch the rolled-back node.
            time.sleep(8)
            obj = env.get()
        records = load.stop()
    finally:
        load.generator.stop()

    st = obj["status"]
    print("\nanalysis:", st["analysis"]["message"])
    assert st["analysis"]["metric"] == "ErrorRate"
    assert {r["name"]: r["version"] for r in st["nodes"]} == {
        "node1": "1.0.0",
        "node2": "1.0.0",
        "node3": "1.0.0",
    }
    assert conditions(obj)["Ready"]["status"] == "False"
    assert conditions(obj)["Degraded"]["reason"] == "RolledBack"
    assert st["rollout"]["rollbackFailed"] is False
    for lb in env.fleet.lbs:
        for name, row in lb.servers().items():
            assert row["status"].startswith("UP"), (lb.name, name, row["status"])
    # Only the first node ever ran the bad build.
    assert installs_completed(env, "node1", "2.0.0") == 1
    assert installs_completed(env, "node2", "2.0.0") == 0
    assert installs_completed(env, "node3", "2.0.0") == 0
    assert sampler.max_out() == 1
    failed = [r for r in records if not r.ok]
    assert failed, "the bad build served no errors: the test proves nothing"
    assert {r.version for r in failed} == {"2.0.0"}, failed[:5]
    bad_served = [r for r in records if r.version == "2.0.0"]
    print(f"requests {len(records)}, failed {len(failed)}, served by 2.0.0 {len(bad_served)}")
    assert events_named(env, "AnalysisFailed")
    history = st["history"][-1]
    assert history["result"] == "RolledBack", history


@pytest.mark.timeout(300)
def test_good_release_passes_the_timed_pause_on_its_own(make_env):
    env: Env = make_env()
    env.operator.start()
    update = {"steps": [{"nodes": 1}, {"pause": {"durationSeconds": 8}}], "analysis": ANALYSIS}
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    load = start_load(env)
    try:
        with LBSampler(env.fleet) as sampler:
            time.sleep(2)
            t0 = time.monotonic()
            env.patch_spec({"version": "2.0.0"})
            paused = env.wait_for(
                lambda o: o.get("status", {}).get("phase") == "Paused",
                timeout=120,
                what="the canary pause",
            )
            assert installs_completed(env, "node2", "2.0.0") == 0
            obj = env.wait_ready(timeout=180)
            took = time.monotonic() - t0
        records = load.stop()
    finally:
        load.generator.stop()
    print(f"\ngood release with steps + analysis: Ready in {took:.1f}s")
    assert conditions(paused)["Ready"]["reason"] == "StepPaused"
    assert paused["status"]["rollout"]["stepIndex"] == 1
    st = obj["status"]
    assert st["analysis"]["phase"] == "Passed", st["analysis"]
    assert {r["version"] for r in st["nodes"]} == {"2.0.0"}
    failed = [r for r in records if not r.ok]
    assert records and not failed, failed[:5]
    assert sampler.max_out() == 1
    assert events_named(env, "CanaryStepDone")


@pytest.mark.timeout(300)
def test_indefinite_pause_holds_until_promoted_promote_full_and_abort(make_env):
    env: Env = make_env()
    env.operator.start()
    update = {"failurePolicy": "Rollback", "steps": [{"nodes": 1}, {"pause": {}}]}
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    env.patch_spec({"version": "2.0.0"})
    env.wait_for(lambda o: o.get("status", {}).get("phase") == "Paused", timeout=120, what="pause")
    time.sleep(6)  # holds: nothing more happens without a promotion
    obj = env.get()
    assert obj["status"]["phase"] == "Paused"
    assert "until promoted" in obj["status"]["rollout"]["stepMessage"]
    assert installs_completed(env, "node2", "2.0.0") == 0
    env.kube.run("annotate", "w2c", env.name, "-n", env.namespace, "vmops.dev/promote=1")
    env.wait_ready(timeout=120)
    assert events_named(env, "Promoted")

    # Two pauses; promote-full at the first skips the second as well.
    steps = [{"nodes": 1}, {"pause": {}}, {"nodes": 2}, {"pause": {}}]
    env.patch_spec({"version": "3.0.0", "update": {"steps": steps}})
    env.wait_for(
        lambda o: (
            o.get("status", {}).get("phase") == "Paused"
            and o["status"].get("targetVersion") == "3.0.0"
        ),
        timeout=120,
        what="first pause of 3.0.0",
    )
    env.kube.run("annotate", "w2c", env.name, "-n", env.namespace, "vmops.dev/promote-full=1")
    obj = env.wait_ready(timeout=120)
    assert obj["status"]["rollout"]["promotedFull"] is True
    assert {r["version"] for r in obj["status"]["nodes"]} == {"3.0.0"}

    # The next release is aborted at its pause: failurePolicy Rollback returns node1.
    env.patch_spec({"version": "4.0.0"})
    env.wait_for(
        lambda o: (
            o.get("status", {}).get("phase") == "Paused"
            and o["status"].get("targetVersion") == "4.0.0"
        ),
        timeout=120,
        what="pause of 4.0.0",
    )
    env.kube.run("annotate", "w2c", env.name, "-n", env.namespace, "vmops.dev/abort=1")
    obj = env.wait_for(
        lambda o: conditions(o).get("Degraded", {}).get("reason") == "RolledBack",
        timeout=120,
        what="RolledBack after abort",
    )
    assert {r["version"] for r in obj["status"]["nodes"]} == {"3.0.0"}
    assert obj["status"]["rollout"]["aborted"] is True
    assert installs_completed(env, "node2", "4.0.0") == 0
    assert installs_completed(env, "node3", "4.0.0") == 0


@pytest.mark.timeout(300)
def test_too_little_traffic_is_inconclusive_and_never_promotes(make_env):
    env: Env = make_env()
    env.operator.start()
    update = {
        "steps": [{"nodes": 1}, {"pause": {"durationSeconds": 1}}],
        "analysis": {**ANALYSIS, "inconclusiveLimit": 3},
    }
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    env.patch_spec({"version": "2.0.0"})  # no load at all: every window has 0 requests
    obj = env.wait_for(
        lambda o: conditions(o).get("Progressing", {}).get("reason") == "AnalysisInconclusive",
        timeout=120,
        what="AnalysisInconclusive",
    )
    assert obj["status"]["phase"] == "Paused"
    time.sleep(8)
    obj = env.get()
    assert env.node_phase(obj, "node1") == "Soaking"
    assert installs_completed(env, "node2", "2.0.0") == 0
    assert obj["status"]["analysis"]["phase"] == "Inconclusive"
    assert "TooFewRequests" in {w["reason"] for w in obj["status"]["analysis"]["windows"]}


@pytest.mark.timeout(300)
def test_slow_release_is_caught_by_the_response_time_ratio(make_env):
    env: Env = make_env()
    # Every build answers in 20 ms; the bad one in 60 ms (3x), with no errors at all.
    env.fleet.set_faults({"*": {"latencyMs": 20}, "2.0.0": {"latencyMs": 60}})
    env.operator.start()
    update = {"steps": [{"nodes": 1}, {"pause": {"durationSeconds": 60}}], "analysis": ANALYSIS}
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    load = start_load(env)
    try:
        time.sleep(2)
        env.patch_spec({"version": "2.0.0"})
        obj = env.wait_for(
            lambda o: env.node_phase(o, "node1") == "Failed", timeout=120, what="node1 Failed"
        )
        records = load.stop()
    finally:
        load.generator.stop()
    st = obj["status"]
    print("\nanalysis:", st["analysis"]["message"])
    assert st["analysis"]["metric"] == "ResponseTime"
    assert conditions(obj)["Degraded"]["reason"] == "AnalysisFailed"
    assert installs_completed(env, "node2", "2.0.0") == 0
    assert installs_completed(env, "node3", "2.0.0") == 0
    # Slow is not failed: no request failed, and node1 is out of rotation on every LB.
    assert records and not [r for r in records if not r.ok]
    for lb in env.fleet.lbs:
        assert lb.servers()["node1"]["status"].startswith("MAINT"), lb.servers()["node1"]


@pytest.mark.timeout(300)
def test_kill9_during_a_canary_pause_resumes_the_pause_and_finishes(make_env):
    env: Env = make_env()
    env.operator.start()
    update = {"steps": [{"nodes": 1}, {"pause": {"durationSeconds": 12}}], "analysis": ANALYSIS}
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    load = start_load(env)
    try:
        with LBSampler(env.fleet) as sampler:
            time.sleep(2)
            env.patch_spec({"version": "2.0.0"})
            paused = env.wait_for(
                lambda o: o.get("status", {}).get("phase") == "Paused", timeout=120, what="pause"
            )
            env.operator.kill9()
            time.sleep(3)
            env.operator.start()
            obj = env.wait_ready(timeout=180)
        records = load.stop()
    finally:
        load.generator.stop()
    start = paused["status"]["rollout"]["pauseStartTime"]
    assert start, paused["status"]["rollout"]
    assert {r["version"] for r in obj["status"]["nodes"]} == {"2.0.0"}
    assert records and not [r for r in records if not r.ok]
    assert sampler.max_out() == 1
    for n in ("node1", "node2", "node3"):
        assert installs_completed(env, n, "2.0.0") == 1, n


class WeightSampler:
    """Reads node1's weight on every LB every 200 ms: the ground truth of the ramp."""

    def __init__(self, env: Env, node: str = "node1") -> None:
        import threading

        self.env, self.node = env, node
        self.seen: list[tuple[float, str, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WeightSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for lb in self.env.fleet.lbs:
                try:
                    row = lb.servers()[self.node]
                except (OSError, KeyError, ValueError):
                    continue
                self.seen.append((time.time(), lb.name, int(row["weight"]), row["status"]))
            self._stop.wait(0.2)

    def serving_weights(self) -> list[int]:
        return [w for _, _, w, s in self.seen if s.startswith("UP")]


@pytest.mark.timeout(300)
def test_ramp_raises_the_weight_survives_kill9_and_reload_and_restores_it(make_env):
    env: Env = make_env()
    env.operator.start()
    update = {"rampSeconds": 20, "analysis": ANALYSIS}
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    load = start_load(env)
    try:
        with LBSampler(env.fleet) as sampler, WeightSampler(env) as weights:
            time.sleep(2)
            env.patch_spec({"version": "2.0.0"})
            env.wait_for(
                lambda o: env.node_phase(o, "node1") == "Soaking", timeout=120, what="soak"
            )
            time.sleep(4)
            env.operator.kill9()  # mid-ramp: the weight is lowered right now
            time.sleep(2)
            env.fleet.reload_lb(0)  # resets lb1's weights to the configured 100
            env.operator.start()
            obj = env.wait_ready(timeout=240)
        records = load.stop()
    finally:
        load.generator.stop()
    served = weights.serving_weights()
    print(f"\nnode1 weights while serving: min {min(served)}, max {max(served)}")
    assert min(served) <= 20, "node1 never came back at a low weight"
    assert 20 < max(served)
    assert any(10 < w < 100 for w in served), "no intermediate ramp weight was seen"
    # After the reload the operator lowered lb1 again (the ramp re-asserted), then restored it.
    after_reload = [w for t, lb, w, s in weights.seen if lb == "lb1" and s.startswith("UP")]
    assert after_reload[-1] == 100
    for lb in env.fleet.lbs:
        for name, row in lb.servers().items():
            assert int(row["weight"]) == 100, (lb.name, name, row["weight"])
    assert {r["version"] for r in obj["status"]["nodes"]} == {"2.0.0"}
    assert records and not [r for r in records if not r.ok]
    assert sampler.max_out() == 1


@pytest.mark.timeout(300)
def test_lb_reload_during_analysis_gives_no_false_verdict(make_env):
    env: Env = make_env()
    env.operator.start()
    update = {"steps": [{"nodes": 1}, {"pause": {"durationSeconds": 20}}], "analysis": ANALYSIS}
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    load = start_load(env)
    try:
        time.sleep(2)
        env.patch_spec({"version": "2.0.0"})
        env.wait_for(
            lambda o: o.get("status", {}).get("phase") == "Paused", timeout=120, what="pause"
        )
        env.fleet.reload_lb(0)
        time.sleep(4)
        env.fleet.reload_lb(1)
        obj = env.wait_ready(timeout=180)
        records = load.stop()
    finally:
        load.generator.stop()
    st = obj["status"]
    reasons = [w["reason"] for w in st["analysis"]["windows"]]
    print("\nwindow reasons:", reasons)
    assert st["analysis"]["phase"] == "Passed"
    assert "CounterReset" in reasons, "the reloads did not show as counter resets"
    assert not [w for w in st["analysis"]["windows"] if w["verdict"] == "Bad"]
    assert {r["version"] for r in st["nodes"]} == {"2.0.0"}
    assert records and not [r for r in records if not r.ok]

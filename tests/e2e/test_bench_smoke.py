"""CI smoke test of the benchmark harness: the operator runs only, small and fast.

It runs the very code `make bench` runs (bench.runs.run_operator: fresh namespace, operator process,
constant load through both LBs, 100 ms LB sampler, version patch) with fast node timings and a
small load, and checks correctness only: no failed request, never more than one node out of
rotation, every node at 2.0.0. Speed is the benchmark's business, never asserted here. The
bad-release profile's operator-analysis run is checked the same way: its figures are computed and
say what the run did (one node served the bad build, it was taken out, all back on 1.0.0). The
ansible profile's operator-ansible run (the seed's role through provision.ansible) is checked like
the operator run, plus that the nodes ran the ConfigMap's content.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bench.kube import Kube as BenchKube
from bench.profiles import (
    ANALYSIS_UPDATE,
    ANSIBLE_CONFIGMAP,
    ANSIBLE_PROVISION,
    FROM_VERSION,
    PROFILES,
    TO_VERSION,
    Profile,
    RunOptions,
)
from bench.runs import run_operator
from bench.scale import parse_args, print_table, run_big, run_concurrent
from wso2_sandbox.fleet import Fleet

pytestmark = pytest.mark.e2e

SMOKE = Profile(
    "smoke",
    boot_seconds=1.5,
    ready_gap_seconds=0.5,
    install_seconds=0.3,
    rate=50.0,
    long_fraction=0.10,
    long_ms=(1000, 2000),
)

# The bad-release profile's fault at the smoke test's timings and load, without its long
# observation window (that is for comparing run kinds, not for correctness).
BAD_SMOKE = replace(SMOKE, name="bad-smoke", faults=PROFILES["bad-release"].faults)


@pytest.fixture
def smoke_fleet() -> Iterator[Fleet]:
    with Fleet(SMOKE.fleet_config()) as fleet:
        yield fleet


@pytest.fixture
def bad_fleet() -> Iterator[Fleet]:
    with Fleet(BAD_SMOKE.fleet_config()) as fleet:
        yield fleet


@pytest.mark.timeout(180)
def test_operator_rollout_under_load_fails_no_request(
    bench_kube: BenchKube, smoke_fleet: Fleet, tmp_path: Path
) -> None:
    opts = RunOptions(warmup=1.5, tail=0.5, rollout_timeout=90.0, artifacts=tmp_path / "run")
    result = run_operator(bench_kube, smoke_fleet, SMOKE, opts)

    detail = f"see {tmp_path / 'run'} (records, LB samples, operator.log)"
    assert result.error is None, f"{result.error}; {detail}"
    assert result.requests_total > 0.8 * SMOKE.rate * (opts.warmup + 5), detail
    assert result.load["long_total"] > 0, "the load must include long requests"
    assert result.requests_failed == 0, f"failures {result.load['failures']}; {detail}"
    assert result.max_nodes_out == 1, f"max nodes out of rotation {result.max_nodes_out}; {detail}"
    assert result.versions == {n.name: "2.0.0" for n in smoke_fleet.nodes}
    assert result.rollout_seconds is not None, "the last node never came back UP on both LBs"


@pytest.mark.timeout(180)
def test_operator_ansible_run_fails_no_request(
    bench_kube: BenchKube, smoke_fleet: Fleet, tmp_path: Path
) -> None:
    opts = RunOptions(warmup=1.5, tail=0.5, rollout_timeout=120.0, artifacts=tmp_path / "run")
    result = run_operator(
        bench_kube, smoke_fleet, SMOKE, opts, name="operator-ansible", provision=ANSIBLE_PROVISION
    )

    detail = f"see {tmp_path / 'run'} (records, LB samples, operator.log)"
    assert result.error is None, f"{result.error}; {detail}"
    assert result.extra.get("provision_revision", "").startswith(f"configmap:{ANSIBLE_CONFIGMAP}@")
    assert result.requests_failed == 0, f"failures {result.load['failures']}; {detail}"
    assert result.max_nodes_out == 1, f"max nodes out of rotation {result.max_nodes_out}; {detail}"
    assert result.versions == {n.name: TO_VERSION for n in smoke_fleet.nodes}
    assert result.rollout_seconds is not None, "the last node never came back UP on both LBs"
    assert result.extra["operator_metrics"].get("node_step:Provision:ok"), detail


@pytest.mark.timeout(180)
def test_bad_release_analysis_run_reports_the_catch(
    bench_kube: BenchKube, bad_fleet: Fleet, tmp_path: Path
) -> None:
    opts = RunOptions(warmup=1.5, tail=0.5, rollout_timeout=120.0, artifacts=tmp_path / "run")
    result = run_operator(
        bench_kube, bad_fleet, BAD_SMOKE, opts, name="operator-analysis", update=ANALYSIS_UPDATE
    )

    detail = f"see {tmp_path / 'run'} (records, LB samples, operator.log)"
    assert result.error is None, f"{result.error}; {detail}"
    assert result.extra["outcome"] == f"rolled back to {FROM_VERSION}", detail
    assert result.versions == {n.name: FROM_VERSION for n in bad_fleet.nodes}
    b = result.extra["bad_release"]
    assert b["version"] == TO_VERSION
    assert len(b["nodes_served"]) == 1 and b["nodes_ran"] == b["nodes_served"], (b, detail)
    assert b["first_node_removed"], (b, detail)
    assert b["failed_at_version"] > 0, "the bad build served no errors: the check proves nothing"
    assert b["failed"] == b["failed_at_version"], (b, detail)  # nothing else failed
    interval = ANALYSIS_UPDATE["analysis"]["intervalSeconds"]
    # Caught and out well within the bench's own target (3 intervals), with room for a busy CI.
    assert b["first_node_exposure_seconds"] < 6 * interval, (b, detail)


@pytest.mark.timeout(300)
def test_scale_bench_at_a_tiny_size(
    bench_kube: BenchKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The scale bench's own code at 3 clusters x 2 nodes (one behind load, one rolled alone
    # first) and a 4-node cluster at maxUnavailable 50 %: correctness and that every figure is
    # there; the figures themselves are the bench's business. The load runs in its own process
    # (wso2_sandbox.load_process), whose records must all come back.
    a = parse_args(
        ["--clusters", "3", "--nodes", "2", "--loaded", "1", "--alone", "1", "--rate", "20",
         "--idle-seconds", "3", "--big-nodes", "4", "--big-max-unavailable", "50%",
         "--warmup", "1.5", "--tail", "0.5", "--timeout", "120", "--boot-seconds", "1.5",
         "--ready-gap-seconds", "0.5", "--install-seconds", "0.3"]
    )  # fmt: skip
    c = run_concurrent(bench_kube, a, tmp_path / "concurrent")
    detail = f"see {tmp_path} (operator.log); {c}"
    assert c["all_ready_at_new_version"] and "error" not in c, detail
    assert c["requests_total"] > 0 and c["requests_failed"] == 0, detail
    # The load ran in its own process and every request came back: the loaded cluster's, and
    # none refused by the generator; its lag and the bench's own CPU are measured.
    assert c["requests_refused"] == 0 and c["requests_failed_sent"] == 0, detail
    assert c["per_cluster"]["c1"]["requests"] == c["requests_total"] == c["load"]["total"], detail
    assert c["load_lag_p50_s"] is not None and c["load_lag_p99_s"] >= c["load_lag_p50_s"], detail
    cpu = c["bench_cpu"]
    assert cpu["load_process_seconds"] > 0 and cpu["cluster_watch_events"] > 0, detail
    assert cpu["list_bytes"] > 0, detail
    assert cpu["lb_sweeps_seconds"] > 0 and cpu["process_seconds"] >= cpu["lb_sweeps_seconds"]
    assert c["sampler_sweeps"] > 0 and c["max_nodes_admin_out_any_cluster"] == 1, detail
    assert set(c["alone_seconds"]) == {"c1"} and set(c["per_cluster"]) == {"c1", "c2", "c3"}
    assert c["apiserver_requests_by_verb"].get("PATCH", 0) > 0, detail  # the operator's status
    assert c["connections_hosts"] > 0 and c["operator_peak_rss_mib"] > 0, detail
    assert c["idle"]["seconds"] >= 3 and c["idle"]["operator_cpu_seconds"] >= 0, detail
    # The generator runs ahead of the machine under test when it may (root, as in CI).
    assert c["load_priority"] == (-10 if os.geteuid() == 0 else 0), detail
    assert 0 < c["machine_busy_percent"] <= 100, detail

    b = run_big(bench_kube, a, tmp_path / "big")
    detail = f"see {tmp_path / 'big'} (operator.log); {b}"
    assert b["requests_failed"] == 0 and b["requests_total"] > 0, detail
    assert b["requests_refused"] == 0 and b["load_lag_p99_s"] is not None, detail
    assert 1 <= b["max_nodes_admin_out"] <= 2, detail
    assert b["batches"] == 2 and b["physical_limit_seconds"] > 0, detail
    assert b["rollout_seconds"] is not None and b["overhead"] is not None, detail
    # What explains the overhead: the per-batch excess, how busy the cores were, and where a
    # node's time went beyond its own work.
    assert b["overhead_per_batch_seconds"] is not None, detail
    assert 0 < b["machine_busy_percent"] <= 100 and b["operator_cpu_seconds"] > 0, detail
    timeline = b["node_timeline_mean_seconds"]
    assert {"to_stop", "stop_to_install", "install_to_start", "ready_to_up"} <= set(timeline)
    assert all(v >= 0 for v in timeline.values()), detail
    assert (b["boot_seconds"], b["install_seconds"]) == (1.5, 0.3), detail
    capsys.readouterr()
    print_table({"concurrent": c, "big": b, "big-slow": b})
    table = capsys.readouterr().out
    for part in ("big", "big-slow"):
        assert f"| {part}: 4 nodes (boot 1.5 s, install 0.3 s), maxUnavailable 50%" in table
    assert "idle 3" in table and "a batch beyond the limit" in table, table

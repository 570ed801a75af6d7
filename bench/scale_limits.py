"""Planner time and status size for big clusters: `python -m bench.scale_limits`.

Pure computation, no fleet: the planner (planner.plan) on 40, 200 and 1,000 nodes with
maxUnavailable 25 %, and the serialised status (json.dumps, as the Kubernetes client sends it)
for a mid-rollout cluster with real-looking content ("typical": two LBs, short names and
messages) and at every cap ("worst": tests/unit/test_status_hostile.worst_case_status, 16 LBs,
63-character names, messages of the costliest character). The CRD admits 100 nodes; the larger
sizes show why that bound stays (see bench/README.md, "Big clusters").
"""

from __future__ import annotations

import json
import statistics
import time

from tests.unit.test_planner_scale import world
from tests.unit.test_status_hostile import worst_case_status
from wso2_operator.model import NodeProgress, Phase, RolloutState
from wso2_operator.planner import UP, NodeObservation, plan
from wso2_operator.status import STATUS_SIZE_BOUND, summarize

OLD, NEW = "1.0.0", "2.0.0"
SIZES = (40, 100, 200, 1000)
ETCD_LIMIT = 1536 * 1024  # the apiserver's/etcd's request size limit, 1.5 MiB


def planner_ms(n: int, repeats: int = 20) -> float:
    spec, observed, progress = world(n, 25, out_every=7, name=str)
    rollout = RolloutState(from_version=OLD, to_version=NEW)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan(spec, observed, progress, rollout)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def typical_status_bytes(n: int) -> int:
    """A quarter of the nodes updated, a quarter in flight, the rest waiting; two LBs."""
    spec, observed, progress = world(n, 25, name=str)
    names = spec.node_names
    now = time.time()
    for i, name in enumerate(names):
        if i < n // 4:
            observed[name] = NodeObservation(version=NEW, healthy=True, lb={"lb1": UP, "lb2": UP})
            progress[name] = NodeProgress(phase=Phase.CURRENT, target=NEW)
        elif i < n // 2:
            progress[name] = NodeProgress(
                phase=Phase.PROVISIONING,
                target=NEW,
                previous_version=OLD,
                step=1,
                since=now,
                start=now,
                message=f"{name}: wso2ctl install (2/3)",
            )
    rollout = RolloutState(from_version=OLD, to_version=NEW, start=now)
    st = summarize(
        spec=spec,
        generation=2,
        observed=observed,
        progress=progress,
        rollout=rollout,
        plan=plan(spec, observed, progress, rollout),
        previous_conditions=[],
        problem=None,
        now=now,
    )
    return len(json.dumps(st))


def main() -> None:
    print("| nodes | plan() median ms | status typical (bytes) | status worst (bytes) |")
    print("|---:|---:|---:|---:|")
    for n in SIZES:
        worst = len(json.dumps(worst_case_status(n, 16)))
        flag = " (over 1.5 MiB)" if worst > ETCD_LIMIT else ""
        flag = flag or (" (over the 1 MiB bound)" if worst > STATUS_SIZE_BOUND else "")
        print(f"| {n} | {planner_ms(n):.2f} | {typical_status_bytes(n):,} | {worst:,}{flag} |")


if __name__ == "__main__":
    main()

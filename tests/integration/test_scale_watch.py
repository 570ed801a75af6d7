"""The scale bench's cluster watch (bench.scale_watch.ReadyWatch) against the real apiserver.

Status is written the way the operator writes it (the status subresource), so the watch sees
real events: a cluster counts as Ready at a version only when Ready=True for its current
generation with every node at that version, and the time is when that status arrived.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.kube import Kube as BenchKube
from bench.scale_watch import ReadyWatch
from tests.conftest import Kube
from tests.integration.test_crd import cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ns(kube: Kube) -> str:
    """A fresh namespace with one cluster, c1, without status."""
    name = kube.new_namespace("watch")
    kube.apply(cluster("c1"), namespace=name)
    return name


@pytest.fixture
def watch(bench_kube: BenchKube, ns: str) -> Iterator[ReadyWatch]:
    with ReadyWatch(bench_kube, ns) as w:
        yield w


def status(generation: int, versions: list[str]) -> dict[str, Any]:
    ready = {
        "type": "Ready",
        "status": "True",
        "lastTransitionTime": "2026-12-01T00:00:00Z",
        "reason": "RolloutComplete",
        "message": "",
    }
    nodes = [{"name": f"node{i + 1}", "version": v} for i, v in enumerate(versions)]
    return {"observedGeneration": generation, "nodes": nodes, "conditions": [ready]}


def write_status(kube: Kube, ns: str, body: dict[str, Any]) -> None:
    kube.run(
        "patch", "w2c", "c1", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": body}),
    )  # fmt: skip


def generation(kube: Kube, ns: str) -> int:
    return int(kube.get_json("w2c", "c1", "-n", ns)["metadata"]["generation"])


def test_ready_time_is_when_every_node_ran_the_version_for_the_current_generation(
    kube: Kube, ns: str, watch: ReadyWatch
) -> None:
    assert set(watch.clusters()) == {"c1"}  # from the first LIST
    t0 = time.time()
    write_status(kube, ns, status(generation(kube, ns), ["1.0.0", "2.0.0", "2.0.0"]))
    mixed_written = time.time()  # Ready, but not every node at 2.0.0: not done yet
    write_status(kube, ns, status(generation(kube, ns), ["2.0.0"] * 3))
    done = watch.wait_done(["c1"], "2.0.0", 60, t0)
    assert watch.first_done[("c1", "2.0.0")] >= mixed_written, (done, mixed_written)
    assert ("c1", "1.0.0") not in watch.first_done

    # A new generation: the old observedGeneration does not count, even at the version.
    kube.run("patch", "w2c", "c1", "-n", ns, "--type=merge", "-p", '{"spec":{"version":"3.0.0"}}')
    new = generation(kube, ns)
    write_status(kube, ns, status(new - 1, ["3.0.0"] * 3))
    stale_written = time.time()
    write_status(kube, ns, status(new, ["3.0.0"] * 3))
    watch.wait_done(["c1"], "3.0.0", 60, t0)
    assert watch.first_done[("c1", "3.0.0")] >= stale_written
    own = watch.own_requests()
    assert watch.events >= 5 and own["LIST"] == 1 and own["WATCH"] >= 1, own


def test_a_cluster_never_ready_times_out_or_comes_back_partial(watch: ReadyWatch) -> None:
    assert watch.wait_done(["c1"], "9.9.9", 0.2, time.time(), partial=True) == {}
    with pytest.raises(TimeoutError, match=r"not Ready at 9\.9\.9.*c1"):
        watch.wait_done(["c1"], "9.9.9", 0.2, time.time())

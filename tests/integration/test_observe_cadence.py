"""observe() with versions it may take over (probe_cadence.py), against real sshd and HAProxy:
the known nodes are not asked over SSH, and their health and LB state are still read fresh."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest

from wso2_operator import sharing
from wso2_operator.adapters import Adapters, observe
from wso2_operator.model import ClusterSpec
from wso2_operator.observation import DOWN, UP
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.fleet_base import poll
from wso2_sandbox.manifest import fleet_manifests

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet(FleetConfig(nodes=2, boot_seconds=0.3, ready_gap_seconds=0.1)) as f:
        yield f


@pytest.fixture
async def adapters(fleet: Fleet) -> AsyncIterator[tuple[ClusterSpec, Adapters]]:
    spec = ClusterSpec.from_dict(fleet_manifests(fleet.description)[1]["spec"])
    a = Adapters(spec, fleet.client_private_key(), fleet.known_hosts())
    yield spec, a
    await a.close()
    await sharing.current().aclose()


async def test_known_versions_are_not_asked_but_health_and_lbs_are_read(
    fleet: Fleet, adapters: tuple[ClusterSpec, Adapters]
) -> None:
    spec, a = adapters
    full, problem, _ = await observe(spec, a)
    assert problem is None
    assert {n: o.version for n, o in full.items()} == {"node1": "1.0.0", "node2": "1.0.0"}
    assert all(o.healthy and set(o.lb.values()) == {UP} for o in full.values())

    # A version no node runs: if node1 were asked, the answer would be 1.0.0.
    known = {"node1": replace(full["node1"], version="9.9.9", healthy=True)}
    seen, problem, _ = await observe(spec, a, known=known)
    assert problem is None
    assert seen["node1"].version == "9.9.9" and seen["node2"].version == "1.0.0"

    # node1's product dies: the pass that takes its version over still sees it unhealthy and
    # DOWN on the LBs (the next pass reads everything: it was not healthy).
    node = fleet.node("node1")
    pid = node.standin_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    poll(
        "node1 DOWN on every LB",
        lambda: all(lb.servers()["node1"]["status"].startswith("DOWN") for lb in fleet.lbs),
        20,
    )
    seen, problem, _ = await observe(spec, a, known=known)
    assert seen["node1"].version == "9.9.9"
    assert seen["node1"].healthy is False
    assert set(seen["node1"].lb.values()) == {DOWN}, seen["node1"].lb
    assert seen["node2"].healthy and set(seen["node2"].lb.values()) == {UP}

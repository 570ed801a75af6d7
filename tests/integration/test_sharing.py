"""Clusters sharing LB hosts share connections: against real sshd and HAProxy 2.6 (no mocks).

The counts come from the kernel (/proc: established TCP connections of this process), not
from the operator's own bookkeeping, and are compared with what the metrics gauge says.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import REGISTRY, generate_latest

from tests.e2e.test_faults import signal_all, sshd_tree
from wso2_operator import sharing
from wso2_operator.adapters import Adapters, lb_view
from wso2_operator.errors import LBUnreachable, NoSuchBackend
from wso2_operator.model import ClusterSpec
from wso2_operator.observation import MAINT, UP
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.manifest import fleet_manifests
from wso2_sandbox.tcp_peers import tcp_peers

pytestmark = pytest.mark.timeout(120)

CLUSTERS = 3


@pytest.fixture(scope="module")
def shared_fleet() -> Iterator[Fleet]:
    """Three clusters of two nodes, each its own backend on one LB pair."""
    config = FleetConfig(
        nodes=2 * CLUSTERS, backends=CLUSTERS, boot_seconds=0.3, ready_gap_seconds=0.1
    )
    with Fleet(config) as fleet:
        yield fleet


def cluster_spec(fleet: Fleet, k: int, backend: str | None = None) -> ClusterSpec:
    groups = fleet.description["backends"]
    name = sorted(groups)[k]
    doc = fleet_manifests(fleet.description, nodes=groups[name], backend=backend or name)[1]
    return ClusterSpec.from_dict(doc["spec"])


def lb_connections(fleet: Fleet) -> dict[str, int]:
    peers = tcp_peers(os.getpid())
    return {lb.name: peers[(lb.host, lb.ssh_port)] for lb in fleet.lbs}


async def settled_connections(fleet: Fleet, expected: dict[str, int]) -> dict[str, int]:
    """The kernel's count once it equals ``expected``, or after 5 s: a connection of an earlier
    test may still be closing (CI once saw 3 for an expected 2), while a leaked one stays."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        seen = lb_connections(fleet)
        if seen == expected or loop.time() > deadline:
            return seen
        await asyncio.sleep(0.1)


@pytest.fixture
async def adapters(shared_fleet: Fleet) -> AsyncIterator[list[Adapters]]:
    key, hosts = shared_fleet.client_private_key(), shared_fleet.known_hosts()
    made = [Adapters(cluster_spec(shared_fleet, k), key, hosts) for k in range(CLUSTERS)]
    yield made
    for a in made:
        await a.close()
    await sharing.current().aclose()  # nothing left open for the next test's counts


async def test_clusters_on_one_lb_pair_use_one_connection_per_host(
    shared_fleet: Fleet, adapters: list[Adapters]
) -> None:
    specs = [cluster_spec(shared_fleet, k) for k in range(CLUSTERS)]
    views = await asyncio.gather(
        *(lb_view(s, a) for s, a in zip(specs, adapters, strict=True) for _ in range(5))
    )
    for view in views:
        assert not view.errors
        assert all(state == UP for lbs in view.states.values() for state in lbs.values())
    # One executor, one admin session per LB, for all three clusters.
    assert len({id(a.ssh) for a in adapters}) == 1
    assert await settled_connections(shared_fleet, {"lb1": 1, "lb2": 1}) == {"lb1": 1, "lb2": 1}
    gauge = generate_latest(REGISTRY).decode()
    for lb in shared_fleet.lbs:
        assert f'wso2_open_connections{{host="{lb.host}:{lb.ssh_port}",kind="ssh"}} 1.0' in gauge
        assert f'wso2_open_connections{{host="{lb.host}:{lb.ssh_port}",kind="lb"}} 1.0' in gauge


async def test_different_credentials_never_share_a_connection(
    shared_fleet: Fleet, adapters: list[Adapters]
) -> None:
    spec = cluster_spec(shared_fleet, 0)
    await lb_view(spec, adapters[0])
    # The same key, but a known_hosts that trusts differently (one more line): its own executor.
    other_hosts = shared_fleet.known_hosts() + "# pinned by another team\n"
    other = Adapters(spec, shared_fleet.client_private_key(), other_hosts)
    try:
        assert other.ssh is not adapters[0].ssh
        assert not (await lb_view(spec, other)).errors
        assert await settled_connections(shared_fleet, {"lb1": 2, "lb2": 2}) == {"lb1": 2, "lb2": 2}
    finally:
        await other.close()


async def test_an_error_on_one_backend_does_not_fail_another_clusters_step(
    shared_fleet: Fleet, adapters: list[Adapters]
) -> None:
    good = cluster_spec(shared_fleet, 1)
    server = good.node_names[0]
    wrong = cluster_spec(shared_fleet, 0, backend="NO_SUCH_BACKEND")
    key, hosts = shared_fleet.client_private_key(), shared_fleet.known_hosts()
    broken = Adapters(wrong, key, hosts)
    try:
        session = adapters[1].pool.clients[0].transport.shared.inner  # type: ignore[attr-defined]
        await lb_view(good, adapters[1])
        kept = session._writer

        async def failing() -> None:
            for _ in range(10):
                view = await lb_view(wrong, broken)
                assert isinstance(view.errors["lb1"], NoSuchBackend)

        # The other cluster puts its server in MAINT and back while the broken one errs.
        _, done = await asyncio.gather(failing(), adapters[1].pool.maint(good.backend, server))
        assert sorted(done.confirmed) == ["lb1", "lb2"]
        assert (await lb_view(good, adapters[1])).states[server] == {"lb1": MAINT, "lb2": MAINT}
        # Errors were replies to single commands: the shared session was never dropped.
        assert session._writer is kept
        await adapters[1].pool.reenable(good.backend, server, deadline=30)
        assert (await lb_view(good, adapters[1])).states[server] == {"lb1": UP, "lb2": UP}
    finally:
        await broken.close()


async def test_a_dead_connection_is_replaced_once_for_everybody(
    shared_fleet: Fleet, adapters: list[Adapters]
) -> None:
    specs = [cluster_spec(shared_fleet, k) for k in range(CLUSTERS)]
    await asyncio.gather(*(lb_view(s, a) for s, a in zip(specs, adapters, strict=True)))
    executor = adapters[0].ssh
    lb = shared_fleet.lbs[0]
    conn = await executor.connection(lb.host, lb.ssh_port)
    conn.abort()  # the TCP connection is gone, as after an LB host reboot
    await conn.wait_closed()
    views = await asyncio.gather(
        *(lb_view(s, a) for s, a in zip(specs, adapters, strict=True) for _ in range(4))
    )
    assert all(not v.errors and "Unreachable" not in str(v.states) for v in views)
    assert await settled_connections(shared_fleet, {"lb1": 1, "lb2": 1}) == {"lb1": 1, "lb2": 1}
    assert sharing.current().open_connections()["lb", f"{lb.host}:{lb.ssh_port}"] == 1


async def test_the_last_cluster_gone_closes_the_shared_connections(shared_fleet: Fleet) -> None:
    key, hosts = shared_fleet.client_private_key(), shared_fleet.known_hosts()
    spec = cluster_spec(shared_fleet, 2)
    registry = sharing.current()
    registry.executors.idle = registry.sessions.idle = 0.2
    first, second = Adapters(spec, key, hosts), Adapters(spec, key, hosts)
    await asyncio.gather(lb_view(spec, first), lb_view(spec, second))
    assert await settled_connections(shared_fleet, {"lb1": 1, "lb2": 1}) == {"lb1": 1, "lb2": 1}
    await first.close()
    await asyncio.sleep(0.5)
    assert not (await lb_view(spec, second)).errors  # still served by the same connections
    assert await settled_connections(shared_fleet, {"lb1": 1, "lb2": 1}) == {"lb1": 1, "lb2": 1}
    await second.close()
    for _ in range(50):
        if lb_connections(shared_fleet) == {"lb1": 0, "lb2": 0}:
            break
        await asyncio.sleep(0.1)
    assert lb_connections(shared_fleet) == {"lb1": 0, "lb2": 0}
    assert not registry.open_connections()
    await registry.aclose()


async def test_commands_queued_behind_a_dead_lb_fail_with_it_not_one_timeout_each(
    shared_fleet: Fleet, adapters: list[Adapters]
) -> None:
    specs = [cluster_spec(shared_fleet, k) for k in range(CLUSTERS)]
    await asyncio.gather(*(lb_view(s, a) for s, a in zip(specs, adapters, strict=True)))
    lb2 = shared_fleet.lbs[1]
    frozen = sshd_tree(lb2.dir)  # lb2's host stops answering; its session stays open
    signal_all(frozen, signal.SIGSTOP)
    try:
        calls = [
            a.pool.clients[1].servers(s.backend)
            for s, a in zip(specs, adapters, strict=True)
            for _ in range(2)
        ]
        errors = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        signal_all(frozen, signal.SIGCONT)
    assert all(isinstance(e, LBUnreachable) for e in errors), errors
    # One command met the dead LB; the others were told at once (a cluster's two callers share
    # one read, so they share its error too).
    waited = {id(e) for e in errors if "queued ahead" not in str(e)}
    assert len(waited) == 1, errors
    # Back: the next command of any cluster opens a new session and gets an answer.
    assert not (await lb_view(specs[2], adapters[2])).errors

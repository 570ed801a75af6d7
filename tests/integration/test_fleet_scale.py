"""The scale fleet against real sshd, HAProxy 2.6 and stand-in host processes (no mocks).

12 nodes in 3 clusters behind one shared LB pair (one backend and frontend per cluster), plus a
small fleet with an LB pair per cluster. Start-up time is the bench's business (bench.scale).
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.integration.test_fleet import events_since, get, health, wait_for
from wso2_sandbox.fleet_handles import NodeHandle
from wso2_sandbox.fleet_scale import ScaleFleet, ScaleFleetConfig

pytestmark = pytest.mark.timeout(90)

UPDATE_EVENTS = ["stop", "install_start", "install_end", "start", "port_open", "ready"]


@pytest.fixture(scope="module")
def scale() -> Iterator[ScaleFleet]:
    # Four nodes per stand-in host: the 12 nodes share three of them, so the test sees nodes of
    # one host behave apart.
    cfg = ScaleFleetConfig(
        clusters=3, nodes_per_cluster=4, boot_seconds=1.0, ready_gap_seconds=0.5,
        install_seconds=0.1, nodes_per_standin=4,
    )  # fmt: skip
    with ScaleFleet(cfg) as f:
        yield f


def run_ssh(fleet: ScaleFleet, node: NodeHandle, command: str) -> asyncssh.SSHCompletedProcess:
    """One command over SSH as the operator runs it: asyncssh, the fleet's key, strict host keys."""
    ssh = fleet.description["ssh"]

    async def go() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
            node.host,
            port=node.ssh_port,
            username=ssh["user"],
            client_keys=[ssh["private_key_path"]],
            known_hosts=ssh["known_hosts_path"],
        ) as conn:
            return await conn.run(command, check=False)

    return asyncio.run(go())


def test_every_node_has_its_own_address_sshd_and_host_key(scale: ScaleFleet) -> None:
    assert len(scale.nodes) == 12 and len(scale.lb_hosts) == 2
    assert len({n.host for n in scale.nodes} | {lb.host for lb in scale.lb_hosts}) == 14
    keys = [
        " ".join(Path(n.dir, "sshd", "ssh_host_ed25519_key.pub").read_text().split()[:2])
        for n in scale.nodes
    ]
    assert len(set(keys)) == 12
    known = Path(scale.description["ssh"]["known_hosts_path"]).read_text()
    for n, key in zip(scale.nodes, keys, strict=True):
        assert key in known
        r = run_ssh(scale, n, "wso2ctl version && wso2ctl status && echo $NODE_HOME")
        assert r.exit_status == 0, r.stderr
        assert str(r.stdout).split() == ["1.0.0", "running", n.dir]


def test_each_cluster_has_its_own_backend_and_frontend_on_the_shared_pair(
    scale: ScaleFleet,
) -> None:
    for lb in scale.lb_hosts:
        rows = scale.lb_servers(lb)
        assert set(rows) == {c.backend for c in scale.clusters}
        for c in scale.clusters:
            assert set(rows[c.backend]) == {n.name for n in c.nodes}
            assert all(r["status"] == "UP" for r in rows[c.backend].values())
    for c in scale.clusters:
        assert [v.name for v in c.lbs] == ["lb1", "lb2"]
        for view in c.lbs:
            seen: Counter[str] = Counter()
            for _ in range(8):
                status, headers, _ = get(view.url("/"))
                assert status == 200
                seen[headers["X-Node"]] += 1
            assert set(seen) == {n.name for n in c.nodes}, seen
        # The description is what fleet_manifests and the load generator consume.
        desc = c.description()
        assert desc["backend"] == c.backend
        assert [n["name"] for n in desc["nodes"]] == [n.name for n in c.nodes]


def test_one_node_updates_alone_on_a_shared_standin_host(scale: ScaleFleet) -> None:
    node, neighbour = scale.clusters[0].nodes[0], scale.clusters[0].nodes[1]
    assert Path(node.dir, "bin", "wso2ctl").read_text().count("STANDIN_ENDPOINT=") == 1
    t = time.time()
    r = run_ssh(scale, node, "wso2ctl stop")
    assert r.exit_status == 0, r.stderr
    assert health(node) is None  # its listener is gone...
    assert health(neighbour) == 200  # ...the neighbour on the same host still answers
    assert str(run_ssh(scale, node, "wso2ctl status").stdout).strip() == "stopped"
    r = run_ssh(scale, node, "TARGET_VERSION=2.0.0 wso2ctl install && wso2ctl start")
    assert r.exit_status == 0, r.stderr
    wait_for("node ready", lambda: health(node) == 200)
    assert get(node.url("/version"))[2].strip() == "2.0.0"
    assert [e["event"] for e in events_since(node, t)] == UPDATE_EVENTS
    assert all(e["version"] == "2.0.0" for e in events_since(node, t)[1:])
    start, ready = (next(e["t"] for e in events_since(node, t) if e["event"] == k) for k in
                    ("start", "ready"))  # fmt: skip
    assert ready - start >= 1.0  # the configured boot, not the fleet's instant first start
    assert node.installed_version() == "2.0.0" and node.install_count() == 1
    for other in scale.nodes[1:]:
        assert events_since(other, t) == []
        assert get(other.url("/version"))[2].strip() == "1.0.0"
    r = run_ssh(scale, node, "wso2ctl start")
    assert str(r.stdout).strip() == "already running"


def test_stop_cuts_only_that_nodes_requests(scale: ScaleFleet) -> None:
    victim, other = scale.clusters[1].nodes[0], scale.clusters[1].nodes[1]
    outcome: dict[str, object] = {}

    def slow(n: NodeHandle) -> None:
        try:
            with urllib.request.urlopen(n.url("/slow?ms=1500"), timeout=10) as resp:
                outcome[n.name] = resp.status
        except (OSError, urllib.error.URLError) as e:
            outcome[n.name] = type(e).__name__

    threads = [threading.Thread(target=slow, args=(n,)) for n in (victim, other)]
    for th in threads:
        th.start()
    time.sleep(0.3)
    assert run_ssh(scale, victim, "wso2ctl stop").exit_status == 0
    for th in threads:
        th.join()
    assert outcome[other.name] == 200
    assert outcome[victim.name] != 200, outcome
    assert run_ssh(scale, victim, "wso2ctl start").exit_status == 0
    wait_for("victim back", lambda: health(victim) == 200)


def test_faults_and_timing_stay_per_node(scale: ScaleFleet) -> None:
    bad, good = scale.clusters[2].nodes[0], scale.clusters[2].nodes[1]
    bad.set_version_fault("1.0.0", error_percent=100, error_status=503)
    try:
        assert get(bad.url("/"))[0] == 503
        assert get(bad.url("/health"))[0] == 200  # probes still pass, as a bad build's do
        assert get(good.url("/"))[0] == 200
    finally:
        bad.clear_faults()
    assert get(bad.url("/"))[0] == 200


def test_lb_pair_per_cluster_and_clean_teardown() -> None:
    cfg = ScaleFleetConfig(clusters=2, nodes_per_cluster=2, lb_mode="per-cluster")
    fleet = ScaleFleet(cfg).start()
    try:
        assert len(fleet.lb_hosts) == 4
        for c in fleet.clusters:
            for view in c.lbs:
                lb = next(h for h in fleet.lb_hosts if h.name == view.name)
                assert set(fleet.lb_servers(lb)) == {c.backend}
                assert get(view.url("/"))[1]["X-Node"] in {n.name for n in c.nodes}
        assert {v.name for v in fleet.clusters[0].lbs}.isdisjoint(
            {v.name for v in fleet.clusters[1].lbs}
        )
        procs = fleet.processes()
        assert len(procs) >= 4 + 4 + 4  # an sshd per host, a master and worker per HAProxy
    finally:
        fleet.stop()
    assert fleet.processes() == set()
    assert not Path(fleet.base_dir).exists()

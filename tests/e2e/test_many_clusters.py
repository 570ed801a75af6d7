"""Twenty clusters behind one shared LB pair, rolled at once by one operator; one gets stuck.

Each cluster is a backend of two nodes on the same two HAProxy LBs, as at a site where dev,
test and production of several products share one Pacemaker/HAProxy pair. Mid-rollout, the
SSH server of one node of one cluster freezes (SIGSTOP on its sshd and sessions: the node's
install hangs, as behind a dead network path). The other nineteen must finish while that one is
still stuck, and the stuck one must say why. An LB sampler reads both LBs' `show stat` for the
whole run: no cluster ever has more nodes out of rotation than its own maxUnavailable (1).
The operator holds one SSH connection per LB host for all twenty clusters: counted by the kernel
and by the operator's own wso2_open_connections gauge.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Kube, ready_at, wait_for
from tests.e2e.conftest import FAST, LBSampler, OperatorProcess
from tests.e2e.test_faults import signal_all, sshd_tree
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.fleet_handles import NodeHandle
from wso2_sandbox.manifest import fleet_manifests
from wso2_sandbox.sandbox_operator import _free_port
from wso2_sandbox.tcp_peers import tcp_peers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLUSTERS = 20
STUCK = "c01"
# The stuck node's install: long enough to be caught in it.
STUCK_INSTALL_SECONDS = 5.0


def freeze_in_install(node: NodeHandle, frozen: list[int]) -> None:
    """SIGSTOP the node's sshd and its sessions once its install has started (pids into
    ``frozen``, for the SIGCONT at the end)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(e["event"] == "install_start" for e in node.events()):
            frozen.extend(sshd_tree(node.dir))
            signal_all(frozen, signal.SIGSTOP)
            return
        time.sleep(0.02)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet(FleetConfig(nodes=2 * CLUSTERS, backends=CLUSTERS, **FAST)) as f:
        yield f


def test_twenty_clusters_on_one_lb_pair_roll_at_once_and_a_stuck_one_delays_none(
    kube: Kube, fleet: Fleet, tmp_path: Path
) -> None:
    ns = kube.new_namespace("many")
    groups = fleet.description["backends"]  # backend -> its two nodes, in fleet order
    clusters = {f"c{k:02d}": backend for k, backend in enumerate(groups, start=1)}
    members = {name: groups[backend] for name, backend in clusters.items()}
    for name, backend in clusters.items():
        docs = fleet_manifests(
            fleet.description, name=name, namespace=ns, nodes=groups[backend], backend=backend
        )
        if name == STUCK:
            # A hung command is found out after 10 s, and the node gives up after 30.
            docs[1]["spec"]["provision"]["timeoutSeconds"] = 10
            docs[1]["spec"]["update"].update(drainTimeoutSeconds=20, progressDeadlineSeconds=30)
        for doc in docs:
            kube.apply(doc)
    metrics_port = _free_port()
    op = OperatorProcess(
        kube.kubeconfig,
        ns,
        tmp_path / "operator.log",
        args=[f"--metrics-port={metrics_port}", "--metrics-address=127.0.0.1"],
    )

    def get(name: str) -> dict:
        return kube.get_json("w2c", name, "-n", ns)

    def info() -> str:
        return f"{json.dumps(get(STUCK).get('status'))[:3000]}\n{op.log()[-3000:]}"

    stuck_node = fleet.node(members[STUCK][0])
    frozen: list[int] = []
    try:
        op.start()
        for name in clusters:
            wait_for(f"{name} Ready at 1.0.0", lambda n=name: ready_at(get(n), "1.0.0"), 120, info)
        stuck_node.set_timing(install_seconds=STUCK_INSTALL_SECONDS)
        with LBSampler(fleet) as sampler:
            # The freeze comes from a thread, the moment the install starts: patching twenty
            # clusters one kubectl at a time takes longer than the install.
            freezer = threading.Thread(target=freeze_in_install, args=(stuck_node, frozen))
            freezer.start()
            for name in clusters:  # the stuck one first: the others roll after its freeze
                kube.run("patch", "w2c", name, "-n", ns, "--type=merge",
                         "-p", json.dumps({"spec": {"version": "2.0.0"}}))  # fmt: skip
            freezer.join(timeout=120)
            assert frozen, f"{stuck_node.name} never started its install\n{info()}"

            others = [n for n in clusters if n != STUCK]
            for name in others:
                wait_for(
                    f"{name} Ready at 2.0.0", lambda n=name: ready_at(get(n), "2.0.0"), 300, info
                )
            # The nineteen finished while the stuck one has not: it delayed none of them.
            assert not ready_at(get(STUCK), "2.0.0")
            assert stuck_node.install_count() == 0

            def reason() -> str:
                rows = {r["name"]: r for r in get(STUCK)["status"].get("nodes", [])}
                row = rows[stuck_node.name]
                return row.get("phase") == "Failed" and row.get("message", "")

            message = wait_for(f"{STUCK} to report why", reason, 120, info)
            assert stuck_node.name in message
            assert "progressDeadlineSeconds" in message or "timed out" in message, message

            # One SSH connection per LB host for all twenty clusters, by the kernel's count
            # and by the operator's own gauge.
            assert op.proc is not None
            peers = tcp_peers(op.proc.pid)
            assert {lb.name: peers[(lb.host, lb.ssh_port)] for lb in fleet.lbs} == {
                "lb1": 1,
                "lb2": 1,
            }
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                scraped = r.read().decode()
            for lb in fleet.lbs:
                for kind in ("ssh", "lb"):
                    line = f'wso2_open_connections{{host="{lb.host}:{lb.ssh_port}",kind="{kind}"}}'
                    assert f"{line} 1.0" in scraped
    finally:
        signal_all(frozen, signal.SIGCONT)
        op.stop()

    # Never more nodes out than a cluster's own maxUnavailable, on any LB, at any sample.
    assert len(sampler.samples) > 100
    worst = {
        name: max(len(sampler.out_of_rotation(snap) & set(nodes)) for _, snap in sampler.samples)
        for name, nodes in members.items()
    }
    assert worst == dict.fromkeys(clusters, 1), worst
    # Every other cluster's nodes were installed once; the stuck cluster held its rollout
    # (failurePolicy Pause), so its second node was never touched.
    installs = {n.name: n.install_count() for n in fleet.nodes}
    expected = {n: 0 if n in members[STUCK] else 1 for n in installs}
    assert installs == expected

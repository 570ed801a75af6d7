"""Two shards on one control plane: each operator updates its own clusters, once, and no other.

Four clusters (one backend each on a shared LB pair) in one namespace, two labelled shard=a and
two shard=b; two operators run with `--selector shard=a` and `--selector shard=b`, each with
mandatory kopf peering on its own peering object, as two Deployments would. Who acted is read
from each node's own install log (wso2ctl), from the clusters' finalizers, from the peering
objects, and from each operator's log (kopf prefixes every line about an object with
"[ns/name]", and an object outside the shard produces none).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Kube, ready_at, wait_for
from tests.e2e.conftest import FAST, OperatorProcess
from wso2_operator.shard import FINALIZER, parse_selector
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.manifest import fleet_manifests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PEERING_CRDS = REPO / "manifests" / "crds" / "kopf-peerings.yaml"
SHARDS = {"a": ["c1", "c2"], "b": ["c3", "c4"]}


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet(FleetConfig(nodes=4, backends=4, **FAST)) as f:
        yield f


def test_each_shard_updates_only_its_own_clusters_once(
    kube: Kube, fleet: Fleet, tmp_path: Path
) -> None:
    ns = kube.new_namespace("shards")
    kube.run("apply", "-f", str(PEERING_CRDS))
    kube.run("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    groups = fleet.description["backends"]
    backend_of = dict(zip(["c1", "c2", "c3", "c4"], sorted(groups), strict=True))
    for shard, clusters in SHARDS.items():
        for name in clusters:
            docs = fleet_manifests(
                fleet.description,
                name=name,
                namespace=ns,
                nodes=groups[backend_of[name]],
                backend=backend_of[name],
            )
            docs[1]["metadata"]["labels"] = {"shard": shard}
            # As left by an operator from before sharding: no shard may leave it behind.
            docs[1]["metadata"]["finalizers"] = [FINALIZER]
            for doc in docs:
                kube.apply(doc)

    operators = {
        shard: OperatorProcess(
            kube.kubeconfig,
            ns,
            tmp_path / f"operator-{shard}.log",
            args=[
                "--verbose",
                f"--selector=shard={shard}",
                f"--peering={parse_selector(f'shard={shard}').peering}",
            ],
            standalone=False,
        )
        for shard in SHARDS
    }

    def get(name: str) -> dict:
        return kube.get_json("w2c", name, "-n", ns)

    def logs() -> str:
        return "\n".join(f"--- {s} ---\n{op.log()[-3000:]}" for s, op in operators.items())

    try:
        for op in operators.values():
            op.start()
        all_clusters = [c for cs in SHARDS.values() for c in cs]
        for name in all_clusters:
            wait_for(f"{name} Ready at 1.0.0", lambda n=name: ready_at(get(n), "1.0.0"), 90, logs)
        for name in all_clusters:
            kube.run("patch", "w2c", name, "-n", ns, "--type=merge",
                     "-p", json.dumps({"spec": {"version": "2.0.0"}}))  # fmt: skip
        for name in all_clusters:
            wait_for(f"{name} Ready at 2.0.0", lambda n=name: ready_at(get(n), "2.0.0"), 120, logs)
        # Each shard keeps its own peering object, with itself as the only peer.
        for shard in SHARDS:
            peering = kube.get_json(
                "kopfpeering", parse_selector(f"shard={shard}").peering, "-n", ns
            )
            assert len(peering.get("status") or {}) == 1, (shard, peering)
    finally:
        for op in operators.values():
            op.stop()

    # Every node was installed exactly once: nobody else touched it, nobody did it twice.
    assert {n.name: n.install_count() for n in fleet.nodes} == dict.fromkeys(
        [n.name for n in fleet.nodes], 1
    )
    for shard, clusters in SHARDS.items():
        own = parse_selector(f"shard={shard}")
        # Only this shard's finalizer on its clusters (a shared name would have been stripped
        # by the other shard's kopf, which does not handle them), the unsharded one gone.
        for name in clusters:
            assert get(name)["metadata"].get("finalizers") == [own.finalizer], name
        log = operators[shard].log()
        assert f"shard {own.name}: handling the WSO2Clusters with labels shard={shard}" in log
        for name in all_clusters:
            mentioned = f"[{ns}/{name}]" in log
            assert mentioned == (name in clusters), (shard, name)

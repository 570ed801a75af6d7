"""manifests/overlays/shards/: two operator Deployments splitting the WSO2Clusters by label.

Rendered with the real kustomize (kubectl kustomize). Checked: the shards' selectors are
disjoint and cover every cluster, neither Deployment's selector matches the other's pods, each
shard may patch exactly its own peering object, and the two Deployments differ only in what
makes them two shards (so the copy cannot drift from the base).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.integration.test_manifests import MANIFESTS, find, rendered
from wso2_operator.__main__ import own_args
from wso2_operator.shard import parse_selector

SHARDS = MANIFESTS / "overlays" / "shards"
Obj = dict[str, Any]


def shard_of(deployment: Obj) -> tuple[str, str]:
    """(selector, peering name) from the operator container's args."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args, rest = own_args(container["args"])
    (peering,) = [a.split("=", 1)[1] for a in rest if a.startswith("--peering=")]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("WSO2_PEERING_NAME") == peering
    return args.selector, peering


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_two_shards_split_every_cluster_and_each_has_its_own_peering() -> None:
    objs = rendered(SHARDS)
    first = find(objs, "Deployment", "wso2-operator")
    second = find(objs, "Deployment", "wso2-operator-shard-b")
    shards = {name: shard_of(d) for name, d in (("first", first), ("second", second))}
    assert shards == {
        "first": ("shard!=b", "wso2-operator"),
        "second": ("shard=b", "wso2-operator-shard-b"),
    }
    # Every cluster, labelled or not, belongs to exactly one shard.
    for labels in ({}, {"shard": "a"}, {"shard": "b"}, {"shard": "c"}, {"team": "b"}):
        owners = [n for n, (sel, _) in shards.items() if parse_selector(sel).matches(labels)]
        assert len(owners) == 1, (labels, owners)
    # Each Deployment's ReplicaSets own only their own pods.
    for mine, other in ((first, second), (second, first)):
        pods = other["spec"]["template"]["metadata"]["labels"]
        assert not matches(mine["spec"]["selector"]["matchLabels"], pods)
        assert matches(
            mine["spec"]["selector"]["matchLabels"], mine["spec"]["template"]["metadata"]["labels"]
        )
    # Each may get and patch its own peering object (the base role only wso2-operator's).
    allowed = {
        name: [
            r["resourceNames"]
            for r in find(objs, "ClusterRole", name)["rules"]
            if r.get("resourceNames") and "clusterkopfpeerings" in r["resources"]
        ]
        for name in ("wso2-operator", "wso2-operator-shard-b")
    }
    assert allowed == {
        "wso2-operator": [["wso2-operator"]],
        "wso2-operator-shard-b": [["wso2-operator-shard-b"]],
    }
    binding = find(objs, "ClusterRoleBinding", "wso2-operator-shard-b")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "wso2-operator", "namespace": "wso2-operator"}
    ]
    # Both pods are under a NetworkPolicy.
    for d in (first, second):
        pods = d["spec"]["template"]["metadata"]["labels"]
        assert any(
            matches(np["spec"]["podSelector"]["matchLabels"], pods)
            for np in objs
            if np["kind"] == "NetworkPolicy"
        )


def test_the_second_shard_is_the_base_deployment_but_for_what_makes_it_a_shard() -> None:
    objs = rendered(SHARDS)
    base = find(rendered(), "Deployment", "wso2-operator")

    def essence(d: Obj) -> Obj:
        d = copy.deepcopy(d)
        d["metadata"] = {"namespace": d["metadata"]["namespace"]}
        spec = d["spec"]
        del spec["selector"], spec["template"]["metadata"]["labels"]
        del spec["template"]["spec"]["affinity"]
        (container,) = spec["template"]["spec"]["containers"]
        container["args"] = [
            a for a in container["args"] if not a.startswith(("--selector=", "--peering="))
        ]
        container["env"] = [e for e in container["env"] if e["name"] != "WSO2_PEERING_NAME"]
        return d

    for name in ("wso2-operator", "wso2-operator-shard-b"):
        assert essence(find(objs, "Deployment", name)) == essence(base), name

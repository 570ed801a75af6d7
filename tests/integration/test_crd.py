"""The WSO2Cluster CRD against a real kube-apiserver: install, defaults, validation messages,
the status subresource, printer columns, explain, pruning and the generated reference doc.

One namespace is shared by the whole module; every test uses its own object names in it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import CRD, REPO, Kube

EXAMPLE = REPO / "manifests" / "examples" / "wso2cluster.yaml"
CRD_DOC_SCRIPT = REPO / "hack" / "crd_doc.py"
CRD_NAME = "wso2clusters.vmops.dev"
API_VERSION = "vmops.dev/v1alpha1"

Spec = dict[str, Any]


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def minimal_spec() -> Spec:
    """The smallest valid spec: three nodes, one TCP-socket LB, everything else defaulted."""
    return {
        "version": "1.0.0",
        "nodes": [
            {"name": "node1", "host": "10.0.0.1"},
            {"name": "node2", "host": "10.0.0.2"},
            {"name": "node3", "host": "10.0.0.3"},
        ],
        "ssh": {"user": "ansible", "secretRef": {"name": "ssh"}},
        "loadBalancers": {"backend": "be", "hosts": [{"name": "lb1", "address": "10.0.0.9:9999"}]},
        "provision": {"commands": ["true"], "versionCommand": "cat /opt/VERSION"},
    }


def cluster(name: str, spec: Spec | None = None) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "WSO2Cluster",
        "metadata": {"name": name},
        "spec": minimal_spec() if spec is None else spec,
    }


@pytest.fixture(scope="module")
def ns(kube: Kube) -> str:
    return kube.new_namespace("crd")


def create(kube: Kube, ns: str, name: str, spec: Spec | None = None) -> dict[str, Any]:
    kube.apply(cluster(name, spec), namespace=ns)
    return kube.get_json("w2c", name, "-n", ns)


def patch_status(kube: Kube, ns: str, name: str, status: dict, check: bool = True):
    return kube.run(
        "patch", "w2c", name, "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=check,
    )  # fmt: skip


def table(text: str) -> list[dict[str, str]]:
    """Parse kubectl's column output by the header's column offsets (cells may be empty)."""
    header, *rows = text.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{n: row[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for row in rows]


def squash(text: str) -> str:
    return " ".join(text.split())


# --- 1. install, example, defaults ------------------------------------------------------------


def test_crd_is_established(kube: Kube) -> None:
    crd = kube.get_json("crd", CRD_NAME)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert "NonStructuralSchema" not in conditions
    accepted = crd["status"]["acceptedNames"]
    assert accepted["kind"] == "WSO2Cluster"
    assert accepted["shortNames"] == ["w2c"]
    assert accepted["categories"] == ["vmops"]


def _contains(actual: Any, expected: Any, path: str = "") -> None:
    """Every value in expected is in actual (dicts by key, lists by index)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        for k, v in expected.items():
            assert k in actual, f"{path}.{k} missing"
            _contains(actual[k], v, f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _contains(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def test_example_is_accepted(kube: Kube, ns: str) -> None:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert [d["kind"] for d in docs] == ["Secret", "WSO2Cluster"]
    for doc in docs:
        doc["metadata"]["namespace"] = ns
        kube.apply(doc)
    example = docs[1]
    secret = kube.get_json("secret", example["spec"]["ssh"]["secretRef"]["name"], "-n", ns)
    assert set(secret["data"]) == {"ssh-privatekey", "known_hosts"}

    got = kube.get_json("w2c", example["metadata"]["name"], "-n", ns)
    _contains(got["spec"], example["spec"])
    # What the example leaves out is defaulted, and it names the Secret keys the defaults expect.
    assert [n["sshPort"] for n in got["spec"]["nodes"]] == [22, 22, 22]
    assert [h["sshPort"] for h in got["spec"]["loadBalancers"]["hosts"]] == [22, 22]
    ref = got["spec"]["ssh"]["secretRef"]
    assert (ref["privateKeyKey"], ref["knownHostsKey"]) == ("ssh-privatekey", "known_hosts")


def test_minimal_spec_gets_defaults(kube: Kube, ns: str) -> None:
    spec = create(kube, ns, "defaults")["spec"]
    assert [n["sshPort"] for n in spec["nodes"]] == [22, 22, 22]
    assert spec["ssh"]["connectTimeoutSeconds"] == 10
    assert spec["ssh"]["secretRef"] == {
        "name": "ssh",
        "privateKeyKey": "ssh-privatekey",
        "knownHostsKey": "known_hosts",
    }
    assert spec["loadBalancers"]["tolerateUnreachable"] is False
    assert spec["loadBalancers"]["hosts"][0]["sshPort"] == 22
    assert spec["provision"]["timeoutSeconds"] == 600
    assert spec["healthCheck"] == {
        "port": 8243,
        "scheme": "HTTPS",
        "path": "/health",
        "expectedStatus": 200,
        "periodSeconds": 1,
        "timeoutSeconds": 2,
        "healthyDeadlineSeconds": 300,
    }
    assert spec["update"] == {
        "maxUnavailable": 1,
        "drainTimeoutSeconds": 300,
        "onDrainTimeout": "Fail",
        "minReadySeconds": 0,
        "progressDeadlineSeconds": 1800,
        "failurePolicy": "Pause",
        "paused": False,
        "rampSeconds": 0,
    }


def _check_defaults(schema: dict, sent: Any, stored: Any, path: str) -> list[str]:
    """Every default in the schema is applied wherever the sent object left the field out."""
    problems: list[str] = []
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        for i, (s, t) in enumerate(zip(sent, stored, strict=True)):
            problems += _check_defaults(schema["items"], s, t, f"{path}[{i}]")
        return problems
    for name, sub in schema.get("properties", {}).items():
        where = f"{path}.{name}"
        if name in sent:
            problems += _check_defaults(sub, sent[name], stored.get(name), where)
        elif "default" in sub:
            if name not in stored:
                problems.append(f"{where}: default {sub['default']!r} not applied")
            elif isinstance(sub["default"], dict):
                problems += _check_defaults(sub, {}, stored[name], where)
            elif stored[name] != sub["default"]:
                problems.append(f"{where}: {stored[name]!r} != default {sub['default']!r}")
    return problems


def _partial(spec: Spec) -> Spec:
    spec["healthCheck"] = {"port": 9443, "scheme": "HTTP"}
    spec["update"] = {"maxUnavailable": "34%", "paused": True}
    spec["nodes"][1]["sshPort"] = 2222
    return spec


@pytest.mark.parametrize(
    ("name", "spec"),
    [("every-default", minimal_spec()), ("partial-defaults", _partial(minimal_spec()))],
)
def test_every_schema_default_is_applied(kube: Kube, ns: str, name: str, spec: Spec) -> None:
    stored = create(kube, ns, name, copy.deepcopy(spec))["spec"]
    assert _check_defaults(_schema()["properties"]["spec"], spec, stored, "spec") == []
    # And nothing that was sent is overwritten by a default.
    _contains(stored, spec)


# --- 2. invalid specs are rejected with a message that names the field ------------------------

Mutation = Callable[[Spec], object]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets spec.<path> (dotted, with list indices) to value."""

    def mutate(spec: Spec) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = spec
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(p, str) else node[p]
        node[last] = value

    return mutate


def _drop(path: str) -> Mutation:
    """A mutation that deletes spec.<path>."""

    def mutate(spec: Spec) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = spec
        for p in parents:
            node = node[p]
        del node[last]

    return mutate


def _lb(**host: Any) -> Mutation:
    return _set("loadBalancers.hosts", [{"name": "lb1", **host}])


MAX_UNAVAILABLE_RANGE = "must be at least 1 (or 1%)"
LEAVE_ONE = "must leave at least one node serving"
WHOLE_OR_PERCENT = "must be a whole number such as 1, or a percentage"

INVALID: list[tuple[str, Mutation, list[str]]] = [
    (
        "duplicate-node-names",
        lambda s: s["nodes"].append({"name": "node1", "host": "10.0.0.4"}),
        ["spec.nodes[3]", "Duplicate value", '"name":"node1"'],
    ),
    ("version-injection", _set("version", "1.0; rm -rf /"), ["spec.version", "should match"]),
    ("version-empty", _set("version", ""), ["spec.version", "should match"]),
    ("version-too-long", _set("version", "1" * 65), ["spec.version", "Too long"]),
    ("version-not-string", _set("version", 6.6), ["spec.version", "must be of type string"]),
    (
        "max-unavailable-0",
        _set("update.maxUnavailable", 0),
        ["spec.update.maxUnavailable", MAX_UNAVAILABLE_RANGE],
    ),
    (
        "max-unavailable-negative",
        _set("update.maxUnavailable", -1),
        ["spec.update.maxUnavailable", MAX_UNAVAILABLE_RANGE],
    ),
    (
        "max-unavailable-all-3-nodes",
        _set("update.maxUnavailable", 3),
        ["spec.update.maxUnavailable", LEAVE_ONE],
    ),
    (
        "max-unavailable-100pct-3-nodes",
        _set("update.maxUnavailable", "100%"),
        ["spec.update.maxUnavailable", LEAVE_ONE],
    ),
    (
        "max-unavailable-0pct",
        _set("update.maxUnavailable", "0%"),
        ["spec.update.maxUnavailable", MAX_UNAVAILABLE_RANGE],
    ),
    (
        "max-unavailable-abc",
        _set("update.maxUnavailable", "abc"),
        ["spec.update.maxUnavailable", '"abc"', WHOLE_OR_PERCENT],
    ),
    (
        "max-unavailable-string-number",
        _set("update.maxUnavailable", "2"),
        ["spec.update.maxUnavailable", WHOLE_OR_PERCENT],
    ),
    (
        "max-unavailable-150pct",
        _set("update.maxUnavailable", "150%"),
        ["spec.update.maxUnavailable", "up to 100%"],
    ),
    (
        "max-unavailable-fraction",
        _set("update.maxUnavailable", 1.5),
        ["spec.update.maxUnavailable", "must be of type integer"],
    ),
    (
        "lb-socket-and-address",
        _lb(host="lb1.example", socket="/var/lib/haproxy/stats", address="10.0.0.9:9999"),
        ["spec.loadBalancers.hosts[0]", "set exactly one of socket"],
    ),
    (
        "lb-neither-socket-nor-address",
        _lb(host="lb1.example"),
        ["spec.loadBalancers.hosts[0]", "set exactly one of socket"],
    ),
    (
        "lb-socket-without-host",
        _lb(socket="/var/lib/haproxy/stats"),
        ["spec.loadBalancers.hosts[0].host", "host is required with socket"],
    ),
    (
        "lb-socket-relative-path",
        _lb(host="lb1.example", socket="var/lib/haproxy/stats"),
        ["spec.loadBalancers.hosts[0].socket", "should match"],
    ),
    (
        "lb-address-without-port",
        _lb(address="10.0.0.9"),
        ["spec.loadBalancers.hosts[0].address", "should match"],
    ),
    (
        "lb-address-port-70000",
        _lb(address="10.0.0.1:70000"),
        ["spec.loadBalancers.hosts[0].address", "a port from 1 to 65535"],
    ),
    (
        "lb-address-port-0",
        _lb(address="10.0.0.1:0"),
        ["spec.loadBalancers.hosts[0].address", "a port from 1 to 65535"],
    ),
    (
        "lb-address-ipv6-without-brackets",
        _lb(address="fd00::1:9999"),
        ["spec.loadBalancers.hosts[0].address", "IPv6 address in brackets"],
    ),
    (
        "lb-duplicate-address",
        lambda s: s["loadBalancers"].update(
            hosts=[{"name": n, "address": "10.0.0.5:9999"} for n in ("lb1", "lb2")]
        ),
        ["spec.loadBalancers.hosts", "must not have the same address"],
    ),
    (
        "lb-duplicate-socket-on-host",
        lambda s: s["loadBalancers"].update(
            hosts=[{"name": n, "host": "lb.example", "socket": "/run/stats"} for n in ("a", "b")]
        ),
        ["spec.loadBalancers.hosts", "must not name the same socket on the same host"],
    ),
    (
        "progress-deadline-below-drain-timeout",
        _set("update.progressDeadlineSeconds", 10),
        ["spec.update.progressDeadlineSeconds", "must be longer than drainTimeoutSeconds"],
    ),
    (
        "lb-duplicate-names",
        lambda s: s["loadBalancers"]["hosts"].append({"name": "lb1", "address": "10.0.0.8:1"}),
        ["spec.loadBalancers.hosts[1]", "Duplicate value", '"name":"lb1"'],
    ),
    ("lb-hosts-empty", _set("loadBalancers.hosts", []), ["spec.loadBalancers.hosts", "at least 1"]),
    (
        "lb-backend-missing",
        _drop("loadBalancers.backend"),
        ["spec.loadBalancers.backend", "Required"],
    ),
    ("nodes-empty", _set("nodes", []), ["spec.nodes", "at least 1 items"]),
    (
        "nodes-101",
        _set("nodes", [{"name": f"n{i}", "host": f"10.0.1.{i}"} for i in range(101)]),
        ["spec.nodes", "must have at most 100 items"],
    ),
    ("nodes-missing", _drop("nodes"), ["spec.nodes", "Required value"]),
    (
        "node-name-with-space",
        _set("nodes.0.name", "node 1"),
        ["spec.nodes[0].name", "should match"],
    ),
    ("node-host-missing", _drop("nodes.0.host"), ["spec.nodes[0].host", "Required value"]),
    (
        "node-ssh-port-70000",
        _set("nodes.0.sshPort", 70000),
        ["spec.nodes[0].sshPort", "less than or equal to 65535"],
    ),
    (
        "node-duplicate-host-default-port",
        _set("nodes.1.host", "10.0.0.1"),
        ["spec.nodes", "must not list the same host and sshPort twice"],
    ),
    (
        "node-duplicate-host-explicit-port",
        lambda s: [n.update(host="db.example", sshPort=2222) for n in s["nodes"][:2]],
        ["spec.nodes", "must not list the same host and sshPort twice"],
    ),
    (
        "connect-timeout-negative",
        _set("ssh.connectTimeoutSeconds", -1),
        ["spec.ssh.connectTimeoutSeconds", "greater than or equal to 1"],
    ),
    (
        "drain-timeout-0",
        _set("update.drainTimeoutSeconds", 0),
        ["spec.update.drainTimeoutSeconds", "greater than or equal to 1"],
    ),
    (
        "progress-deadline-negative",
        _set("update.progressDeadlineSeconds", -5),
        ["spec.update.progressDeadlineSeconds", "greater than or equal to 1"],
    ),
    (
        "min-ready-negative",
        _set("update.minReadySeconds", -1),
        ["spec.update.minReadySeconds", "greater than or equal to 0"],
    ),
    (
        "failure-policy-unknown",
        _set("update.failurePolicy", "Ignore"),
        ["spec.update.failurePolicy", "Unsupported value", '"Pause", "Rollback"'],
    ),
    (
        "on-drain-timeout-unknown",
        _set("update.onDrainTimeout", "Wait"),
        ["spec.update.onDrainTimeout", "Unsupported value"],
    ),
    (
        "paused-not-bool",
        _set("update.paused", "yes"),
        ["spec.update.paused", "must be of type boolean"],
    ),
    (
        "health-scheme-ftp",
        _set("healthCheck.scheme", "FTP"),
        ["spec.healthCheck.scheme", "Unsupported value", '"HTTP", "HTTPS"'],
    ),
    (
        "health-path-relative",
        _set("healthCheck.path", "health"),
        ["spec.healthCheck.path", "should match"],
    ),
    (
        "health-status-99",
        _set("healthCheck.expectedStatus", 99),
        ["spec.healthCheck.expectedStatus", "greater than or equal to 100"],
    ),
    (
        "health-period-0",
        _set("healthCheck.periodSeconds", 0),
        ["spec.healthCheck.periodSeconds", "must be at least 0.1"],
    ),
    (
        "health-timeout-0.05",
        _set("healthCheck.timeoutSeconds", 0.05),
        ["spec.healthCheck.timeoutSeconds", "must be at least 0.1"],
    ),
    (
        "provision-commands-missing",
        _drop("provision.commands"),
        ["spec.provision", "set exactly one of provision.commands or provision.ansible"],
    ),
    (
        "provision-commands-empty",
        _set("provision.commands", []),
        ["spec.provision.commands", "at least 1"],
    ),
    (
        "provision-command-empty-string",
        _set("provision.commands", [""]),
        ["spec.provision.commands[0]", "at least 1 chars"],
    ),
    (
        "provision-version-command-missing",
        _drop("provision.versionCommand"),
        ["spec.provision.versionCommand", "Required value"],
    ),
    ("ssh-missing", _drop("ssh"), ["spec.ssh", "Required value"]),
    ("ssh-user-uppercase", _set("ssh.user", "Root"), ["spec.ssh.user", "should match"]),
    (
        "ssh-secret-name-empty",
        _set("ssh.secretRef.name", ""),
        ["spec.ssh.secretRef.name", "at least 1"],
    ),
    ("unknown-field", _set("updates", {"paused": True}), ['unknown field "spec.updates"']),
    ("step-nodes-0", _set("update.steps", [{"nodes": 0}]), ["spec.update.steps[0].nodes", "1"]),
    (
        "step-nodes-101-percent",
        _set("update.steps", [{"nodes": "101%"}]),
        ["spec.update.steps[0].nodes", "should match"],
    ),
    (
        "step-nodes-0-percent",
        _set("update.steps", [{"nodes": "0%"}]),
        ["spec.update.steps[0].nodes", "should match"],
    ),
    (
        "step-nodes-word",
        _set("update.steps", [{"nodes": "half"}]),
        ["spec.update.steps[0].nodes", "should match"],
    ),
    (
        "step-both-nodes-and-pause",
        _set("update.steps", [{"nodes": 1, "pause": {}}]),
        ["spec.update.steps[0]", "exactly one of nodes or pause"],
    ),
    (
        "step-empty",
        _set("update.steps", [{}]),
        ["spec.update.steps[0]", "exactly one of nodes or pause"],
    ),
    (
        "step-nodes-decrease",
        _set("update.steps", [{"nodes": 2}, {"pause": {}}, {"nodes": 1}]),
        ["spec.update.steps", "must not decrease"],
    ),
    (
        "step-percent-decrease",
        _set("update.steps", [{"nodes": "67%"}, {"nodes": 1}]),
        ["spec.update.steps", "must not decrease"],
    ),
    (
        "step-pause-zero",
        _set("update.steps", [{"pause": {"durationSeconds": 0}}]),
        ["spec.update.steps[0].pause.durationSeconds", "greater than or equal to 1"],
    ),
    (
        "step-pause-extra-field",
        _set("update.steps", [{"pause": {"duration": 60}}]),
        ['unknown field "spec.update.steps[0].pause.duration"'],
    ),
    (
        "analysis-min-requests-0",
        _set("update.analysis", {"minRequests": 0}),
        ["spec.update.analysis.minRequests", "greater than or equal to 1"],
    ),
    (
        "ramp-negative",
        _set("update.rampSeconds", -1),
        ["spec.update.rampSeconds", "greater than or equal to 0"],
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [pytest.param(m, e, id=i) for i, m, e in INVALID])
def test_invalid_spec_is_rejected(
    kube: Kube, ns: str, request: pytest.FixtureRequest, mutate: Mutation, expected: list[str]
) -> None:
    spec = minimal_spec()
    mutate(spec)
    name = "bad-" + request.node.callspec.id
    proc = kube.apply(cluster(name, spec), namespace=ns, check=False)
    assert proc.returncode != 0, f"accepted: {proc.stdout}"
    for text in expected:
        assert text in proc.stderr, f"{text!r} not in:\n{proc.stderr}"
    # A CEL rule must never fail at runtime (a type error reads as gibberish to the user).
    assert "error evaluating rule" not in proc.stderr
    assert "type conversion error" not in proc.stderr


def test_invalid_cases_are_distinct() -> None:
    ids = [i for i, _, _ in INVALID]
    assert len(ids) == len(set(ids)) and len(ids) >= 20


def _nodes(n: int) -> Mutation:
    return _set("nodes", [{"name": f"node{i}", "host": f"10.0.0.{i}"} for i in range(1, n + 1)])


def _both(*mutations: Mutation) -> Mutation:
    def mutate(spec: Spec) -> None:
        for m in mutations:
            m(spec)

    return mutate


VALID: list[tuple[str, Mutation]] = [
    ("one-node-max-unavailable-1", _both(_nodes(1), _set("update.maxUnavailable", 1))),
    ("one-node-max-unavailable-100pct", _both(_nodes(1), _set("update.maxUnavailable", "100%"))),
    ("four-nodes-50pct", _both(_nodes(4), _set("update.maxUnavailable", "50%"))),
    ("three-nodes-max-unavailable-2", _set("update.maxUnavailable", 2)),
    ("three-nodes-1pct", _set("update.maxUnavailable", "1%")),
    ("three-nodes-99pct", _set("update.maxUnavailable", "99%")),
    ("hundred-nodes", _nodes(100)),
    (
        "same-host-other-ssh-port",
        lambda s: [
            n.update(host="vm.example", sshPort=p)
            for n, p in zip(s["nodes"], (22, 23, 24), strict=True)
        ],
    ),
    (
        "lb-unix-socket",
        _lb(host="lb1.example", sshPort=2222, socket="/var/lib/haproxy/stats"),
    ),
    ("lb-ipv6-address", _lb(address="[fd00::9]:9999")),
    ("lb-address-port-65535", _lb(address="haproxy-admin.example:65535")),
    (
        "same-socket-on-two-hosts",
        lambda s: s["loadBalancers"].update(
            hosts=[{"name": n, "host": f"{n}.example", "socket": "/run/stats"} for n in ("a", "b")]
        ),
    ),
    ("version-with-plus", _set("version", "6.6.0+update42")),
    ("rollback-policy", _set("update.failurePolicy", "Rollback")),
    (
        "canary-steps",
        _set(
            "update.steps",
            [{"nodes": 1}, {"pause": {"durationSeconds": 60}}, {"nodes": "67%"}, {"pause": {}}],
        ),
    ),
    ("canary-100-percent", _set("update.steps", [{"nodes": "100%"}])),
    (
        "analysis-full",
        _set(
            "update.analysis",
            {
                "intervalSeconds": 5,
                "minRequests": 10,
                "failureLimit": 1,
                "successWindows": 2,
                "inconclusiveLimit": 3,
                "maxErrorPercent": 0.5,
                "maxErrorRatio": 1.5,
                "maxResponseTimeRatio": 1.2,
            },
        ),
    ),
    ("health-period-fraction", _set("healthCheck.periodSeconds", 0.1)),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=i) for i, m in VALID])
def test_valid_edge_is_accepted(
    kube: Kube, ns: str, request: pytest.FixtureRequest, mutate: Mutation
) -> None:
    spec = minimal_spec()
    mutate(spec)
    got = create(kube, ns, "ok-" + request.node.callspec.id, copy.deepcopy(spec))
    _contains(got["spec"], spec)


# --- 3. the status subresource and metadata.generation ----------------------------------------


def test_status_patch_does_not_bump_generation(kube: Kube, ns: str) -> None:
    obj = create(kube, ns, "generation")
    assert obj["metadata"]["generation"] == 1

    patch_status(kube, ns, "generation", {"phase": "Ready", "observedGeneration": 1})
    obj = kube.get_json("w2c", "generation", "-n", ns)
    assert obj["metadata"]["generation"] == 1
    assert obj["status"] == {"phase": "Ready", "observedGeneration": 1}

    kube.run("patch", "w2c", "generation", "-n", ns, "--type=merge",
             "-p", json.dumps({"spec": {"version": "1.0.1"}}))  # fmt: skip
    obj = kube.get_json("w2c", "generation", "-n", ns)
    assert obj["metadata"]["generation"] == 2
    assert obj["status"]["observedGeneration"] == 1  # the operator has not caught up yet


def test_duplicate_node_hosts_are_refused_on_update_too(kube: Kube, ns: str) -> None:
    """The host/sshPort rule is judged only when spec.nodes changes (optionalOldSelf), so it
    costs nothing on status writes; a change that introduces a duplicate is still refused."""
    obj = create(kube, ns, "dup-update")
    patch_status(kube, ns, "dup-update", {"phase": "Ready"})  # spec.nodes unchanged: accepted
    nodes = copy.deepcopy(obj["spec"]["nodes"])
    nodes[1]["host"] = nodes[0]["host"]
    proc = kube.run("patch", "w2c", "dup-update", "-n", ns, "--type=merge",
                    "-p", json.dumps({"spec": {"nodes": nodes}}), check=False)  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "must not list the same host and sshPort twice" in proc.stderr, proc.stderr
    assert kube.get_json("w2c", "dup-update", "-n", ns)["spec"]["nodes"] == obj["spec"]["nodes"]


def test_status_on_main_resource_is_ignored(kube: Kube, ns: str) -> None:
    create(kube, ns, "main-status")
    patch_status(kube, ns, "main-status", {"phase": "Ready"})
    # Without --subresource=status the status stanza is silently dropped, not applied.
    kube.run("patch", "w2c", "main-status", "-n", ns, "--type=merge",
             "-p", json.dumps({"status": {"phase": "Degraded"}}))  # fmt: skip
    obj = kube.get_json("w2c", "main-status", "-n", ns)
    assert obj["status"] == {"phase": "Ready"}
    assert obj["metadata"]["generation"] == 1


# --- 4. printer columns -----------------------------------------------------------------------


def test_printer_columns(kube: Kube, ns: str) -> None:
    create(kube, ns, "columns")
    out = kube.run("get", "w2c", "columns", "-n", ns).stdout
    assert out.split("\n")[0].split() == [
        "NAME", "DESIRED", "CURRENT", "UPDATED", "READY", "PHASE", "AGE",
    ]  # fmt: skip
    (row,) = table(out)
    assert row["NAME"] == "columns"
    assert row["DESIRED"] == "1.0.0"
    assert (row["CURRENT"], row["UPDATED"], row["READY"], row["PHASE"]) == ("", "", "", "")
    assert re.fullmatch(r"\d+[smh]\w*", row["AGE"])

    patch_status(kube, ns, "columns", {
        "phase": "Progressing",
        "currentVersion": "0.9.0",
        "targetVersion": "1.0.0",
        "updated": "1/3",
        "ready": "2/3",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "NodeUpdating",
             "message": "node2 is being updated", "lastTransitionTime": "2025-01-02T03:04:05Z"},
            {"type": "Progressing", "status": "True", "reason": "RollingUpdate",
             "message": "1 of 3 nodes updated", "lastTransitionTime": "2025-01-02T03:04:05Z"},
        ],
    })  # fmt: skip
    (row,) = table(kube.run("get", "w2c", "columns", "-n", ns).stdout)
    assert {k: row[k] for k in ("DESIRED", "CURRENT", "UPDATED", "READY", "PHASE")} == {
        "DESIRED": "1.0.0",
        "CURRENT": "0.9.0",
        "UPDATED": "1/3",
        "READY": "2/3",
        "PHASE": "Progressing",
    }
    assert "REASON" not in row

    wide = kube.run("get", "w2c", "columns", "-n", ns, "-o", "wide").stdout
    assert wide.split("\n")[0].split() == [
        "NAME", "DESIRED", "CURRENT", "UPDATED", "READY", "PHASE", "AGE", "REASON", "TARGET",
        "PAUSED",
    ]  # fmt: skip
    (row,) = table(wide)
    assert (row["REASON"], row["TARGET"], row["PAUSED"]) == ("NodeUpdating", "1.0.0", "false")

    # The short name, the plural and the vmops category all list it.
    for resource in ("w2c", "wso2clusters", "vmops"):
        names = [r["NAME"] for r in table(kube.run("get", resource, "-n", ns).stdout)]
        assert any(n.endswith("columns") for n in names), (resource, names)


def test_printer_columns_have_descriptions() -> None:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    missing = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("description")]
    assert missing == []


# --- 5. explain and descriptions --------------------------------------------------------------


@pytest.fixture(scope="module")
def served_schema(kube: Kube) -> dict[str, Any]:
    """The WSO2Cluster schema as the API server publishes it in OpenAPI v3 (what explain reads).

    Publishing lags a moment behind the CRD becoming Established, so poll for it.
    """
    deadline = time.monotonic() + 30
    while True:
        proc = kube.run("get", "--raw", "/openapi/v3/apis/vmops.dev/v1alpha1", check=False)
        if proc.returncode == 0:
            schemas = json.loads(proc.stdout)["components"]["schemas"]
            if "dev.vmops.v1alpha1.WSO2Cluster" in schemas:
                return schemas["dev.vmops.v1alpha1.WSO2Cluster"]
        assert time.monotonic() < deadline, f"OpenAPI v3 not published: {proc.stderr}"
        time.sleep(0.2)


def test_explain_prints_the_description(kube: Kube, served_schema: dict) -> None:
    out = kube.run("explain", "wso2cluster.spec.update.maxUnavailable").stdout
    expected = _schema()["properties"]["spec"]["properties"]["update"]["properties"][
        "maxUnavailable"
    ]["description"]
    assert squash(expected) in squash(out)
    assert "vmops.dev" in out


def test_explain_says_int_or_string_and_the_default(kube: Kube, served_schema: dict) -> None:
    """kubectl 1.36 prints <Object> as the type of every int-or-string field of a custom resource
    (its explain template reads only `type`, and a structural schema must leave `type` empty
    there; `type: string` is refused for the integer default). The apiserver publishes the
    conventional schema, and the description says what the type line cannot."""
    served = served_schema["properties"]["spec"]["properties"]["update"]["properties"][
        "maxUnavailable"
    ]
    assert served["x-kubernetes-int-or-string"] is True
    assert served["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    out = squash(kube.run("explain", "wso2cluster.spec.update.maxUnavailable").stdout)
    assert "An integer or a string (int-or-string;" in out
    assert "Defaults to 1." in out
    listing = kube.run("explain", "wso2cluster.spec.update").stdout
    assert "Defaults to 300." in squash(listing)  # drainTimeoutSeconds, in the field list too


def _default_text(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return None
    return str(value)


def test_every_default_is_in_its_description() -> None:
    """`kubectl explain` shows descriptions, not the schema's defaults: each says its own."""
    defaulted = [(p, s) for p, s in schema_nodes(_schema()) if "default" in s]
    assert len(defaulted) > 20
    for path, node in defaulted:
        text = _default_text(node["default"])
        desc = squash(node["description"])
        if text is None:
            assert "Omitted, each field below takes its default." in desc, path
        else:
            assert f"Defaults to {text}." in desc, path


def schema_nodes(schema: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every schema node: properties as a.b, array items as a[], map values as a{}."""
    yield path or "<root>", schema
    for name, sub in schema.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from schema_nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from schema_nodes(schema["additionalProperties"], f"{path}{{}}")


TOP_LEVEL_META = {"apiVersion", "kind", "metadata"}


def test_every_field_has_a_description() -> None:
    nodes = [(p, s) for p, s in schema_nodes(_schema()) if p not in TOP_LEVEL_META]
    assert len(nodes) > 80  # the walk really went everywhere
    missing = [p for p, s in nodes if not str(s.get("description", "")).strip()]
    assert missing == []


def test_served_openapi_carries_every_description(served_schema: dict) -> None:
    """kubectl explain reads the published OpenAPI v3; every description must reach it."""
    ours = dict(schema_nodes(_schema()))
    theirs = dict(schema_nodes(served_schema))
    for path, node in ours.items():
        if path.split(".")[0].split("[")[0] in TOP_LEVEL_META:
            continue
        assert path in theirs, path
        assert squash(theirs[path].get("description", "")) == squash(node["description"]), path


# --- 6. status round trip, 7. status validation -----------------------------------------------

T0, T1, T2 = "2025-01-02T03:04:05Z", "2025-01-02T03:10:00Z", "2025-01-02T03:20:30Z"

FULL_STATUS: dict[str, Any] = {
    "observedGeneration": 3,
    "phase": "Progressing",
    "currentVersion": "",
    "targetVersion": "6.6.1",
    "nodeCount": 3,
    "updatedNodes": 1,
    "readyNodes": 2,
    "updated": "1/3",
    "ready": "2/3",
    "lastObservedTime": T2,
    "writer": "wso2-operator-7d9f/1/a1b2c3",
    "departedNodes": ["node9"],
    "nodes": [
        {
            "name": "node1",
            "version": "6.6.1",
            "phase": "Current",
            "healthy": True,
            "loadBalancers": {"haproxy01": "UP", "haproxy02": "UP"},
            "message": "updated and back in rotation",
            "lastTransitionTime": T1,
            "previousVersion": "6.6.0",
        },
        {
            "name": "node2",
            "version": "6.6.0",
            "phase": "Provisioning",
            "healthy": False,
            "loadBalancers": {"haproxy01": "MAINT", "haproxy02": "Unreachable"},
            "message": "running provision command 2 of 3",
            "lastTransitionTime": T2,
            "target": "6.6.1",
            "previousVersion": "6.6.0",
            "step": 1,
            "startTime": T1,
            "attempts": 2,
            "revision": {"config": "cfg-1", "restart": "2026-11-30T20:00:00Z", "patch": "p1"},
            "targetRevision": {"config": "cfg-2", "restart": "2026-11-30T21:00:00Z", "patch": "p2"},
            "maintenance": "Reboot",
            "bootId": "0f3c1e5a-7b2d-4d6e-9a8b-1c2d3e4f5a6b",
        },
        {
            "name": "node3",
            "version": "6.6.0",
            "phase": "Outdated",
            "healthy": True,
            "loadBalancers": {"haproxy01": "UP", "haproxy02": "UP"},
            "message": "",
            "lastTransitionTime": T0,
        },
    ],
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "observedGeneration": 3,
            "lastTransitionTime": T1,
            "reason": "NodeUpdating",
            "message": "node2 is out of rotation for its update",
        },
        {
            "type": "Progressing",
            "status": "True",
            "observedGeneration": 3,
            "lastTransitionTime": T0,
            "reason": "RollingUpdate",
            "message": "1 of 3 nodes updated",
        },
        {
            "type": "Degraded",
            "status": "Unknown",
            "observedGeneration": 3,
            "lastTransitionTime": T0,
            "reason": "Unknown",
            "message": "",
        },
    ],
    "rollout": {
        "fromVersion": "6.6.0",
        "toVersion": "6.6.1",
        "startTime": T0,
        "rollingBack": False,
        "failedVersion": "6.5.9",
        "retryToken": "2025-01-01",
        "finished": False,
        "rollbackFailed": False,
        "handBackToken": "node2 1",
        "stepIndex": 1,
        "stepCount": 3,
        "stepMessage": "step 2/3: paused for 60s",
        "pauseStartTime": T1,
        "pauseEndTime": T2,
        "promoteToken": "p1",
        "promoteFullToken": "pf1",
        "abortToken": "a1",
        "promotedFull": False,
        "aborted": False,
        "provisionRevision": "git:main@0123456789abcdef0123456789abcdef01234567",
        "toRevision": {"config": "cfg-2", "restart": "2026-11-30T21:00:00Z", "patch": "p2"},
        "maintenance": "OSPatch",
        "hooks": {
            "beforeRollout": {
                "phase": "Succeeded",
                "message": "beforeRollout: 1 command(s) done on db01",
                "startTime": T0,
                "endTime": T1,
            },
            "afterRollout": {
                "phase": "Failed",
                "message": "afterRollout command 1/1 (`purge-cache`) failed on db01: exit status 1",
                "startTime": T2,
                "endTime": T2,
            },
        },
    },
    "analysis": {
        "phase": "Running",
        "message": "node1: 0.0% errors (120/120) vs baseline 0.0%",
        "metric": "",
        "nodes": [{"name": "node1", "verdict": "Running", "good": 1, "bad": 0, "inconclusive": 0}],
        "windows": [
            {
                "time": T2,
                "node": "node1",
                "seconds": 10.0,
                "requests": 120,
                "errors": 0,
                "errorPercent": 0.0,
                "baselineRequests": 240,
                "baselineErrorPercent": 0.0,
                "checkFailures": 0,
                "responseMs": 21.5,
                "baselineResponseMs": 20.5,
                "verdict": "Good",
                "reason": "WithinLimits",
            }
        ],
    },
    "history": [
        {
            "fromVersion": "6.5.0",
            "toVersion": "6.5.9",
            "startTime": T0,
            "endTime": T1,
            "result": "Failed",
            "message": "node1 failed at step 2: exit status 1",
            "attempts": 2,
        },
        {
            "fromVersion": "6.5.0",
            "toVersion": "6.6.0",
            "startTime": T1,
            "endTime": T2,
            "result": "Succeeded",
            "message": "",
            "provisionRevision": "configmap:wso2ei-play@1234:sha256:0123456789abcdef",
            "hooks": "beforeRollout Succeeded, afterRollout Failed",
        },
        {
            "fromVersion": "6.6.0",
            "toVersion": "6.6.0",
            "startTime": T1,
            "endTime": T2,
            "result": "Succeeded",
            "message": "all nodes restarted on 6.6.0",
            "maintenance": "Restart",
        },
    ],
}


def _paths(value: Any, path: str = "") -> set[str]:
    """The schema-style paths (a.b, a[], a{}) a value uses."""
    out = {path} if path else set()
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}{{}}" if path.endswith(".loadBalancers") else f"{path}.{k}".lstrip(".")
            out |= _paths(v, sub)
    elif isinstance(value, list):
        for v in value:
            out |= _paths(v, f"{path}[]")
    return out


def test_full_status_covers_the_schema() -> None:
    want = {p for p, _ in schema_nodes(_schema()["properties"]["status"]) if p != "<root>"}
    assert _paths(FULL_STATUS) == want


def test_full_status_round_trips(kube: Kube, ns: str) -> None:
    create(kube, ns, "full-status")
    patch_status(kube, ns, "full-status", FULL_STATUS)
    assert kube.get_json("w2c", "full-status", "-n", ns)["status"] == FULL_STATUS


def test_unknown_status_field_is_dropped_with_a_warning(kube: Kube, ns: str) -> None:
    create(kube, ns, "status-pruned")
    proc = patch_status(kube, ns, "status-pruned", {"phase": "Ready", "bogusField": 1})
    assert 'unknown field "status.bogusField"' in proc.stderr
    assert kube.get_json("w2c", "status-pruned", "-n", ns)["status"] == {"phase": "Ready"}


@pytest.fixture(scope="module")
def status_target(kube: Kube, ns: str) -> str:
    create(kube, ns, "status-target")
    patch_status(kube, ns, "status-target", {"phase": "Ready"})
    return "status-target"


def _condition(**kw: Any) -> dict[str, Any]:
    c = {"type": "Ready", "status": "True", "lastTransitionTime": T0, "reason": "AllNodesReady",
         "message": "3/3 nodes ready"}  # fmt: skip
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


INVALID_STATUS: list[tuple[str, dict, list[str]]] = [
    (
        "condition-status-maybe",
        {"conditions": [_condition(status="Maybe")]},
        ["status.conditions[0].status", "Unsupported value", '"Maybe"'],
    ),
    (
        "condition-reason-missing",
        {"conditions": [_condition(reason=None)]},
        ["status.conditions[0].reason", "Required value"],
    ),
    (
        "condition-duplicate-type",
        {"conditions": [_condition(), _condition(status="False")]},
        ["status.conditions[1]", "Duplicate value"],
    ),
    (
        "condition-time-not-a-date",
        {"conditions": [_condition(lastTransitionTime="yesterday")]},
        ["status.conditions[0].lastTransitionTime", "date-time"],
    ),
    (
        "node-name-missing",
        {"nodes": [{"version": "1.0.0"}]},
        ["status.nodes[0].name", "Required value"],
    ),
    (
        "node-healthy-not-bool",
        {"nodes": [{"name": "node1", "healthy": "yes"}]},
        ["status.nodes[0].healthy", "must be of type boolean"],
    ),
    (
        "history-11-entries",
        {"history": [{"toVersion": f"1.0.{i}"} for i in range(11)]},
        ["status.history", "must have at most 10 items"],
    ),
]


@pytest.mark.parametrize(
    ("status", "expected"), [pytest.param(s, e, id=i) for i, s, e in INVALID_STATUS]
)
def test_invalid_status_is_rejected(
    kube: Kube, ns: str, status_target: str, status: dict, expected: list[str]
) -> None:
    proc = patch_status(kube, ns, status_target, status, check=False)
    assert proc.returncode != 0, f"accepted: {proc.stdout}"
    for text in expected:
        assert text in proc.stderr, f"{text!r} not in:\n{proc.stderr}"
    assert kube.get_json("w2c", status_target, "-n", ns)["status"] == {"phase": "Ready"}


# --- the generated reference ------------------------------------------------------------------


def _crd_doc():
    if "crd_doc" in sys.modules:
        return sys.modules["crd_doc"]
    spec = importlib.util.spec_from_file_location("crd_doc", CRD_DOC_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["crd_doc"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_reference_doc_is_up_to_date() -> None:
    crd_doc = _crd_doc()
    rendered = crd_doc.render(crd_doc.load_crd(CRD))
    assert (REPO / "docs" / "crd-reference.md").read_text() == rendered, (
        "docs/crd-reference.md is stale: run python hack/crd_doc.py"
    )


def test_reference_doc_names_every_field() -> None:
    text = (REPO / "docs" / "crd-reference.md").read_text()
    for path, _ in schema_nodes(_schema()):
        top = path.split(".")[0]
        if top in TOP_LEVEL_META | {"<root>"} or path.endswith(("[]", "{}")):
            continue
        assert f"| `{path}` |" in text, path

"""The install: Dockerfile, the kustomize base in manifests/ and its least-privilege RBAC, the
operator pod's NetworkPolicy, and the namespaced overlay (manifests/overlays/namespaced/).

The Dockerfile is checked here by parsing it (cheap, no build); tests/e2e/test_image.py builds
the image and runs it as the Deployment does. The manifests are applied to the real
kube-apiserver; RBAC is checked both ways with `kubectl auth can-i --as=<the ServiceAccount>`, and
finally the real operator runs with the ServiceAccount's own token, on the Deployment's own
arguments, through a rollout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CRD, KUBECTL, REPO, Kube, ready_at, wait_for
from wso2_sandbox.controlplane import ControlPlane
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.manifest import fleet_manifests

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MANIFESTS = REPO / "manifests"
NAMESPACED = MANIFESTS / "overlays" / "namespaced"
NS = "wso2-operator"
SA = f"system:serviceaccount:{NS}:wso2-operator"
IMAGE = "ghcr.io/vmops/wso2-operator:0.1.0"
BASE_IMAGE = "python:3.11-slim"
DEFAULT_CMD = [
    "--all-namespaces",
    "--peering=wso2-operator",
    "--liveness=http://0.0.0.0:8080/healthz",
    "--metrics-port=9090",
    "--random-priority",
]

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def dockerfile_stages(text: str) -> list[Stage]:
    """Instructions per stage, with line continuations joined and comment lines dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction is removed by the parser
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arg = line.partition(" ")
        keyword, arg = keyword.upper(), arg.strip()
        if keyword == "FROM":
            parts = arg.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, arg))
    return stages


def exec_form(arg: str) -> list[str]:
    value = json.loads(arg)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arg
    return value


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages(DOCKERFILE.read_text())


def test_dockerfile_is_multi_stage_on_python_311_slim(stages: list[Stage]) -> None:
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder" and final.name is None
    assert {s.image for s in stages} == {BASE_IMAGE}


def test_dockerfile_runs_as_non_root_numeric_user(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage sets no USER, so it runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == 10001, users[-1]  # numeric: runAsNonRoot can verify it
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Nothing after USER switches back or runs as root.
    after = final.instructions[[kw for kw, _ in final.instructions].index("USER") :]
    assert not [arg for kw, arg in after if kw == "RUN"]


def test_dockerfile_entrypoint_and_default_flags(stages: list[Stage]) -> None:
    final = stages[-1]
    assert exec_form(final.all("ENTRYPOINT")[-1]) == ["python", "-m", "wso2_operator"]
    assert exec_form(final.all("CMD")[-1]) == DEFAULT_CMD
    env = " ".join(final.all("ENV"))
    assert "PATH=/opt/venv/bin:$PATH" in env  # `python` is the venv's


def test_dockerfile_final_stage_has_no_build_tools(stages: list[Stage]) -> None:
    builder, final = stages
    # The one apt-get allowed: the runtime of provision.ansible (OpenSSH client and git, no
    # recommends), skipped by the slim variant, its lists removed in the same layer.
    runtime = [r for r in final.all("RUN") if "apt-get" in r]
    assert len(runtime) <= 1, runtime
    for r in runtime:
        assert "--no-install-recommends openssh-client git" in r, r
        assert "rm -rf /var/lib/apt/lists/*" in r and '"$WITH_ANSIBLE" != 0' in r, r
        for tool in ("gcc", "build-essential", "make", "pip ", "pip3"):
            assert tool not in r, r
    runs = " ".join(r for r in final.all("RUN") if r not in runtime)
    for tool in ("apt-get", "apt ", "apk ", "gcc", "build-essential", "make", "pip ", "pip3"):
        assert tool not in runs, f"final stage runs {tool!r}: {runs}"
    # It takes the venv from the builder and nothing else: no source tree, no pip cache.
    assert final.all("COPY") == [f"--from={builder.name} /opt/venv /opt/venv"]
    assert not final.all("ADD")
    # The builder needs no compiler either: every dependency ships wheels for 3.11.
    assert not [r for r in builder.all("RUN") if "apt-get" in r]


def test_dockerfile_installs_the_package_non_editable_with_pyproject_pins(
    stages: list[Stage],
) -> None:
    builder = stages[0]
    installs = [r for r in builder.all("RUN") if "pip install" in r]
    # The pinned dependencies (a layer of their own), then the package.
    assert len(installs) == 2, installs
    for run in installs:
        assert not re.search(r"\s(-e|--editable)\s", run), run
        assert "--mount=type=cache,target=/root/.cache/pip" in run, run
    assert "pip install --no-deps /src" in installs[1] and "pip check" in installs[1]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert deps and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", d) for d in deps), deps


def test_dockerignore_keeps_local_state_out_of_the_context(stages: list[Stage]) -> None:
    patterns = {
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip()[:1] not in "#"
    }
    for required in (".git", ".venv", ".sandbox", ".pytest_cache", ".ruff_cache", ".hypothesis"):
        assert required in patterns, required
    assert "bench/results" in patterns
    assert "**/__pycache__" in patterns
    # ...but not what the builder COPYs.
    for copy in stages[0].all("COPY"):
        src = copy.split()[0]
        assert src not in patterns and (REPO / src).exists(), src


# ---------------------------------------------------------------------------------- manifests


def rendered(path: Path = MANIFESTS) -> list[Obj]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


WAVES = {
    ("CustomResourceDefinition", "wso2clusters.vmops.dev"): "-10",
    ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"): "-10",
    ("CustomResourceDefinition", "kopfpeerings.kopf.dev"): "-10",
    ("Namespace", NS): "-5",
    ("ServiceAccount", "wso2-operator"): "-1",
    ("ClusterRole", "wso2-operator"): "-1",
    ("ClusterRoleBinding", "wso2-operator"): "-1",
    ("Deployment", "wso2-operator"): "-1",
    ("NetworkPolicy", "wso2-operator"): "-1",
}
NAMESPACED_KINDS = ("ServiceAccount", "Deployment", "NetworkPolicy")


def test_kustomize_renders_the_install_with_sync_waves() -> None:
    objs = rendered()
    assert {(o["kind"], o["metadata"]["name"]) for o in objs} == set(WAVES)
    for o in objs:
        meta = o["metadata"]
        wave = meta.get("annotations", {}).get("argocd.argoproj.io/sync-wave")
        assert wave == WAVES[(o["kind"], meta["name"])], (o["kind"], meta["name"], wave)
        assert meta["labels"]["app.kubernetes.io/part-of"] == "wso2-operator"
        if o["kind"] in NAMESPACED_KINDS:
            assert meta["namespace"] == NS
    binding = find(objs, "ClusterRoleBinding", "wso2-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "wso2-operator", "namespace": NS}
    ]


def test_crds_kustomization_holds_exactly_the_crds() -> None:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / "crds")], capture_output=True, text=True, check=True
    ).stdout
    objs = [d for d in yaml.safe_load_all(out) if d]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objs) == sorted(
        ("CustomResourceDefinition", c) for c in CRDS
    )


def test_manifests_crd_is_a_copy_of_crds() -> None:
    copy = MANIFESTS / "crds" / "wso2clusters.yaml"
    assert copy.read_bytes() == CRD.read_bytes(), (
        "manifests/crds/wso2clusters.yaml is stale: cp crds/wso2clusters.yaml manifests/crds/"
    )


def test_peering_crds_match_kopfs() -> None:
    """kopf's peering.yaml (kopf.dev): cluster and namespaced scope, status kept as-is."""
    objs = rendered()
    for name, scope, kind in (
        ("clusterkopfpeerings.kopf.dev", "Cluster", "ClusterKopfPeering"),
        ("kopfpeerings.kopf.dev", "Namespaced", "KopfPeering"),
    ):
        spec = find(objs, "CustomResourceDefinition", name)["spec"]
        assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("kopf.dev", scope, kind)
        (v,) = spec["versions"]
        assert v["name"] == "v1" and v["served"] and v["storage"]
        status = v["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        assert "subresources" not in v  # kopf patches .status on the object itself


def test_one_peering_name_everywhere() -> None:
    """The Deployment's --peering name, WSO2_PEERING_NAME and the RBAC resourceNames agree, and no
    peering object is in the base (the operator creates it: `apply -k` must work in one go)."""
    objs = rendered()
    (container,) = find(objs, "Deployment", "wso2-operator")["spec"]["template"]["spec"][
        "containers"
    ]
    (arg,) = [a for a in container["args"] if a.startswith("--peering=")]
    name = arg.partition("=")[2]
    assert {e["name"]: e.get("value") for e in container["env"]}["WSO2_PEERING_NAME"] == name
    assert not [o for o in objs if o["kind"] in ("ClusterKopfPeering", "KopfPeering")]
    rules = find(objs, "ClusterRole", "wso2-operator")["rules"]
    named = [r for r in rules if "clusterkopfpeerings" in r["resources"] and "patch" in r["verbs"]]
    assert [r.get("resourceNames") for r in named] == [[name]]


def test_deployment_is_two_hardened_replicas(stages: list[Stage]) -> None:
    dep = find(rendered(), "Deployment", "wso2-operator")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == "wso2-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["image"] == IMAGE
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    # Writable /tmp on a read-only root.
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in vol
    # The args are the image's CMD, and the ports match them.
    image_cmd = exec_form(stages[-1].all("CMD")[-1])
    assert c["args"] == image_cmd
    assert "command" not in c  # the image's ENTRYPOINT
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9090}
    for kind in ("startupProbe", "livenessProbe"):
        probe = c[kind]["httpGet"]
        assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080, kind
    assert "readinessProbe" not in c  # the standby is not "unready": it serves nothing
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert "--metrics-port=9090" in c["args"]
    # Long enough for the daemon's cancellation_timeout and a last status write.
    assert pod["terminationGracePeriodSeconds"] >= 15


def _container(objs: list[Obj]) -> Obj:
    (c,) = find(objs, "Deployment", "wso2-operator")["spec"]["template"]["spec"]["containers"]
    return c


def _ports(rule: Obj) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports") or []}


def test_network_policy_allows_only_the_operators_traffic() -> None:
    """Egress: the apiserver, DNS, SSH and the nodes' health-check port, nothing else; ingress:
    the metrics port from one namespace. Every rule names its ports (a rule without ports, or
    an empty rule, would allow everything)."""
    objs = rendered()
    pol = find(objs, "NetworkPolicy", "wso2-operator")
    assert pol["metadata"]["namespace"] == NS
    spec = pol["spec"]
    template = find(objs, "Deployment", "wso2-operator")["spec"]["template"]
    # It selects the operator's pods (and, being in their namespace, only those).
    assert spec["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    for rule in spec["egress"]:
        assert rule.get("ports"), f"an egress rule without ports allows every port: {rule}"
    egress = set().union(*(_ports(r) for r in spec["egress"]))
    assert egress == {
        ("TCP", 443), ("TCP", 6443),  # kube-apiserver (Service port, endpoint port)
        ("UDP", 53), ("TCP", 53),  # DNS
        ("TCP", 22),  # SSH to nodes and LB hosts
        ("TCP", 8243),  # the default spec.healthCheck.port
    }  # fmt: skip
    # Ingress: the metrics port only, and only from a selected namespace, not from anywhere.
    c = _container(objs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    (ingress,) = spec["ingress"]
    assert _ports(ingress) == {("TCP", ports["metrics"])}
    (source,) = ingress["from"]
    assert source["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    # The liveness port has no rule: the kubelet probes from the node, which is always allowed.
    assert ("TCP", ports["healthz"]) not in _ports(ingress)


def test_metrics_address_default_is_reachable_in_the_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Deployment's flags bind metrics on every interface of the pod (Prometheus scrapes the
    pod IP; the NetworkPolicy limits who may), on the port the NetworkPolicy opens."""
    from wso2_operator.__main__ import own_args

    monkeypatch.delenv("WSO2_METRICS_ADDRESS", raising=False)
    monkeypatch.delenv("WSO2_METRICS_PORT", raising=False)
    objs = rendered()
    args, rest = own_args(_container(objs)["args"])
    assert args.metrics_address == "0.0.0.0"
    (ingress,) = find(objs, "NetworkPolicy", "wso2-operator")["spec"]["ingress"]
    assert _ports(ingress) == {("TCP", args.metrics_port)}
    assert not [a for a in rest if a.startswith("--metrics")]  # consumed, not passed to kopf
    monkeypatch.setenv("WSO2_METRICS_ADDRESS", "127.0.0.1")
    assert own_args([])[0].metrics_address == "127.0.0.1"
    assert own_args(["--metrics-address=::1"])[0].metrics_address == "::1"


def test_metrics_endpoint_binds_only_the_address_given() -> None:
    from wso2_operator.metrics import serve

    port = _free_port()
    server, thread = serve(port, "127.0.0.1")
    try:
        code, body = _http_get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and "wso2_rollouts_started_total" in body
        # Another loopback address of this host: nothing listens there.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------ the namespaced overlay

WATCHED = "wso2"  # the namespace overlays/namespaced/ watches
NAMESPACED_ONLY = {  # what the overlay grants per watched namespace, with a Role
    ("vmops.dev", "wso2clusters"),
    ("vmops.dev", "wso2clusters/status"),
    ("", "secrets"),
    ("", "configmaps"),
    ("", "events"),
    ("kopf.dev", "kopfpeerings"),
    ("kopf.dev", "clusterkopfpeerings"),
}


def _grants(rules: list[Obj]) -> set[tuple[str, str]]:
    return {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}


def _watched(args: list[str]) -> list[str]:
    out: list[str] = []
    for i, a in enumerate(args):
        if a.startswith("--namespace="):
            out.append(a.partition("=")[2])
        elif a in ("-n", "--namespace"):
            out.append(args[i + 1])
    return out


def test_namespaced_overlay_has_no_cluster_wide_secret_access() -> None:
    base, objs = rendered(), rendered(NAMESPACED)
    for role in [o for o in objs if o["kind"] == "ClusterRole"]:
        granted = _grants(role["rules"])
        assert not granted & NAMESPACED_ONLY, (role["metadata"]["name"], granted)
        assert ("*", "*") not in granted and ("", "*") not in granted
    # What is left cluster-wide is read-only.
    (cluster_role,) = [o for o in objs if o["kind"] == "ClusterRole"]
    assert _grants(cluster_role["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("", "namespaces"),
    }
    for rule in cluster_role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    # ...whereas the default install does read Secrets cluster-wide (the reason for the overlay).
    assert ("", "secrets") in _grants(find(base, "ClusterRole", "wso2-operator")["rules"])


def test_namespaced_overlay_runs_with_namespace_and_the_secret_label_required() -> None:
    base, objs = rendered(), rendered(NAMESPACED)
    c, base_c = _container(objs), _container(base)
    assert "--all-namespaces" not in c["args"] and "-A" not in c["args"]
    assert _watched(c["args"]) == [WATCHED]
    # Otherwise the same flags as the default install.
    assert [a for a in c["args"] if a not in (f"--namespace={WATCHED}",)] == [
        a for a in base_c["args"] if a != "--all-namespaces"
    ]
    env = [(e["name"], e.get("value")) for e in c["env"]]
    assert [v for n, v in env if n == "WSO2_REQUIRE_SECRET_LABEL"] == ["1"]
    base_env = {e["name"]: e.get("value") for e in base_c["env"]}
    assert base_env["WSO2_REQUIRE_SECRET_LABEL"] == "0"  # opt-in: off by default
    # The rest of the pod, the namespace, ServiceAccount, CRDs and NetworkPolicy are the base's.
    dep, base_dep = (find(o, "Deployment", "wso2-operator") for o in (objs, base))
    for x in (c, base_c):
        x.pop("args"), x.pop("env")
    assert dep == base_dep
    for kind, name in WAVES:
        if kind not in ("ClusterRole", "ClusterRoleBinding", "Deployment"):
            assert find(objs, kind, name) == find(base, kind, name), (kind, name)


def test_namespaced_overlay_has_a_role_for_every_watched_namespace() -> None:
    objs = rendered(NAMESPACED)
    watched = _watched(_container(objs)["args"])
    roles = {o["metadata"]["namespace"]: o for o in objs if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in objs if o["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == set(watched)
    for ns in watched:
        assert _grants(roles[ns]["rules"]) == NAMESPACED_ONLY - {
            ("kopf.dev", "clusterkopfpeerings")
        }
        secrets = [r for r in roles[ns]["rules"] if "secrets" in r["resources"]]
        assert [r["verbs"] for r in secrets] == [["get"]]  # by name: no list/watch
        b = bindings[ns]
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "wso2-operator"
        }  # fmt: skip
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "wso2-operator", "namespace": NS}
        ]
        for o in (roles[ns], b):
            assert o["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
            assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "wso2-operator"
    # The peering name of the Deployment is the one the Role lets it patch.
    (peering,) = [a for a in _container(objs)["args"] if a.startswith("--peering=")]
    named = [
        r
        for r in roles[WATCHED]["rules"]
        if "patch" in r["verbs"] and "kopfpeerings" in r["resources"]
    ]
    assert [r.get("resourceNames") for r in named] == [[peering.partition("=")[2]]]


# ----------------------------------------------------------------------- against the apiserver


CRDS = ("wso2clusters.vmops.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def install(kube: Kube) -> None:
    """The documented install, one command on a control plane that has none of it yet."""
    kube.run("apply", "-k", str(MANIFESTS))
    kube.wait_established(*(f"crd/{c}" for c in CRDS))


@pytest.fixture(scope="module")
def installed(kube: Kube) -> Iterator[Kube]:
    install(kube)
    yield kube
    # Other tests run operators against this control plane: without this peering object their
    # operators run unpeered, as before. (Namespaces cannot be deleted here: no controllers.)
    kube.run("delete", "clusterkopfpeering", "wso2-operator", "--ignore-not-found")


def test_apply_k_creates_everything(installed: Kube) -> None:
    for kind, name in WAVES:
        args = ["-n", NS] if kind in NAMESPACED_KINDS else []
        obj = installed.get_json(kind.lower(), name, *args)
        assert obj["metadata"]["name"] == name
    dep = installed.get_json("deployment", "wso2-operator", "-n", NS)
    assert dep["spec"]["replicas"] == 2
    # Idempotent: a second apply changes nothing.
    again = installed.run("apply", "-k", str(MANIFESTS)).stdout
    assert all(line.endswith(" unchanged") for line in again.strip().splitlines()), again


def test_server_dry_run_accepts_the_rendered_install(installed: Kube) -> None:
    """The apiserver validates every rendered object, the NetworkPolicy included, and keeps the
    NetworkPolicy's ports as written."""
    objs = rendered()
    dry = installed.run("apply", "--dry-run=server", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": objs}
    ))  # fmt: skip
    assert "networkpolicy.networking.k8s.io/wso2-operator" in dry.stdout, dry.stdout
    assert all(ln.endswith("(server dry run)") for ln in dry.stdout.strip().splitlines())
    stored = installed.get_json("networkpolicy", "wso2-operator", "-n", NS)["spec"]
    assert stored["egress"] == find(objs, "NetworkPolicy", "wso2-operator")["spec"]["egress"]


def _pod_from_template(kube: Kube) -> Obj:
    dep = kube.get_json("deployment", "wso2-operator", "-n", NS)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "wso2-operator-pss-check", "namespace": NS},
        "spec": dep["spec"]["template"]["spec"],
    }


def test_pod_passes_restricted_pod_security_admission(installed: Kube) -> None:
    """The namespace enforces the "restricted" profile; the operator's pod is admitted."""
    ns = installed.get_json("namespace", NS)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = _pod_from_template(installed)
    ok = installed.run("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert ok.returncode == 0, ok.stderr
    # The control: the same pod with privilege escalation allowed is refused.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    bad = installed.run("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert bad.returncode != 0 and "violates PodSecurity" in bad.stderr, bad.stderr


def can_i(kube: Kube, verb: str, resource: str, *extra: str) -> bool:
    proc = kube.run("auth", "can-i", verb, resource, f"--as={SA}", *extra, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), (proc.stdout, proc.stderr)
    return answer == "yes"


ALLOWED = [
    # kopf's watch of the custom resource, cluster-wide, and its finalizer/annotation patches.
    ("list", "wso2clusters.vmops.dev", "--all-namespaces"),
    ("watch", "wso2clusters.vmops.dev", "--all-namespaces"),
    ("get", "wso2clusters.vmops.dev", "-n", "team-a"),
    ("patch", "wso2clusters.vmops.dev", "-n", "team-a"),
    # The operator's status writes.
    ("patch", "wso2clusters.vmops.dev", "--subresource=status", "-n", "team-a"),
    # The SSH Secret a WSO2Cluster names, in whatever namespace the cluster lives.
    ("get", "secrets", "-n", "team-a"),
    ("get", "secrets/wso2ei-ssh", "-n", "team-b"),
    # The ConfigMap a provision.ansible names as its content.
    ("get", "configmaps/wso2ei-play", "-n", "team-a"),
    # Events on WSO2Clusters.
    ("create", "events", "-n", "team-a"),
    # Peering of the two replicas.
    ("list", "clusterkopfpeerings.kopf.dev"),
    ("watch", "clusterkopfpeerings.kopf.dev"),
    ("patch", "clusterkopfpeerings.kopf.dev/wso2-operator"),
    ("create", "clusterkopfpeerings.kopf.dev"),  # its own, at start-up, if missing
    # kopf's CRD watch.
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
]

DENIED = [
    # Secrets: one by name, never all of them, never a write.
    ("list", "secrets", "-n", "team-a"),
    ("watch", "secrets", "--all-namespaces"),
    ("delete", "secrets", "-n", "team-a"),
    ("create", "secrets", "-n", "team-a"),
    ("patch", "secrets", "-n", "team-a"),
    # ConfigMaps: read by name only.
    ("list", "configmaps", "-n", "team-a"),
    ("patch", "configmaps", "-n", "team-a"),
    # The custom resource is the user's: the operator neither creates, replaces nor deletes it.
    ("create", "wso2clusters.vmops.dev", "-n", "team-a"),
    ("delete", "wso2clusters.vmops.dev", "-n", "team-a"),
    ("update", "wso2clusters.vmops.dev", "-n", "team-a"),
    ("update", "wso2clusters.vmops.dev", "--subresource=status", "-n", "team-a"),
    # Workloads: the operator touches VMs over SSH, nothing in the cluster.
    ("list", "pods", "-n", "team-a"),
    ("create", "pods", "-n", "team-a"),
    ("create", "pods/exec", "-n", "team-a"),
    ("create", "deployments.apps", "-n", NS),
    ("patch", "deployments.apps", "-n", NS),
    # CRDs are read-only to it; so are other kopf operators' peerings.
    ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("patch", "clusterkopfpeerings.kopf.dev/some-other-operator"),
    ("delete", "clusterkopfpeerings.kopf.dev/wso2-operator"),
    ("patch", "kopfpeerings.kopf.dev", "-n", "team-a"),  # namespaced peering: not with -A
    # Events: posted, never rewritten; the events.k8s.io API is not used.
    ("patch", "events", "-n", "team-a"),
    ("delete", "events", "-n", "team-a"),
    ("create", "events.events.k8s.io", "-n", "team-a"),
    # Not needed with --all-namespaces (kopf lists namespaces only for -n patterns).
    ("list", "namespaces"),
    # No way to widen its own rights.
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("create", "serviceaccounts/token", "-n", NS),
    ("*", "*"),
]


@pytest.mark.parametrize("check", ALLOWED, ids=lambda c: " ".join(c))
def test_service_account_can(installed: Kube, check: tuple[str, ...]) -> None:
    assert can_i(installed, *check), f"{SA} cannot {' '.join(check)}"


@pytest.mark.parametrize("check", DENIED, ids=lambda c: " ".join(c))
def test_service_account_cannot(installed: Kube, check: tuple[str, ...]) -> None:
    assert not can_i(installed, *check), f"{SA} can {' '.join(check)}"


# --------------------------------------------------- the real operator with the ServiceAccount


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError as e:
        return 0, str(e)


def _sa_kubeconfig(admin: Kube, tmp_path: Path) -> Path:
    """A kubeconfig for the operator's ServiceAccount, with a token of its own."""
    token = admin.run("create", "token", "wso2-operator", "-n", NS, "--duration=1h").stdout
    cfg = json.loads(admin.kubeconfig.read_text())
    cfg["users"] = [{"name": "wso2-operator", "user": {"token": token.strip()}}]
    cfg["contexts"][0]["context"]["user"] = "wso2-operator"
    sa_kubeconfig = tmp_path / "sa-kubeconfig"
    sa_kubeconfig.write_text(json.dumps(cfg))
    who = Kube(sa_kubeconfig).run("auth", "whoami", "-o", "json").stdout
    assert json.loads(who)["status"]["userInfo"]["username"] == SA
    return sa_kubeconfig


@dataclass
class OperatorRun:
    live_port: int
    metrics_port: int
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@contextlib.contextmanager
def _operator(
    container: Obj, sa_kubeconfig: Path, tmp_path: Path, *extra: str
) -> Iterator[OperatorRun]:
    """The operator on the container's own args and env (ports moved to free local ones), as the
    ServiceAccount. On exit it is stopped and its log must show no permission problem."""
    run = OperatorRun(_free_port(), _free_port(), tmp_path / "operator.log")
    args = [
        a.replace("0.0.0.0:8080", f"127.0.0.1:{run.live_port}").replace(
            "--metrics-port=9090", f"--metrics-port={run.metrics_port}"
        )
        for a in container["args"]
    ]
    env = {e["name"]: e["value"] for e in container["env"]}
    env = {**os.environ, **env, "HOME": str(tmp_path), "KUBECONFIG": str(sa_kubeconfig)}
    env["WSO2_OBSERVE_PERIOD"] = "2"
    with run.log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wso2_operator", *args, *extra],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            start_new_session=True,
        )  # fmt: skip
        try:
            healthz = f"http://127.0.0.1:{run.live_port}/healthz"
            wait_for("liveness", lambda: _http_get(healthz)[0] == 200, 60, run.logs)
            yield run
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = run.log_path.read_text(errors="replace")
    for bad in ("forbidden", "not enough permissions", "traceback", "failed to post an event"):
        assert bad not in text.lower(), f"{bad!r} in the operator log:\n{text[-6000:]}"


def _roll_out(admin: Kube, ns: str, run: OperatorRun) -> None:
    """Ready at 1.0.0, then a rollout to 2.0.0 with its Events, and the metrics served."""

    def get() -> Obj:
        return admin.get_json("w2c", "wso2ei", "-n", ns)

    wait_for("Ready at 1.0.0", lambda: ready_at(get(), "1.0.0"), 90, run.logs)
    admin.run(
        "patch", "w2c", "wso2ei", "-n", ns, "--type=merge",
        "-p", '{"spec": {"version": "2.0.0"}}',
    )  # fmt: skip
    wait_for("Ready at 2.0.0", lambda: ready_at(get(), "2.0.0"), 120, run.logs)
    code, metrics = _http_get(f"http://127.0.0.1:{run.metrics_port}/metrics")
    assert code == 200 and "wso2_rollouts_started_total" in metrics
    assert "vmops.dev/wso2-operator" in get()["metadata"]["finalizers"]
    events = admin.get_json("events", "-n", ns)["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "wso2ei"}
    assert {"NodeUpdateStarted", "RolloutSucceeded"} <= reasons, reasons


@pytest.mark.timeout(300)
def test_operator_runs_with_only_its_service_account(tmp_path: Path) -> None:
    """`kubectl apply -k`, then the operator on the Deployment's own args with the ServiceAccount's
    token: it serves cluster-wide, peers, writes status, posts Events and finishes a rollout, and
    logs no permission problem. A private control plane, because --all-namespaces would otherwise
    serve other tests' objects."""
    with ControlPlane(workdir=tmp_path / "cp") as cp:
        assert cp.kubeconfig is not None
        admin = Kube(cp.kubeconfig)
        install(admin)
        sa_kubeconfig = _sa_kubeconfig(admin, tmp_path)
        container = _container(rendered())

        with Fleet(FleetConfig(boot_seconds=1.5, ready_gap_seconds=0.5)) as fleet:
            ns = admin.new_namespace("sa")
            # The operator must create its own peering object (the base has none).
            admin.run("delete", "clusterkopfpeering", "wso2-operator", "--ignore-not-found")
            for doc in fleet_manifests(fleet.description, namespace=ns, version="1.0.0"):
                admin.apply(doc)
            with _operator(container, sa_kubeconfig, tmp_path) as run:
                _roll_out(admin, ns, run)
                peering = admin.get_json("clusterkopfpeering", "wso2-operator")
                assert len(peering.get("status") or {}) == 1, peering  # its own keep-alive
                assert "created ClusterKopfPeering 'wso2-operator'" in run.logs()


# ------------------------------------------------- the namespaced overlay on its own control plane

NS_ALLOWED = [
    ("get", "secrets", "-n", WATCHED),
    ("get", "secrets/wso2ei-ssh", "-n", WATCHED),
    ("get", "configmaps/wso2ei-play", "-n", WATCHED),
    ("list", "wso2clusters.vmops.dev", "-n", WATCHED),
    ("watch", "wso2clusters.vmops.dev", "-n", WATCHED),
    ("get", "wso2clusters.vmops.dev", "-n", WATCHED),
    ("patch", "wso2clusters.vmops.dev", "-n", WATCHED),
    ("patch", "wso2clusters.vmops.dev", "--subresource=status", "-n", WATCHED),
    ("create", "events", "-n", WATCHED),
    ("list", "kopfpeerings.kopf.dev", "-n", WATCHED),
    ("watch", "kopfpeerings.kopf.dev", "-n", WATCHED),
    ("create", "kopfpeerings.kopf.dev", "-n", WATCHED),
    ("patch", "kopfpeerings.kopf.dev/wso2-operator", "-n", WATCHED),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "namespaces"),
    ("watch", "namespaces"),
]

NS_DENIED = [
    # Secrets anywhere but the watched namespace, its own included; never listed.
    ("get", "secrets", "-n", "team-b"),
    ("get", "secrets/wso2ei-ssh", "-n", "team-b"),
    ("get", "secrets", "-n", NS),
    ("get", "secrets", "-n", "kube-system"),
    ("get", "secrets", "--all-namespaces"),
    ("list", "secrets", "-n", WATCHED),
    ("watch", "secrets", "-n", WATCHED),
    ("create", "secrets", "-n", WATCHED),
    ("get", "configmaps", "-n", "team-b"),
    ("list", "configmaps", "-n", WATCHED),
    # WSO2Clusters and Events outside the watched namespace, or cluster-wide.
    ("list", "wso2clusters.vmops.dev", "--all-namespaces"),
    ("watch", "wso2clusters.vmops.dev", "--all-namespaces"),
    ("list", "wso2clusters.vmops.dev", "-n", "team-b"),
    ("patch", "wso2clusters.vmops.dev", "-n", "team-b"),
    ("patch", "wso2clusters.vmops.dev", "--subresource=status", "-n", "team-b"),
    ("create", "wso2clusters.vmops.dev", "-n", WATCHED),
    ("delete", "wso2clusters.vmops.dev", "-n", WATCHED),
    ("create", "events", "-n", "team-b"),
    # Peering: namespaced only, its own object only.
    ("list", "clusterkopfpeerings.kopf.dev"),
    ("create", "clusterkopfpeerings.kopf.dev"),
    ("patch", "clusterkopfpeerings.kopf.dev/wso2-operator"),
    ("patch", "kopfpeerings.kopf.dev/some-other-operator", "-n", WATCHED),
    ("list", "kopfpeerings.kopf.dev", "-n", "team-b"),
    # Namespaces: names only, no object, no write.
    ("get", "namespaces/team-b"),
    ("delete", "namespaces/team-b"),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "pods", "-n", WATCHED),
    ("*", "*"),
]


def _condition(obj: Obj, kind: str) -> Obj:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {}
    )


@pytest.mark.timeout(300)
def test_namespaced_overlay_scopes_the_operator_to_its_namespaces(tmp_path: Path) -> None:
    """overlays/namespaced/ on a fresh control plane: it applies, its ServiceAccount reads Secrets
    in the watched namespace and nowhere else, and the real operator on its args and env, with
    that ServiceAccount's token, refuses an unlabelled SSH Secret (SecretNotAllowed), rolls out
    once the Secret is labelled, ignores a WSO2Cluster in another namespace, and logs no
    permission problem."""
    with ControlPlane(workdir=tmp_path / "cp") as cp:
        assert cp.kubeconfig is not None
        admin = Kube(cp.kubeconfig)
        for ns in (WATCHED, "team-b"):
            admin.run("create", "namespace", ns)
        out = admin.run("apply", "-k", str(NAMESPACED)).stdout
        assert "networkpolicy.networking.k8s.io/wso2-operator created" in out
        assert "role.rbac.authorization.k8s.io/wso2-operator created" in out
        admin.wait_established(*(f"crd/{c}" for c in CRDS))
        dry = admin.run("apply", "--dry-run=server", "-k", str(NAMESPACED)).stdout
        assert all(ln.endswith("(server dry run)") for ln in dry.strip().splitlines()), dry

        denied = [c for c in NS_ALLOWED if not can_i(admin, *c)]
        allowed = [c for c in NS_DENIED if can_i(admin, *c)]
        assert not denied, f"{SA} cannot: {denied}"
        assert not allowed, f"{SA} can: {allowed}"

        sa_kubeconfig = _sa_kubeconfig(admin, tmp_path)
        container = _container(rendered(NAMESPACED))
        with Fleet(FleetConfig(boot_seconds=1.5, ready_gap_seconds=0.5)) as fleet:
            for ns in (WATCHED, "team-b"):
                for doc in fleet_manifests(fleet.description, namespace=ns, version="1.0.0"):
                    admin.apply(doc)
            admin.run("label", "secret", "wso2ei-ssh", "-n", "team-b", "vmops.dev/ssh-access=true")
            with _operator(
                container, sa_kubeconfig, tmp_path, "--metrics-address=127.0.0.1"
            ) as run:

                def degraded() -> Obj:
                    obj = admin.get_json("w2c", "wso2ei", "-n", WATCHED)
                    return _condition(obj, "Degraded")

                refused = wait_for(
                    "SecretNotAllowed",
                    lambda: (c := degraded()).get("reason") == "SecretNotAllowed" and c,
                    60,
                    run.logs,
                )
                assert 'vmops.dev/ssh-access="true"' in refused["message"]
                admin.run(
                    "label", "secret", "wso2ei-ssh", "-n", WATCHED, "vmops.dev/ssh-access=true"
                )
                _roll_out(admin, WATCHED, run)
                # Its own KopfPeering in the watched namespace, created at start-up.
                peering = admin.get_json("kopfpeering", "wso2-operator", "-n", WATCHED)
                assert len(peering.get("status") or {}) == 1, peering
                assert "created KopfPeering 'wso2-operator'" in run.logs()
                # The same cluster in another namespace is not the operator's: untouched.
                other = admin.get_json("w2c", "wso2ei", "-n", "team-b")
                assert not other.get("status") and not other["metadata"].get("finalizers")
        assert not [c for c in NS_DENIED if can_i(admin, *c)]

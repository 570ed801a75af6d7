"""What wso2_sandbox.gitops installs and creates, without running Argo CD (tests/e2e/test_gitops.py
runs the real one): argocd-cm with our health check and actions merged in, the Application."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console

from wso2_sandbox.demo_view import app_text, build_frame, render
from wso2_sandbox.gitops import (
    ARGOCD_MANIFESTS,
    IN_CLUSTER,
    app_summary,
    application,
    argocd_cm,
)

HEALTH = "resource.customizations.health.vmops.dev_WSO2Cluster"
ACTIONS = "resource.customizations.actions.vmops.dev_WSO2Cluster"

# The shape of Argo CD's core-install.yaml: objects of many kinds, argocd-cm without data.
CORE_INSTALL = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: argocd-repo-server}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: argocd-cm, labels: {app.kubernetes.io/name: argocd-cm}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: argocd-rbac-cm}
---
apiVersion: v1
kind: Secret
metadata: {name: argocd-secret}
type: Opaque
"""


def test_argocd_cm_gets_our_health_check_and_actions(tmp_path: Path) -> None:
    core = tmp_path / "core-install.yaml"
    core.write_text(CORE_INSTALL)
    docs = argocd_cm(core)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ConfigMap", "argocd-cm"),
        ("ConfigMap", "argocd-rbac-cm"),
        ("Secret", "argocd-secret"),
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"argocd"}
    cm = docs[0]
    assert cm["data"][HEALTH] == (ARGOCD_MANIFESTS / "health.lua").read_text()
    actions = yaml.safe_load((ARGOCD_MANIFESTS / "argocd-cm-actions.yaml").read_text())
    assert cm["data"][ACTIONS] == actions["data"][ACTIONS]
    assert cm["metadata"]["labels"] == {"app.kubernetes.io/name": "argocd-cm"}


def test_application_is_a_plain_directory_with_automated_sync() -> None:
    app = application("wso2", "file:///tmp/repo", "apps/wso2", "wso2")
    spec = app["spec"]
    assert app["metadata"] == {"name": "wso2", "namespace": "argocd"}
    assert spec["destination"] == {"server": IN_CLUSTER, "namespace": "wso2"}
    # Explicitly a directory: manifests/crds/kustomization.yaml is not a kustomize build here.
    assert spec["source"]["directory"] == {"recurse": True, "exclude": "*kustomization.yaml"}
    assert spec["syncPolicy"] == {"automated": {"prune": True, "selfHeal": True}}
    assert "syncPolicy" not in application("a", "u", "p", "n", automated=False)["spec"]


def test_app_summary_reads_like_argocd_app_get() -> None:
    app = {
        "status": {
            "sync": {"status": "Synced", "revision": "0123456789abcdef"},
            "health": {"status": "Progressing"},
            "operationState": {"phase": "Running"},
            "resources": [
                {
                    "kind": "WSO2Cluster",
                    "name": "wso2ei",
                    "health": {"status": "Progressing", "message": "node2 Draining"},
                }
            ],
        }
    }
    assert app_summary(app, name="wso2ei") == (
        "sync Synced (0123456)  health Progressing  operation Running"
        "  WSO2Cluster wso2ei: node2 Draining"
    )
    assert app_summary({}) == "sync - (-)  health -"


def test_the_demo_shows_the_application_next_to_the_nodes() -> None:
    app = {"sync": "Synced", "revision": "abcdef123456", "health": "Progressing", "message": "m"}
    assert (
        app_text(app, "abcdef123456") == "sync Synced (abcdef1 = the commit)  health Progressing: m"
    )
    assert "= not yet the commit" in app_text(app, "0123")
    frame = build_frame(
        {"spec": {"version": "2.0.0"}, "status": {}},
        {"lb1": None},
        {},
        elapsed=1.0,
        timeout=10,
        lb_names=["lb1"],
        node_names=["node1"],
        max_out=0,
    )
    frame.app, frame.app_target = app, "abcdef123456"
    console = Console(width=160, record=True)
    console.print(render(frame))
    text = console.export_text()
    assert "Argo CD Application argocd/wso2ei   sync Synced (abcdef1 = the commit)" in text
    assert "health Progressing  m" in text and "since the commit" in text

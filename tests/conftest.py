"""Shared fixtures: the real local control plane and a kubectl runner.

The control plane is session-scoped: one etcd + kube-apiserver for the whole run, with the CRD
installed once. Tests isolate themselves with a fresh namespace each, because namespaces never
finish terminating without a controller manager.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from wso2_sandbox.controlplane import ControlPlane, wait_established

if TYPE_CHECKING:
    from bench.kube import Kube as BenchKube

REPO = Path(__file__).resolve().parents[1]
KUBECTL = str(Path(sys.executable).parent / "kubectl")
CRD = REPO / "crds" / "wso2clusters.yaml"


def wait_for(what: str, pred: Callable[[], Any], timeout: float, info: Callable[[], str]) -> Any:
    """Poll pred until it returns something truthy (returned); on timeout fail with info()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{info()}")


def ready_at(obj: dict[str, Any], version: str) -> bool:
    """Ready=True for the current generation, with every node at version."""
    st = obj.get("status") or {}
    ready = [c for c in st.get("conditions") or [] if c["type"] == "Ready"]
    return (
        st.get("observedGeneration") == obj["metadata"]["generation"]
        and bool(ready)
        and ready[0]["status"] == "True"
        and st.get("currentVersion") == version
    )


@dataclass
class Kube:
    kubeconfig: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [KUBECTL, *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def apply(self, manifest: str | dict, namespace: str | None = None, check: bool = True):
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["-n", namespace] if namespace else []
        return self.run("apply", *ns, "-f", "-", input=text, check=check)

    def get_json(self, *args: str) -> dict:
        return json.loads(self.run("get", *args, "-o", "json").stdout)

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        wait_established(self.run, list(crds), AssertionError, timeout)

    def new_namespace(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.run("create", "namespace", name)
        return name


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    workdir = tmp_path_factory.mktemp("controlplane")
    with ControlPlane(workdir=workdir) as cp:
        yield cp


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    assert control_plane.kubeconfig is not None
    k = Kube(control_plane.kubeconfig)
    k.run("apply", "-f", str(CRD))
    k.wait_established("crd/wso2clusters.vmops.dev")
    return k


@pytest.fixture
def namespace(kube: Kube) -> str:
    return kube.new_namespace()


@pytest.fixture
def bench_kube(kube: Kube) -> Iterator[BenchKube]:
    """The bench's API client (bench.kube) on the session control plane."""
    from bench.kube import Kube as BenchKube  # the kubernetes client only for tests that use it

    k = BenchKube(kube.kubeconfig)
    try:
        yield k
    finally:
        k.close()

"""Capture real WSO2Cluster objects, as the operator writes them, for the ArgoCD health tests.

Starts a private control plane (etcd + kube-apiserver) and a local fleet, runs the real operator
as a subprocess, drives one WSO2Cluster through the states the health script must tell apart, and
writes each whole object (`kubectl get -o json`, managedFields stripped) to
tests/fixtures/status/<state>.json:

    new-no-status        created, the operator not yet running: no status at all
    ready                all nodes at 1.0.0 and in rotation
    stale-generation     the response to the spec patch to 2.0.0: generation ahead of the status
    progressing          a node Provisioning during the rollout to 2.0.0
    degraded             node2's install of 2.0.0 fails, failurePolicy Pause
    ready-after-retry    install fixed, vmops.dev/retry annotation set, rollout finished
    paused               spec.update.paused set while node1 moved to 3.0.0: held with 1/3 updated
    rolling-back         failurePolicy Rollback, node3's install of 3.0.0 fails, rollback running
    rolled-back          rollback finished: every node back on 2.0.0

    .venv/bin/python hack/capture_status.py [--out tests/fixtures/status] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from wso2_sandbox.controlplane import ControlPlane
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.manifest import fleet_manifests

REPO = Path(__file__).resolve().parents[1]
KUBECTL = str(Path(sys.executable).parent / "kubectl")
CRD = REPO / "crds" / "wso2clusters.yaml"
NAME = "wso2ei"
NAMESPACE = "capture"

Obj = dict[str, Any]


class Capture:
    def __init__(self, kubeconfig: Path, out: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.out = out

    def kubectl(self, *args: str, input: str | None = None) -> str:
        p = subprocess.run(
            [KUBECTL, *args], input=input, capture_output=True, text=True, env=self.env, timeout=60
        )
        if p.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {p.stderr}{p.stdout}")
        return p.stdout

    def get(self) -> Obj:
        return json.loads(self.kubectl("get", "w2c", NAME, "-n", NAMESPACE, "-o", "json"))

    def patch(self, patch: Obj) -> Obj:
        """A merge patch of the spec/metadata; returns the object exactly as the patch left it."""
        text = self.kubectl(
            "patch", "w2c", NAME, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch),
            "-o", "json",
        )  # fmt: skip
        return json.loads(text)

    def wait(self, what: str, pred: Callable[[Obj], bool], timeout: float = 120.0) -> Obj:
        deadline = time.monotonic() + timeout
        obj: Obj = {}
        while time.monotonic() < deadline:
            obj = self.get()
            if pred(obj):
                return obj
            time.sleep(0.1)
        raise TimeoutError(f"{what}: last status {json.dumps(obj.get('status'), indent=1)}")

    def save(self, state: str, obj: Obj) -> None:
        obj = json.loads(json.dumps(obj))
        obj.get("metadata", {}).pop("managedFields", None)
        path = self.out / f"{state}.json"
        path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        st = obj.get("status") or {}
        print(
            f"{state:18} gen={obj['metadata'].get('generation')} "
            f"observed={st.get('observedGeneration')} phase={st.get('phase')} "
            f"nodes={[(n['name'], n['phase']) for n in st.get('nodes', [])]}",
            flush=True,
        )


def cond(obj: Obj, ctype: str) -> Obj:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}


def observed(obj: Obj) -> bool:
    st = obj.get("status") or {}
    return st.get("observedGeneration") == obj["metadata"]["generation"]


def is_ready(version: str) -> Callable[[Obj], bool]:
    def pred(obj: Obj) -> bool:
        st = obj.get("status") or {}
        return (
            observed(obj)
            and cond(obj, "Ready").get("status") == "True"
            and st.get("currentVersion") == version
        )

    return pred


IN_FLIGHT = {"Draining", "Provisioning", "Verifying", "WaitingHealthy", "Enabling", "Soaking"}


def any_node_in(phases: set[str], node: str | None = None) -> Callable[[Obj], bool]:
    def pred(obj: Obj) -> bool:
        rows = (obj.get("status") or {}).get("nodes") or []
        return observed(obj) and any(
            r["phase"] in phases for r in rows if node is None or r["name"] == node
        )

    return pred


def phase_is(phase: str) -> Callable[[Obj], bool]:
    return lambda obj: observed(obj) and obj["status"].get("phase") == phase


def cond_is(ctype: str, **want: str) -> Callable[[Obj], bool]:
    def pred(obj: Obj) -> bool:
        c = cond(obj, ctype)
        return observed(obj) and all(c.get(k) == v for k, v in want.items())

    return pred


@contextlib.contextmanager
def operator(kubeconfig: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "WSO2_OBSERVE_PERIOD": "2"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wso2_operator", "--standalone", "-n", NAMESPACE],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(out: Path, workdir: Path) -> None:
    with ControlPlane(workdir=workdir / "cp") as cp:
        assert cp.kubeconfig is not None
        c = Capture(cp.kubeconfig, out)
        c.kubectl("apply", "-f", str(CRD))
        c.kubectl("wait", "--for=condition=Established", "crd/wso2clusters.vmops.dev")
        c.kubectl("create", "namespace", NAMESPACE)
        # install_seconds long enough that a poll sees a node in Provisioning.
        cfg = FleetConfig(boot_seconds=1.5, ready_gap_seconds=0.5, install_seconds=2.0)
        with Fleet(cfg) as fleet:
            docs = fleet_manifests(fleet.description, name=NAME, namespace=NAMESPACE)
            c.kubectl(
                "apply",
                "-f",
                "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
            )
            c.save("new-no-status", c.get())

            with operator(cp.kubeconfig, workdir / "operator.log"):
                c.save("ready", c.wait("ready at 1.0.0", is_ready("1.0.0")))

                # 2.0.0 fails on node2 with failurePolicy Pause (the default).
                fleet.node("node2").set_fail_install(["2.0.0"])
                c.save("stale-generation", c.patch({"spec": {"version": "2.0.0"}}))
                c.save("progressing", c.wait("a node Provisioning", any_node_in({"Provisioning"})))
                c.save("degraded", c.wait("Degraded", cond_is("Degraded", status="True")))

                fleet.node("node2").set_fail_install([])
                c.patch({"metadata": {"annotations": {"vmops.dev/retry": "1"}}})
                c.save("ready-after-retry", c.wait("ready at 2.0.0", is_ready("2.0.0")))

                # Pause while node1 is on its way to 3.0.0: node1 finishes, nothing else starts.
                c.patch({"spec": {"version": "3.0.0"}})
                c.wait("node1 in flight", any_node_in(IN_FLIGHT, "node1"))
                c.patch({"spec": {"update": {"paused": True}}})
                c.save("paused", c.wait("Paused", phase_is("Paused")))

                # Resume with failurePolicy Rollback; node3 fails on 3.0.0 -> back to 2.0.0.
                fleet.node("node3").set_fail_install(["3.0.0"])
                c.patch({"spec": {"update": {"paused": False, "failurePolicy": "Rollback"}}})
                c.save("rolling-back", c.wait("RollingBack", phase_is("RollingBack")))
                rolled_back = cond_is("Degraded", reason="RolledBack")
                c.save("rolled-back", c.wait("rolled back", lambda o: rolled_back(o) and (
                    o["status"].get("currentVersion") == "2.0.0"
                )))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hack/capture_status.py")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "status")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the operator log here")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="w2c-capture-"))
    try:
        run(a.out, workdir)
    finally:
        if a.keep_logs:
            a.keep_logs.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                shutil.copy(workdir / "operator.log", a.keep_logs / "operator.log")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

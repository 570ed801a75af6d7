"""End-to-end fixtures: the real control plane, a fresh fleet, and the operator as a process.

The operator runs exactly as a user runs it (`python -m wso2_operator --standalone -n NS`), so
kill -9 means kill -9. An LB sampler reads both HAProxy admin sockets every 100 ms for the whole
test and is the ground truth for "never more than maxUnavailable out of rotation".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kube
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.manifest import fleet_manifests

FAST = {"boot_seconds": 1.5, "ready_gap_seconds": 0.5, "install_seconds": 0.3}


@dataclass
class OperatorProcess:
    kubeconfig: Path
    namespace: str
    log_path: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    standalone: bool = True  # False: kopf peering, as args (--peering=...) say

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "WSO2_OBSERVE_PERIOD": "3",
            "WSO2_ACTIVE_PERIOD": "1",
            **self.env_extra,
        }
        self.starts += 1
        out = self.log_path.open("ab")
        out.write(f"\n===== start #{self.starts} =====\n".encode())
        out.flush()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wso2_operator",
                *(["--standalone"] if self.standalone else []),
                "-n",
                self.namespace,
                *self.args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        out.close()
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class LBSampler:
    """Reads `show stat` on every LB every `interval` seconds, in a thread."""

    def __init__(self, fleet: Fleet, interval: float = 0.1) -> None:
        self.fleet = fleet
        self.interval = interval
        self.samples: list[tuple[float, dict[str, dict[str, str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LBSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            snap: dict[str, dict[str, str]] = {}
            for lb in self.fleet.lbs:
                try:
                    servers = lb.servers()
                except Exception:
                    continue
                snap[lb.name] = {name: row.get("status", "") for name, row in servers.items()}
            self.samples.append((t, snap))
            self._stop.wait(self.interval)

    def out_of_rotation(self, snap: dict[str, dict[str, str]]) -> set[str]:
        """Nodes that are not UP on at least one LB."""
        out = set()
        for servers in snap.values():
            for name, status in servers.items():
                if not status.startswith("UP"):
                    out.add(name)
        return out

    def max_out(self) -> int:
        return max((len(self.out_of_rotation(s)) for _, s in self.samples), default=0)

    def returns_to_rotation(self) -> list[tuple[float, str]]:
        """(time, node) for each moment a node went from out of rotation back to UP everywhere."""
        events = []
        prev: set[str] = set()
        for t, snap in self.samples:
            cur = self.out_of_rotation(snap)
            for n in prev - cur:
                events.append((t, n))
            prev = cur
        return events

    def ever_out(self) -> set[str]:
        return set().union(*(self.out_of_rotation(s) for _, s in self.samples))


@dataclass
class Env:
    kube: Kube
    fleet: Fleet
    namespace: str
    operator: OperatorProcess
    name: str = "wso2ei"

    def apply_cluster(self, version: str = "1.0.0", **kw: Any) -> None:
        for doc in fleet_manifests(
            self.fleet.description, name=self.name, namespace=self.namespace, version=version, **kw
        ):
            self.kube.apply(doc)

    def get(self) -> dict[str, Any]:
        return self.kube.get_json("w2c", self.name, "-n", self.namespace)

    def patch_spec(self, spec: dict[str, Any]) -> None:
        self.kube.run(
            "patch",
            "w2c",
            self.name,
            "-n",
            self.namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": spec}),
        )

    def condition(self, ctype: str) -> dict[str, Any]:
        for c in self.get().get("status", {}).get("conditions", []):
            if c["type"] == ctype:
                return c
        return {}

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 90, what: str = ""
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.get()
            if predicate(obj):
                return obj
            time.sleep(0.1)
        raise AssertionError(
            f"timed out waiting for {what or predicate}:\n"
            f"{json.dumps(obj.get('status'), indent=1)[:4000]}\n--- operator log tail ---\n"
            f"{self.operator.log()[-4000:]}"
        )

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        def ready(o: dict[str, Any]) -> bool:
            st = o.get("status", {})
            conds = {c["type"]: c for c in st.get("conditions", [])}
            c = conds.get("Ready", {})
            return (
                c.get("status") == "True"
                and st.get("observedGeneration") == o["metadata"]["generation"]
            )

        return self.wait_for(ready, timeout, "Ready=True")

    def node_phase(self, obj: dict[str, Any], node: str) -> str:
        for row in obj.get("status", {}).get("nodes", []):
            if row["name"] == node:
                return row.get("phase", "")
        return ""

    def events(self) -> list[dict[str, Any]]:
        return self.kube.get_json("events", "-n", self.namespace)["items"]


@pytest.fixture
def make_env(kube: Kube, tmp_path: Path) -> Iterator[Callable[..., Env]]:
    created: list[Env] = []

    def factory(nodes: int = 3, **timing: float) -> Env:
        fleet = Fleet(FleetConfig(nodes=nodes, **{**FAST, **timing})).start()
        ns = kube.new_namespace("e2e")
        op = OperatorProcess(kube.kubeconfig, ns, tmp_path / f"operator-{ns}.log")
        env = Env(kube=kube, fleet=fleet, namespace=ns, operator=op)
        created.append(env)
        return env

    yield factory
    for env in created:
        env.operator.stop()
        env.fleet.stop()


def installs_completed(env: Env, node: str, version: str) -> int:
    return sum(
        1
        for e in env.fleet.node(node).events()
        if e["event"] == "install_end" and e.get("version") == version
    )

"""The Kubernetes side of an operator run: the API helper and the operator process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.paths import CRD, KUBECTL, REPO
from wso2_sandbox.controlplane import wait_established

GROUP, VERSION, PLURAL = "vmops.dev", "v1alpha1", "wso2clusters"
CLUSTER_NAME = "wso2ei"


class Kube:
    """kubectl for set-up; the Python client (no process start-up) for the timed patch/polls."""

    def __init__(self, kubeconfig: Path) -> None:
        import kubernetes

        self.kubeconfig = Path(kubeconfig)
        self._api = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        self._custom = kubernetes.client.CustomObjectsApi(self._api)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run(
            [KUBECTL, *args],
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            timeout=120,
        )
        if proc.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def install_crd(self) -> None:
        self.kubectl("apply", "-f", str(CRD))
        wait_established(self.kubectl, [f"crd/{PLURAL}.{GROUP}"], RuntimeError)

    def new_namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        return name

    def apply(self, docs: Iterable[dict[str, Any]], namespace: str) -> None:
        items = list(docs)
        self.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def get_cluster(self, namespace: str, name: str = CLUSTER_NAME) -> dict[str, Any]:
        return self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def patch_version(self, namespace: str, version: str, name: str = CLUSTER_NAME) -> None:
        self._custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": {"version": version}}
        )

    def wait_cluster(
        self,
        namespace: str,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str,
        poll: float = 0.2,
        diagnose: Callable[[], str] = lambda: "",
        timeline: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Poll the WSO2Cluster until `pred`; each change of node phases goes to `timeline`."""
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # transient API errors: poll again
                obj = self.get_cluster(namespace)
                if timeline is not None:
                    phases = {
                        r["name"]: r.get("phase", "")
                        for r in (obj.get("status") or {}).get("nodes") or []
                    }
                    if not timeline or timeline[-1]["phases"] != phases:
                        timeline.append({"t": time.time(), "phases": phases})
                if pred(obj):
                    return obj
            time.sleep(poll)
        status = json.dumps(obj.get("status"), indent=1)[:3000]
        raise TimeoutError(f"{what} not reached in {timeout:.0f}s; status: {status}\n{diagnose()}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._api.close()


def cluster_done(obj: dict[str, Any], version: str | None = None) -> bool:
    """Ready=True for the current generation (and, with `version`, every node runs it)."""
    st = obj.get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("status") != "True":
        return False
    if st.get("observedGeneration") != obj.get("metadata", {}).get("generation"):
        return False
    if version is None:
        return True
    rows = st.get("nodes") or []
    return bool(rows) and all(r.get("version") == version for r in rows)


def rolled_back(obj: dict[str, Any], version: str) -> bool:
    """Degraded=RolledBack (failurePolicy Rollback did its work) and every node runs `version`."""
    st = obj.get("status") or {}
    degraded = next((c for c in st.get("conditions") or [] if c.get("type") == "Degraded"), {})
    rows = st.get("nodes") or []
    return (
        degraded.get("reason") == "RolledBack"
        and bool(rows)
        and all(r.get("version") == version for r in rows)
    )


@dataclass
class OperatorProcess:
    """The operator exactly as a user runs it, in its own session so it can be stopped whole."""

    kubeconfig: Path
    namespace: str
    log_path: Path
    profile_path: Path | None = None  # run under pyinstrument, text report here
    metrics_port: int = 0  # the operator's own Prometheus metrics (step durations), 0: off
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        args = ["wso2_operator", "--standalone", "-n", self.namespace]
        if self.metrics_port:
            args.append(f"--metrics-port={self.metrics_port}")
        argv = [sys.executable, "-m", *args]
        if self.profile_path is not None:
            argv = [
                sys.executable, "-m", "pyinstrument", "-r", "text",
                "-o", str(self.profile_path), "-m", *args,
            ]  # fmt: skip
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
                cwd=REPO,
                start_new_session=True,
            )
        return self

    def peak_rss_kib(self) -> int | None:
        """VmHWM: the high-water mark of the operator's resident memory."""
        if self.proc is None:
            return None
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) if m else None

    def step_metrics(self) -> dict[str, dict[str, float]]:
        """Sum and count of the operator's step and adapter-call histograms, by label."""
        if not self.metrics_port:
            return {}
        import urllib.request

        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out: dict[str, dict[str, float]] = {}
        pat = r"^wso2_(node_step|adapter_call)_duration_seconds_(sum|count)\{([^}]*)\} (\S+)$"
        for m in re.finditer(pat, text, re.M):
            family, stat, labels, value = m.groups()
            lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            key = f"{family}:{lab.get('step') or lab.get('adapter')}:{lab.get('result')}"
            out.setdefault(key, {})[stat] = float(value)
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGINT under pyinstrument: it writes its report when the program ends normally.
        sig = signal.SIGINT if self.profile_path is not None else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

"""Starting and stopping the operator process, and its Events, against a real kube-apiserver.

* a --liveness port in use is one line and exit code 2, not a traceback;
* `make operator` (wso2_sandbox.sandbox_operator) records the operator's pid, and `stop` (what
  `make cluster-down` runs) stops it;
* with --exit-if-apiserver-gone the operator stops by itself, in one line with exit code 3,
  once its apiserver is gone;
* Events posted within one second are listed by `kubectl get events` in the order they happened.

The operator tests use their own control plane: one with -A on the session's would act on the
clusters of the end-to-end tests, and one of them stops it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from tests.conftest import Kube, wait_for
from wso2_operator import events
from wso2_sandbox.controlplane import ControlPlane


def _held_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_liveness_port_in_use_is_one_line(tmp_path: Path) -> None:
    with _held_port() as held:
        port = held.getsockname()[1]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "wso2_operator",
                "--standalone",
                "-A",
                f"--liveness=http://127.0.0.1:{port}/healthz",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            # No apiserver at all: the port is checked before anything else.
            env={**os.environ, "KUBECONFIG": str(tmp_path / "none")},
        )
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == (
        f"wso2-operator: cannot serve --liveness on 127.0.0.1:{port}: Address already in use "
        "(is another operator running?)\n"
    )


def test_make_operator_with_a_taken_liveness_port_is_one_line(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")  # only its existence is checked before the port
    with _held_port() as held:
        port = held.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "wso2_sandbox.sandbox_operator", "run",
             "--kubeconfig", str(kubeconfig), "--pid-file", str(tmp_path / "operator.pid"),
             "--liveness-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (
        f"operator: LIVENESS_PORT={port} is in use (is another operator running?); choose "
        "another, or leave LIVENESS_PORT unset for 8080 or a free port\n"
    )
    assert not (tmp_path / "operator.pid").exists()


def test_sandbox_operator_refuses_without_a_control_plane(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "wso2_sandbox.sandbox_operator", "run", "--kubeconfig",
         str(tmp_path / "kubeconfig"), "--pid-file", str(tmp_path / "operator.pid")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.strip().endswith("start the control plane first (make cluster)")
    assert not (tmp_path / "operator.pid").exists()


@pytest.fixture(scope="module")
def own_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(workdir=tmp_path_factory.mktemp("own-controlplane")) as cp:
        yield cp


def _wait_started(log: Path, proc: subprocess.Popen[bytes]) -> None:
    wait_for(
        "the operator to start",
        lambda: proc.poll() is not None or "Initial authentication has finished" in log.read_text(),
        60,
        log.read_text,
    )
    assert proc.poll() is None, log.read_text()


def test_sandbox_operator_records_its_pid_and_stop_stops_it(
    own_control_plane: ControlPlane, tmp_path: Path
) -> None:
    pid_file, log = tmp_path / "operator.pid", tmp_path / "operator.log"
    port = _free_port()
    argv = [sys.executable, "-m", "wso2_sandbox.sandbox_operator"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "run", "--kubeconfig", str(own_control_plane.kubeconfig),
             "--pid-file", str(pid_file), "--liveness-port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_started(log, proc)
        # exec: the recorded pid is the operator itself, the process Ctrl-C reaches.
        assert int(pid_file.read_text()) == proc.pid
        assert f"liveness http://127.0.0.1:{port}/healthz; Ctrl-C stops it" in log.read_text()
        again = subprocess.run(
            [*argv, "run", "--kubeconfig", str(own_control_plane.kubeconfig),
             "--pid-file", str(pid_file)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 1 and f"already running (pid {proc.pid}" in again.stderr
        stop = subprocess.run(
            [*argv, "stop", "--pid-file", str(pid_file)], capture_output=True, text=True, timeout=60
        )
        assert stop.stdout == f"operator (pid {proc.pid}): stopped\n"
        assert proc.wait(timeout=5) == 0
        assert not pid_file.exists()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_operator_stops_in_one_line_when_its_apiserver_is_gone(
    own_control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Last in the module: it stops the module's control plane."""
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wso2_operator", "--standalone", "-A",
             f"--liveness=http://127.0.0.1:{_free_port()}/healthz",
             "--exit-if-apiserver-gone=4"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "KUBECONFIG": str(own_control_plane.kubeconfig)},
        )  # fmt: skip
    try:
        _wait_started(log, proc)
        time.sleep(2)
        assert proc.poll() is None, "stopped while its apiserver was still there"
        gone_at = time.monotonic()
        own_control_plane.stop()
        rc = proc.wait(timeout=40)
        took = time.monotonic() - gone_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert rc == 3, text
    assert 4 <= took < 30, text
    last = text.strip().splitlines()[-1]
    assert last.startswith(
        f"wso2-operator: the Kubernetes API at {own_control_plane.server} has not answered for 4s"
    ), text
    assert last.endswith("Connection refused); the operator stops"), text
    assert "Traceback" not in text
    assert len(text.splitlines()) < 40, text  # no flood


def test_events_within_a_second_are_listed_in_order(kube: Kube, namespace: str) -> None:
    """`kubectl get events` lists Events by name; ours are named by time, with eventTime to the
    microsecond, so a burst keeps its order (kopf's random names shuffled it)."""
    kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig))
    obj = {
        "apiVersion": "vmops.dev/v1alpha1",
        "kind": "WSO2Cluster",
        "metadata": {"name": "wso2ei", "namespace": namespace, "uid": "0000-test"},
    }
    api = kubernetes.client.CoreV1Api()
    reasons = [f"Step{i}" for i in range(12)]
    for r in reasons:
        events.create(events.event_body(obj, r, f"{r} happened", False, events._unique_ns()), api)
    items = kube.get_json("events", "-n", namespace)["items"]
    assert [e["reason"] for e in items] == reasons
    times = [e["eventTime"] for e in items]
    assert all(len(t) == len("2026-01-01T00:00:00.000000Z") for t in times), times
    assert times == sorted(times) and len(set(times)) == len(times)
    table = kube.run("get", "events", "-n", namespace).stdout.splitlines()
    assert [line.split()[2] for line in table[1:]] == reasons
    described = json.dumps(items[0])
    assert '"reportingComponent": "wso2-operator"' in described

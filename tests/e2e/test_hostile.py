"""Hostile and unlucky worlds, end to end: what an attacker or an unlucky operator can do to a
cluster (status that lies, a second operator, an admin's own MAINT, a node that floods its
output, an LB that answers garbage, a Secret that holds the wrong key) and what the operator
must still promise: no more than maxUnavailable out, no request failed, no Secret byte shown,
bounded memory, and a condition with a reason plus an Event for every problem."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.e2e.conftest import Env, LBSampler, OperatorProcess, installs_completed
from wso2_sandbox.load import LoadConfig, LoadGenerator, LoadThread, targets_from_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
BACKEND = "PRD_wso2ei"


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def reasons(env: Env) -> list[str]:
    return [e["reason"] for e in env.events()]


def all_at(obj: dict, version: str) -> bool:
    rows = obj.get("status", {}).get("nodes", [])
    return bool(rows) and all(r.get("version") == version for r in rows)


@contextlib.contextmanager
def load_on(env: Env, rate: int = 30) -> Iterator[LoadThread]:
    load = LoadThread(
        LoadGenerator(
            targets_from_fleet(env.fleet.description),
            LoadConfig(rate=rate, long_fraction=0.1, long_ms=(200, 800), seed=11),
        )
    )
    load.start()
    try:
        yield load
    finally:
        load.generator.stop()


def assert_no_failed_request(load: LoadThread) -> None:
    records = load.stop()
    failed = [r for r in records if not r.ok]
    assert records and not failed, failed[:5]


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def set_admin_state(env: Env, node: str, state: str) -> None:
    for lb in env.fleet.lbs:
        reply = lb.command(f"set server {BACKEND}/{node} state {state}")
        assert reply.strip() == "", reply


# ------------------------------------------------------------------------ status that lies


def test_stale_status_claims_never_take_more_than_max_unavailable_out(make_env):
    """Status restored from a backup says node1 AND node2 are mid-install, while both serve.
    Believing it would put both straight into MAINT (2 > maxUnavailable=1) and install on nodes
    that still take requests. The operator drains one first and drops the other claim."""
    env: Env = make_env(install_seconds=0.5)
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    env.operator.stop()
    env.patch_spec({"version": "2.0.0"})
    start = time.strftime("%Y-%m-%dT%H:%M:%S.250+00:00", time.gmtime())  # fractions + offset
    rows = [
        {"name": n, "phase": "Provisioning", "target": "2.0.0", "previousVersion": "1.0.0",
         "step": 1, "startTime": start, "lastTransitionTime": start, "attempts": 0,
         "message": "restored", "loadBalancers": {}}
        for n in ("node1", "node2")
    ] + [{"name": "node3", "phase": "Current", "loadBalancers": {}, "message": "", "step": 0,
          "attempts": 0}]  # fmt: skip
    status = {
        "nodes": rows,
        "rollout": {
            "fromVersion": "1.0.0",
            "toVersion": "2.0.0",
            "startTime": start,
            "finished": False,
        },
    }
    env.kube.run(
        "patch", "w2c", env.name, "-n", env.namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    with LBSampler(env.fleet) as sampler, load_on(env) as load:
        env.operator.start()
        obj = env.wait_for(
            lambda o: all_at(o, "2.0.0") and conditions(o).get("Ready", {}).get("status") == "True",
            timeout=150,
            what="Ready at 2.0.0",
        )
        assert_no_failed_request(load)
    assert sampler.max_out() == 1, "never two nodes out, whatever status claimed"
    seen = reasons(env)
    assert "ClaimRedrained" in seen and "ClaimDiscarded" in seen, seen
    for n in ("node1", "node2", "node3"):
        assert installs_completed(env, n, "2.0.0") == 1, n
    assert obj["status"]["history"][-1]["result"] == "Succeeded"


# ---------------------------------------------------------------------- an admin's own MAINT


def test_an_admins_maint_is_respected_reported_and_handed_back(make_env):
    env: Env = make_env(install_seconds=0.3)
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    set_admin_state(env, "node2", "maint")
    obj = env.wait_for(
        lambda o: conditions(o).get("Degraded", {}).get("reason") == "NodeHeldOut",
        what="Degraded=NodeHeldOut",
    )
    assert conditions(obj)["Degraded"]["status"] == "True"
    assert "vmops.dev/hand-back" in conditions(obj)["Degraded"]["message"]
    env.patch_spec({"version": "2.0.0"})
    time.sleep(8)  # several observation periods (3 s): the MAINT must stay, nothing may start
    for lb in env.fleet.lbs:
        assert lb.servers()["node2"]["status"].startswith("MAINT"), lb.servers()["node2"]
    assert installs_completed(env, "node2", "2.0.0") == 0
    assert installs_completed(env, "node1", "2.0.0") == 0, "node2 out uses maxUnavailable=1"
    assert "NodeHeldOut" in reasons(env)
    with LBSampler(env.fleet) as sampler:
        env.kube.run(
            "annotate", "w2c", env.name, "-n", env.namespace, "vmops.dev/hand-back=node2 1",
            "--overwrite",
        )  # fmt: skip
        obj = env.wait_ready(timeout=150)
    assert all_at(obj, "2.0.0")
    assert sampler.max_out() == 1
    for lb in env.fleet.lbs:
        assert lb.servers()["node2"]["status"].startswith("UP")
    # Handed back once: a later MAINT by the admin is respected again.
    set_admin_state(env, "node3", "drain")
    time.sleep(7)
    for lb in env.fleet.lbs:
        assert lb.servers()["node3"]["status"].startswith("DRAIN")


# ------------------------------------------------------------------------- a second operator


def test_two_operators_never_both_act(make_env, tmp_path):
    """Two operators on the same objects (different peering, or a handover): conditional status
    writes make one stand down; killing the active one hands over after its lease."""
    env: Env = make_env(install_seconds=1.0)
    second = OperatorProcess(env.kube.kubeconfig, env.namespace, tmp_path / "operator-2.log")
    env.operator.start()
    second.start()
    try:
        env.apply_cluster("1.0.0")
        env.wait_ready()
        env.wait_for(
            lambda o: "ConcurrentOperator" in reasons(env), timeout=60, what="a stand-down"
        )
        with LBSampler(env.fleet) as sampler, load_on(env) as load:
            env.patch_spec({"version": "2.0.0"})
            env.wait_for(
                lambda o: env.node_phase(o, "node1") == "Provisioning", what="node1 Provisioning"
            )
            writer = env.get()["status"]["writer"]
            active = next(p for p in (env.operator, second) if f"/{p.proc.pid}/" in writer)
            active.kill9()
            obj = env.wait_ready(timeout=200)
            assert_no_failed_request(load)
        assert all_at(obj, "2.0.0")
        assert sampler.max_out() == 1
        for n in ("node1", "node2", "node3"):
            assert installs_completed(env, n, "2.0.0") == 1, n
        assert f"/{active.proc.pid}/" not in obj["status"]["writer"]
    finally:
        second.stop()


# ------------------------------------------------------------------ a node that floods output


def test_flooding_version_command_is_version_unknown_and_memory_stays_bounded(make_env):
    env: Env = make_env(install_seconds=0.3)
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    flood = (
        'if [ "$NODE_NAME" = node2 ]; then head -c 200000000 /dev/zero | tr "\\0" 9; '
        "else wso2ctl version; fi"
    )
    with LBSampler(env.fleet) as sampler:
        env.patch_spec({"version": "2.0.0", "provision": {"versionCommand": flood}})
        obj = env.wait_for(
            lambda o: (
                all(
                    r.get("version") == "2.0.0"
                    for r in o.get("status", {}).get("nodes", [])
                    if r["name"] != "node2"
                )
                and env.node_phase(o, "node2") == "Unknown"
            ),
            timeout=150,
            what="node1/node3 at 2.0.0, node2 Unknown",
        )
        time.sleep(4)
    assert "node2" not in sampler.ever_out(), "an unreadable version is never a reason to drain"
    assert installs_completed(env, "node2", "2.0.0") == 0
    row = next(r for r in obj["status"]["nodes"] if r["name"] == "node2")
    assert "not one version" in row["message"], row
    unknown = [e for e in env.events() if e["reason"] == "VersionUnknown"]
    assert len(unknown) == 1 and "node2" in unknown[0]["message"], "one Event, not one per pass"
    assert len(json.dumps(obj["status"])) < 64 * 1024
    hwm_mib = vm_hwm_kib(env.operator.proc.pid) / 1024
    print(f"\noperator peak RSS with a 200 MB versionCommand: {hwm_mib:.0f} MiB")
    assert hwm_mib < 400
    assert env.operator.proc.poll() is None, "the operator is still running"
    assert len(env.operator.log()) < 2_000_000
    for e in env.events():
        assert len(e["message"]) <= 1024


# --------------------------------------------------------------- a Secret with the wrong key


def test_a_private_key_under_known_hosts_never_leaks(make_env):
    env: Env = make_env()
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    pem = asyncssh.generate_private_key("ssh-rsa", key_size=2048).export_private_key().decode()
    env.kube.run(
        "patch", "secret", f"{env.name}-ssh", "-n", env.namespace, "--type=merge",
        "-p", json.dumps({"stringData": {"known_hosts": pem}}),
    )  # fmt: skip
    obj = env.wait_for(
        lambda o: conditions(o).get("Degraded", {}).get("reason") == "InvalidSSHCredentials",
        what="Degraded=InvalidSSHCredentials",
    )
    time.sleep(4)
    message = conditions(obj)["Degraded"]["message"]
    assert "line" in message, message
    assert "InvalidSSHCredentials" in reasons(env)
    everything = json.dumps(env.get()) + json.dumps(env.events()) + env.operator.log()
    secret_lines = [ln for ln in pem.splitlines() if ln and not ln.startswith("-----")]
    for ln in secret_lines:
        for i in range(0, len(ln) - 16, 8):
            assert ln[i : i + 16] not in everything, "a piece of the private key leaked"


# ------------------------------------------------------------- a step that never finishes


def test_progress_deadline_cancels_a_stuck_step(make_env):
    env: Env = make_env()
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    t0 = time.monotonic()
    env.patch_spec(
        {
            "version": "2.0.0",
            "provision": {"commands": ["wso2ctl stop", "sleep 3600"], "timeoutSeconds": 3000},
            "update": {"drainTimeoutSeconds": 5, "progressDeadlineSeconds": 15},
        }
    )
    obj = env.wait_for(
        lambda o: env.node_phase(o, "node1") == "Failed", timeout=60, what="node1 Failed"
    )
    elapsed = time.monotonic() - t0
    assert conditions(obj)["Degraded"]["reason"] == "ProgressDeadlineExceeded"
    assert elapsed < 15 + 15, f"failed after {elapsed:.0f}s"
    assert "ProgressDeadlineExceeded" in reasons(env)
    # The cancelled command was killed on the node, not left running.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", "sleep 3600"], capture_output=True).returncode:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("sleep 3600 still runs on the node")


# ------------------------------------------------------------------ an LB that talks garbage


class GarbageLB:
    """A TCP 'admin socket' that answers every connection with 12 MiB and never a prompt."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._flood, args=(conn,), daemon=True).start()

    def _flood(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            chunk = os.urandom(64 * 1024).replace(b"\n> ", b"xxx")
            for _ in range(12 * 16):
                conn.sendall(chunk)
            time.sleep(30)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def test_an_lb_that_sends_garbage_is_reported_and_nothing_moves(make_env):
    env: Env = make_env()
    junk = GarbageLB()
    try:
        env.operator.start()
        env.apply_cluster("1.0.0")
        env.wait_ready()
        obj = env.get()
        hosts = obj["spec"]["loadBalancers"]["hosts"] + [
            {"name": "junk", "address": f"127.0.0.1:{junk.port}"}
        ]
        with LBSampler(env.fleet) as sampler:
            env.patch_spec(
                {"version": "2.0.0", "loadBalancers": {"hosts": hosts, "tolerateUnreachable": True}}
            )
            obj = env.wait_for(
                lambda o: (
                    conditions(o).get("Degraded", {}).get("reason")
                    in ("LoadBalancerProtocolError", "LoadBalancerError")
                ),
                timeout=90,
                what="Degraded naming the junk LB",
            )
            time.sleep(6)
        assert "junk" in conditions(obj)["Degraded"]["message"]
        assert conditions(obj)["Degraded"]["reason"] in reasons(env), "an Event too"
        assert junk.connections >= 1
        assert not sampler.ever_out(), "no node is touched while an LB answers garbage"
        assert env.operator.proc.poll() is None
        assert vm_hwm_kib(env.operator.proc.pid) / 1024 < 400
    finally:
        junk.close()


# ------------------------------------------------------- a node removed from the spec mid-flight


def test_a_node_removed_while_out_is_reported_until_it_is_back(make_env):
    env: Env = make_env(install_seconds=8.0)
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    env.patch_spec({"version": "2.0.0"})
    env.wait_for(lambda o: env.node_phase(o, "node1") == "Provisioning", what="node1 Provisioning")
    nodes = [n for n in env.get()["spec"]["nodes"] if n["name"] != "node1"]
    env.patch_spec({"nodes": nodes})
    obj = env.wait_for(
        lambda o: (
            o.get("status", {}).get("departedNodes") == ["node1"]
            and conditions(o).get("Degraded", {}).get("reason") == "NodeRemovedWhileOut"
        ),
        what="node1 reported as removed while out",
    )
    assert "node1" in conditions(obj)["Degraded"]["message"]
    assert "NodeRemovedWhileOut" in reasons(env)
    for lb in env.fleet.lbs:
        assert lb.servers()["node1"]["status"].startswith("MAINT"), "left where it was"
    obj = env.wait_for(lambda o: all_at(o, "2.0.0"), timeout=120, what="node2 and node3 at 2.0.0")
    assert conditions(obj)["Degraded"]["status"] == "True", "node1 is still out"
    set_admin_state(env, "node1", "ready")
    obj = env.wait_for(
        lambda o: (
            not o.get("status", {}).get("departedNodes")
            and conditions(o).get("Ready", {}).get("status") == "True"
        ),
        what="node1 back in rotation: nothing left to report",
    )
    assert conditions(obj)["Degraded"]["status"] == "False"

"""The operator end to end: real apiserver, real HAProxy and sshd, the operator as a process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Env, LBSampler, installs_completed

pytestmark = pytest.mark.e2e


def all_at(obj: dict, version: str) -> bool:
    rows = obj.get("status", {}).get("nodes", [])
    return bool(rows) and all(r.get("version") == version for r in rows)


def assert_clean_return(env: Env, sampler: LBSampler, version: str) -> None:
    """No node came back into rotation before it ran `version` and was ready."""
    for t, node in sampler.returns_to_rotation():
        ready = [
            e["t"]
            for e in env.fleet.node(node).events()
            if e["event"] == "ready" and e.get("version") == version
        ]
        assert ready and min(ready) <= t + 0.05, f"{node} back in rotation at {t} before ready"


def test_rollout_one_at_a_time(make_env):
    env: Env = make_env()
    env.operator.start()
    env.apply_cluster("1.0.0")
    obj = env.wait_ready()
    assert obj["status"]["ready"] == "3/3"
    assert obj["status"]["currentVersion"] == "1.0.0"
    table = env.kube.run("get", "w2c", "-n", env.namespace).stdout
    assert "1.0.0" in table and "3/3" in table and "Ready" in table

    with LBSampler(env.fleet) as sampler:
        env.patch_spec({"version": "2.0.0"})
        env.kube.run(
            "wait",
            "--for=condition=Ready",
            f"w2c/{env.name}",
            "-n",
            env.namespace,
            "--timeout=120s",
        )
        obj = env.wait_ready()
    assert all_at(obj, "2.0.0")
    assert obj["status"]["currentVersion"] == "2.0.0"
    assert sampler.max_out() == 1, "never more than one node out of rotation"
    assert sampler.ever_out() == {"node1", "node2", "node3"}
    assert_clean_return(env, sampler, "2.0.0")
    for n in ("node1", "node2", "node3"):
        assert env.fleet.node(n).installed_version() == "2.0.0"
        assert installs_completed(env, n, "2.0.0") == 1
    history = obj["status"]["history"]
    assert history[-1]["result"] == "Succeeded" and history[-1]["toVersion"] == "2.0.0"
    messages = " ".join(e["message"] for e in env.events())
    for n in ("node1", "node2", "node3"):
        assert f"{n}:" in messages
    reasons = {e["reason"] for e in env.events()}
    assert "DriftDetected" not in reasons and "StateReasserted" not in reasons
    started = sorted(e["message"] for e in env.events() if e["reason"] == "NodeUpdateStarted")
    assert started == [f"node{i}: updating 1.0.0 -> 2.0.0" for i in (1, 2, 3)]
    describe = env.kube.run("describe", "w2c", env.name, "-n", env.namespace).stdout
    assert "AllNodesReady" in describe and "NodeUpdateStarted" in describe


def test_max_unavailable_two_of_four(make_env):
    env: Env = make_env(nodes=4)
    env.operator.start()
    env.apply_cluster("1.0.0", update={"maxUnavailable": 2})
    env.wait_ready()
    with LBSampler(env.fleet) as sampler:
        env.patch_spec({"version": "2.0.0"})
        obj = env.wait_ready()
    assert all_at(obj, "2.0.0")
    assert sampler.max_out() == 2, "batches of two, never three"
    assert_clean_return(env, sampler, "2.0.0")


def test_failed_provision_pauses_then_fixed_version_completes(make_env):
    env: Env = make_env()
    env.fleet.node("node2").set_fail_install(["2.0.0"])
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    with LBSampler(env.fleet) as sampler:
        env.patch_spec({"version": "2.0.0"})
        obj = env.wait_for(
            lambda o: any(
                c["type"] == "Degraded" and c["status"] == "True"
                for c in o.get("status", {}).get("conditions", [])
            ),
            what="Degraded=True",
        )
        degraded = env.condition("Degraded")
        assert degraded["reason"] == "ProvisionFailed"
        # The README's example, word for word: no repeated reason, the failed command line.
        assert degraded["message"] == (
            "node2: provision command 2/3 (`wso2ctl install`) failed: exited 1: wso2ctl: "
            "installing 2.0.0 on node2 failed: package checksum mismatch (simulated)"
        )
        warning = [e for e in env.events() if e["reason"] == "ProvisionFailed"]
        assert [e["message"] for e in warning] == [degraded["message"]]
        assert warning[0]["type"] == "Warning"
        time.sleep(3)  # several observation periods: nothing else may move
        obj = env.get()
        assert env.node_phase(obj, "node2") == "Failed"
        lb_states = {lb.name: lb.servers()["node2"]["status"] for lb in env.fleet.lbs}
        assert all(s.startswith("MAINT") for s in lb_states.values()), lb_states
        for lb in env.fleet.lbs:
            assert lb.servers()["node3"]["status"].startswith("UP")
        assert env.fleet.node("node3").installed_version() == "1.0.0"
        assert not [e for e in env.fleet.node("node3").events() if e["event"] == "install_start"]
        assert env.condition("Ready")["status"] == "False"
        assert obj["status"]["phase"] == "Degraded"
        # A fixed version goes on from there.
        env.patch_spec({"version": "2.0.1"})
        obj = env.wait_ready()
    assert all_at(obj, "2.0.1")
    assert sampler.max_out() == 1
    assert env.condition("Degraded")["status"] == "False"
    results = [h["result"] for h in obj["status"]["history"]]
    assert results[-2:] == ["Failed", "Succeeded"]


def test_unhealthy_new_version_goes_back_to_maint_and_never_serves(make_env):
    # WAIT_HEALTHY warms HAProxy's checks (DRAIN + forced down) while the node boots; a node that
    # then fails the operator's own health check must end in MAINT, not sit in DRAIN.
    env: Env = make_env()
    node1 = env.fleet.node("node1")
    env.operator.start()
    env.apply_cluster("1.0.0", health={"healthyDeadlineSeconds": 3})
    env.wait_ready()
    node1.set_timing(boot_seconds=600, ready_gap_seconds=600)  # port open, /health 503
    with LBSampler(env.fleet) as sampler:
        env.patch_spec({"version": "2.0.0"})
        env.wait_for(
            lambda o: env.node_phase(o, "node1") == "Failed", what="node1 Failed", timeout=60
        )
    assert env.condition("Degraded")["reason"] == "HealthCheckFailed"
    statuses = {lb.name: lb.servers()["node1"]["status"] for lb in env.fleet.lbs}
    assert all(s.startswith("MAINT") for s in statuses.values()), statuses
    first_out = next(t for t, snap in sampler.samples if "node1" in sampler.out_of_rotation(snap))
    after = [snap for t, snap in sampler.samples if t >= first_out]
    assert all("node1" in sampler.out_of_rotation(snap) for snap in after)
    assert sampler.max_out() == 1
    assert env.fleet.node("node2").installed_version() == "1.0.0"


def test_pause_stops_and_resume_finishes(make_env):
    env: Env = make_env()
    env.operator.start()
    env.apply_cluster("1.0.0", update={"paused": True})
    env.wait_for(lambda o: o.get("status", {}).get("phase") == "Paused", what="Paused")
    env.patch_spec({"version": "2.0.0"})
    time.sleep(4)
    for n in ("node1", "node2", "node3"):
        assert not [e for e in env.fleet.node(n).events() if e["event"] == "install_start"]
    obj = env.get()
    assert obj["status"]["phase"] == "Paused"
    assert env.condition("Ready")["reason"] == "Paused"
    # One Event for the pause, not one per pass (4 s is more than one observe period).
    paused = [e["message"] for e in env.events() if e["reason"] == "Paused"]
    assert len(paused) == 1 and paused[0].startswith(
        "spec.update.paused is true: no new node is started; a node in flight is finished and "
        "put back first ("
    )
    env.patch_spec({"update": {"paused": False}})
    obj = env.wait_ready()
    assert all_at(obj, "2.0.0")
    reasons = [e["reason"] for e in env.events()]
    assert reasons.count("Paused") == 1 and reasons.count("Resumed") == 1


def test_retries_share_one_history_row_and_events_list_in_order(make_env):
    """A version retried until it installs: one history row counting the attempts, and
    `kubectl get events` (ordered by name) in the order things happened."""
    env: Env = make_env()
    env.fleet.node("node2").set_fail_install(["2.0.0"])
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    env.patch_spec({"version": "2.0.0"})

    def failed_rows(o: dict) -> list[dict]:
        return [h for h in o.get("status", {}).get("history") or [] if h["result"] == "Failed"]

    env.wait_for(lambda o: failed_rows(o), what="a Failed history row")
    for attempt in (2, 3):
        if attempt == 3:
            env.fleet.node("node2").set_fail_install([])
        env.kube.run(
            "annotate", "w2c", env.name, "-n", env.namespace,
            f"vmops.dev/retry=attempt-{attempt}", "--overwrite",
        )  # fmt: skip
        if attempt == 2:
            env.wait_for(
                lambda o: (failed_rows(o) or [{}])[-1].get("attempts") == 2,
                what="the retry's failure counted in the same row",
            )
    obj = env.wait_ready()
    assert all_at(obj, "2.0.0")
    history = obj["status"]["history"]
    assert len(history) == 1, history
    assert (history[0]["fromVersion"], history[0]["toVersion"]) == ("1.0.0", "2.0.0")
    assert (history[0]["result"], history[0]["attempts"]) == ("Succeeded", 3)
    listed = env.events()
    times = [e["eventTime"] for e in listed]
    assert times == sorted(times), [(e["reason"], e["eventTime"]) for e in listed]
    reasons = [e["reason"] for e in listed]
    assert reasons.count("RetryRequested") == 2
    assert reasons.index("ProvisionFailed") < reasons.index("RetryRequested")
    assert "RolloutSucceeded" in reasons


def test_rollback_policy_returns_updated_nodes(make_env):
    env: Env = make_env()
    env.fleet.node("node3").set_fail_install(["2.0.0"])
    env.operator.start()
    env.apply_cluster("1.0.0", update={"failurePolicy": "Rollback"})
    env.wait_ready()
    with LBSampler(env.fleet) as sampler:
        env.patch_spec({"version": "2.0.0"})
        obj = env.wait_for(
            lambda o: (
                (o.get("status", {}).get("history") or [{}])[-1].get("result") == "RolledBack"
            ),
            timeout=120,
            what="RolledBack",
        )
    assert all_at(obj, "1.0.0")
    assert sampler.max_out() == 1
    assert env.condition("Degraded")["reason"] == "RolledBack"
    # node1 and node2 went to 2.0.0 and back; node3 never got 2.0.0.
    for n in ("node1", "node2"):
        assert installs_completed(env, n, "2.0.0") == 1
        assert installs_completed(env, n, "1.0.0") == 1
    order = [
        (e["t"], n)
        for n in ("node1", "node2", "node3")
        for e in env.fleet.node(n).events()
        if e["event"] == "install_end" and e.get("version") == "1.0.0"
    ]
    assert [n for _, n in sorted(order)] == ["node3", "node2", "node1"]


@pytest.mark.parametrize("moment", ["Draining", "Provisioning", "Soaking"])
def test_kill_nine_mid_node_then_resume(make_env, moment):
    env: Env = make_env(install_seconds=2.0)
    env.operator.start()
    update = {"minReadySeconds": 3} if moment == "Soaking" else {}
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    slow = None
    if moment == "Draining":
        # A long request on node2 keeps its drain busy long enough to kill the operator in it.
        import threading
        import urllib.request

        lb = env.fleet.lbs[0]
        for other in ("node1", "node3"):
            lb.command(f"set server PRD_wso2ei/{other} state maint")
        slow = threading.Thread(
            target=lambda: urllib.request.urlopen(lb.url("/slow?ms=15000"), timeout=60).read()
        )
        slow.start()
        time.sleep(0.3)
        for other in ("node1", "node3"):
            lb.command(f"set server PRD_wso2ei/{other} state ready")
        env.wait_ready()
    with LBSampler(env.fleet) as sampler:
        env.patch_spec({"version": "2.0.0"})
        env.wait_for(
            lambda o: env.node_phase(o, "node2") == moment, timeout=90, what=f"node2 {moment}"
        )
        if moment == "Provisioning":
            env.wait_for(
                lambda o: any(
                    e["event"] == "install_start" for e in env.fleet.node("node2").events()
                ),
                what="node2 install running",
            )
        env.operator.kill9()
        time.sleep(1)
        env.operator.start()
        obj = env.wait_ready(timeout=150)
    if slow is not None:
        slow.join(timeout=30)
    assert all_at(obj, "2.0.0")
    assert sampler.max_out() == 1
    for lb in env.fleet.lbs:
        for name, row in lb.servers().items():
            assert row["status"].startswith("UP"), (lb.name, name, row["status"])
    for n in ("node1", "node2", "node3"):
        # A provision that completed is never run again.
        assert installs_completed(env, n, "2.0.0") == 1, n
    assert_clean_return(env, sampler, "2.0.0")


def test_kill_nine_just_after_a_command_completes_runs_it_once(make_env):
    """The narrowest window: the install has exited on the node, the operator has not yet
    written that to status. Found by a chaos run (3 of 3 kills re-ran the install before the
    node-side exactly-once marker); the node's own log counts the completed installs.

    The kill waits for the install's marker, not for its install_end line: between that line
    and the exit the command still writes to the channel, and a command that the vanished
    channel interrupts there did not complete, so it rightly runs again."""
    env: Env = make_env(install_seconds=1.0)
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    node2 = env.fleet.node("node2")
    markers = Path(node2.dir) / "home/.local/state/wso2-operator/done"

    def marker_count() -> int:
        return len(list(markers.glob("*"))) if markers.is_dir() else 0

    env.patch_spec({"version": "2.0.0"})
    deadline = time.monotonic() + 90
    while not [
        e for e in node2.events() if e["event"] == "install_start" and e.get("version") == "2.0.0"
    ]:
        assert time.monotonic() < deadline, "node2 never started its install"
        time.sleep(0.002)
    before_install = marker_count()  # `wso2ctl stop` has left its marker by now
    while marker_count() == before_install:
        assert time.monotonic() < deadline, "node2 never finished its install"
        time.sleep(0.002)
    assert installs_completed(env, "node2", "2.0.0") == 1
    env.operator.kill9()
    env.operator.start()
    obj = env.wait_ready(timeout=150)
    assert all_at(obj, "2.0.0")
    starts = [e for e in node2.events() if e["event"] == "install_start"]
    assert [e.get("version") for e in starts].count("2.0.0") == 1, node2.events()
    for n in ("node1", "node2", "node3"):
        assert installs_completed(env, n, "2.0.0") == 1, n


def test_haproxy_reload_is_reasserted(make_env):
    env: Env = make_env(install_seconds=6.0)
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    env.patch_spec({"version": "2.0.0"})
    env.wait_for(lambda o: env.node_phase(o, "node1") == "Provisioning", what="node1 Provisioning")
    env.wait_for(
        lambda o: any(e["event"] == "install_start" for e in env.fleet.node("node1").events()),
        what="node1 install running",
    )
    env.fleet.reload_lb(0)
    t_reload = time.monotonic()
    # The reload put node1 back in rotation on lb1; the operator must notice and re-assert.
    deadline = t_reload + 10
    reasserted = None
    while time.monotonic() < deadline:
        if env.fleet.lbs[0].servers()["node1"]["status"].startswith("MAINT"):
            reasserted = time.monotonic() - t_reload
            break
        time.sleep(0.1)
    assert reasserted is not None, "MAINT was not re-asserted after the reload"
    assert reasserted < 3 + 1.5  # one observation period (WSO2_OBSERVE_PERIOD=3) plus slack
    reasons = {e["reason"] for e in env.events()}
    assert "StateReasserted" in reasons
    obj = env.wait_ready()
    assert all_at(obj, "2.0.0")


def test_wrong_ssh_key_touches_no_node(make_env):
    env: Env = make_env()
    env.apply_cluster("1.0.0")
    # Replace the key with a valid but unauthorised one.
    import asyncssh

    bad = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    env.kube.run(
        "patch",
        "secret",
        f"{env.name}-ssh",
        "-n",
        env.namespace,
        "--type=merge",
        "-p",
        json.dumps({"stringData": {"ssh-privatekey": bad}}),
    )
    env.patch_spec({"version": "2.0.0"})
    with LBSampler(env.fleet) as sampler:
        env.operator.start()
        env.wait_for(
            lambda o: any(
                c["type"] == "Ready" and c["reason"] == "SSHAuthFailed"
                for c in o.get("status", {}).get("conditions", [])
            ),
            what="Ready=False SSHAuthFailed",
        )
        time.sleep(2)
    assert env.condition("Degraded")["status"] == "True"
    assert sampler.max_out() == 0
    for n in ("node1", "node2", "node3"):
        assert env.fleet.node(n).installed_version() == "1.0.0"


def test_wrong_lb_socket_path_touches_no_node(make_env):
    env: Env = make_env()
    env.apply_cluster("1.0.0", lb_overrides={"lb2": {"socket": "/var/lib/haproxy/does-not-exist"}})
    env.patch_spec({"version": "2.0.0"})
    with LBSampler(env.fleet) as sampler:
        env.operator.start()
        obj = env.wait_for(
            lambda o: any(
                c["type"] == "Degraded"
                and c["status"] == "True"
                and c["reason"] == "LoadBalancerUnreachable"
                for c in o.get("status", {}).get("conditions", [])
            ),
            what="Degraded LoadBalancerUnreachable",
        )
        time.sleep(2)
    assert "lb2" in env.condition("Degraded")["message"]
    assert env.condition("Ready")["status"] == "False"
    assert sampler.max_out() == 0
    rows = obj["status"]["nodes"]
    assert all(r["loadBalancers"]["lb2"] == "Unreachable" for r in rows)


def test_missing_secret_is_a_clear_condition(make_env):
    env: Env = make_env()
    docs = __import__("wso2_sandbox.manifest", fromlist=["x"]).fleet_manifests(
        env.fleet.description, name=env.name, namespace=env.namespace
    )
    env.kube.apply(docs[1])  # the WSO2Cluster without its Secret
    env.operator.start()
    env.wait_for(
        lambda o: any(
            c["type"] == "Ready" and c["reason"] == "SecretNotFound"
            for c in o.get("status", {}).get("conditions", [])
        ),
        what="SecretNotFound",
    )
    assert "wso2ei-ssh" in env.condition("Ready")["message"]
    log = env.operator.log()
    assert "PRIVATE KEY" not in log


def test_drift_is_shown_and_corrected(make_env):
    env: Env = make_env()
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    # Someone updates node2 by hand, bypassing the LBs (the product stand-in restarts).
    node = env.fleet.node("node2")
    import subprocess

    subprocess.run(
        env.fleet.ssh_argv("node2", "TARGET_VERSION=0.9.0 wso2ctl update"), check=True, timeout=30
    )
    assert node.installed_version() == "0.9.0"
    env.wait_for(
        lambda o: any(e["reason"] == "DriftDetected" for e in env.events()),
        timeout=30,
        what="DriftDetected event",
    )
    obj = env.wait_ready()
    assert all_at(obj, "1.0.0")
    assert node.installed_version() == "1.0.0"
    drift = [e for e in env.events() if e["reason"] == "DriftDetected"]
    assert "node2 runs 0.9.0 but ran 1.0.0" in drift[0]["message"]


def test_delete_mid_rollout_touches_no_node(make_env):
    env: Env = make_env(install_seconds=4.0)
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    env.patch_spec({"version": "2.0.0"})
    env.wait_for(lambda o: env.node_phase(o, "node1") == "Provisioning", what="node1 Provisioning")
    t0 = time.monotonic()
    env.kube.run("delete", "w2c", env.name, "-n", env.namespace, "--timeout=60s")
    assert time.monotonic() - t0 < 30, "the operator releases its finalizer promptly"
    # Whatever node1 was doing stops; nothing else is touched afterwards.
    before = {n: len(env.fleet.node(n).events()) for n in ("node1", "node2", "node3")}
    lb_before = {lb.name: lb.servers()["node1"]["status"] for lb in env.fleet.lbs}
    time.sleep(4)
    after = {n: len(env.fleet.node(n).events()) for n in ("node1", "node2", "node3")}
    assert after == before
    assert {lb.name: lb.servers()["node1"]["status"] for lb in env.fleet.lbs} == lb_before
    for lb in env.fleet.lbs:
        for n in ("node2", "node3"):
            assert lb.servers()[n]["status"].startswith("UP")
    assert env.fleet.node("node2").installed_version() == "1.0.0"

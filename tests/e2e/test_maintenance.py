"""Maintenance beyond upgrades, end to end under load: a rolling restart, a config revision (and
its drift), and an OS patch that reboots every node with the operator killed while one is down.

Real apiserver, HAProxy pair, one sshd per node; a node's reboot is real in the sense that
matters (wso2_sandbox/reboot_node.py): its sshd, sessions and product go away and come back with
a new boot id. The node's own logs are the ground truth for "exactly once".
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Env, LBSampler
from wso2_sandbox.load import (
    LoadConfig,
    LoadGenerator,
    LoadThread,
    targets_from_fleet,
)

pytestmark = pytest.mark.e2e
NODES = ("node1", "node2", "node3")


def under_load(
    env: Env, act: Callable[[], object], kind: str, timeout: float = 200
) -> tuple[dict[str, Any], LBSampler]:
    """Start the load and the LB sampler, ``act``, wait until the maintenance rollout ``kind``
    succeeded; then check that no request failed and at most one node was out at any time."""
    load = LoadThread(
        LoadGenerator(
            targets_from_fleet(env.fleet.description),
            LoadConfig(rate=40, long_fraction=0.1, long_ms=(300, 1200), seed=13),
        )
    )
    try:
        with LBSampler(env.fleet) as sampler:
            load.start()
            t0 = time.monotonic()
            act()
            obj = env.wait_for(finished(kind), timeout=timeout, what=f"{kind} done")
            took = time.monotonic() - t0
            records = load.stop()
    finally:
        load.generator.stop()
    print(f"\n{kind}: 3 nodes in {took:.1f}s under load, {len(records)} requests")
    failed = [r for r in records if not r.ok]
    assert records and not failed, failed[:5]
    assert sampler.max_out() == 1
    all_up(env)
    return obj, sampler


def finished(kind: str) -> Any:
    """The newest history row is a succeeded maintenance rollout of this kind, and Ready."""

    def done(o: dict[str, Any]) -> bool:
        st = o.get("status", {})
        rows = st.get("history") or []
        ready = {c["type"]: c["status"] for c in st.get("conditions", [])}.get("Ready")
        return (
            bool(rows)
            and rows[-1].get("maintenance") == kind
            and rows[-1].get("result") == "Succeeded"
            and ready == "True"
            and st.get("observedGeneration") == o["metadata"]["generation"]
        )

    return done


def count(env: Env, node: str, event: str, since: float) -> int:
    return sum(1 for e in env.fleet.node(node).events() if e["event"] == event and e["t"] >= since)


def all_up(env: Env) -> None:
    for lb in env.fleet.lbs:
        for name, row in lb.servers().items():
            assert row["status"].startswith("UP"), (lb.name, name, row["status"])


def revision_file(env: Env, node: str, component: str) -> Path:
    home = Path(env.fleet.node(node).dir, "home")
    return home / ".local" / "state" / "wso2-operator" / "revision" / component


def rows(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in obj["status"]["nodes"]}


@pytest.mark.timeout(300)
def test_rolling_restart_under_load_restarts_each_node_once(make_env):
    env: Env = make_env()
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    t0 = time.time()
    # As a user runs it: `kubectl w2c restart NAME` is this module.
    restart = [sys.executable, "-m", "wso2_operator.cli", "restart", env.name, "-n", env.namespace]
    obj, sampler = under_load(
        env, lambda: subprocess.run(restart, check=True, env=env.kube.env, timeout=60), "Restart"
    )
    assert sampler.ever_out() == set(NODES)
    token = obj["spec"]["restartedAt"]
    for n in NODES:
        assert count(env, n, "stop", t0) == 1, n  # restarted exactly once
        assert count(env, n, "ready", t0) == 1, n
        assert count(env, n, "install_start", t0) == 0, n  # the version is not touched
        assert env.fleet.node(n).installed_version() == "1.0.0"
        assert rows(obj)[n]["version"] == "1.0.0"
        assert rows(obj)[n]["revision"] == {"restart": token}
        assert revision_file(env, n, "restart").read_text().strip() == token
    history = obj["status"]["history"][-1]
    assert (history["fromVersion"], history["toVersion"]) == ("1.0.0", "1.0.0")
    assert history["message"] == "all nodes restarted on 1.0.0"
    started = sorted(e["message"] for e in env.events() if e["reason"] == "NodeUpdateStarted")
    assert started == [f"{n}: restart on 1.0.0" for n in NODES]


@pytest.mark.timeout(300)
def test_config_revision_rolls_every_node_and_drift_is_corrected(make_env):
    env: Env = make_env()
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    t0 = time.time()
    obj, _ = under_load(env, lambda: env.patch_spec({"configRevision": "cfg-2"}), "ConfigRevision")
    for n in NODES:
        assert rows(obj)[n]["revision"] == {"config": "cfg-2"}
        assert rows(obj)[n]["phase"] == "Current"
        assert count(env, n, "install_end", t0) == 1, n  # provisioned again, once
        assert env.fleet.node(n).installed_version() == "1.0.0"
    assert (
        obj["status"]["history"][-1]["message"] == "all nodes run 1.0.0 with configRevision cfg-2"
    )

    # Someone changes node2's configuration by hand (its recorded revision changes with it).
    t1 = time.time()
    revision_file(env, "node2", "config").write_text("cfg-hand\n")
    env.wait_for(
        lambda o: any(e["reason"] == "DriftDetected" for e in env.events()),
        timeout=60,
        what="DriftDetected event",
    )
    obj = env.wait_for(
        lambda o: (
            rows(o)["node2"].get("revision") == {"config": "cfg-2"}
            and {c["type"]: c["status"] for c in o["status"]["conditions"]}["Ready"] == "True"
        ),
        timeout=120,
        what="node2 back on cfg-2",
    )
    drift = next(e for e in env.events() if e["reason"] == "DriftDetected")
    assert "node2 records config cfg-hand" in drift["message"], drift["message"]
    assert count(env, "node2", "install_end", t1) == 1
    assert count(env, "node1", "install_end", t1) == count(env, "node3", "install_end", t1) == 0
    assert revision_file(env, "node2", "config").read_text().strip() == "cfg-2"
    all_up(env)


@pytest.mark.timeout(420)
def test_os_patch_reboots_each_node_once_across_a_kill_nine_while_one_is_down(make_env):
    env: Env = make_env()
    for n in NODES:
        env.fleet.node(n).set_timing(reboot_seconds=4)
    env.operator.start()
    env.apply_cluster("1.0.0")
    patched = 'echo patched >> "$NODE_HOME/log/patches.log"'
    env.patch_spec({"maintenance": {"patchCommands": [patched]}})
    env.wait_ready()
    boots = {n: env.fleet.node(n).boot_id() for n in NODES}
    node2 = env.fleet.node("node2")

    def patch_and_kill_while_node2_is_down() -> None:
        env.patch_spec({"patchedAt": "2026-12-01T00:00:00Z"})
        deadline = time.monotonic() + 150
        while not any(e["event"] == "reboot" for e in node2.events()):
            assert time.monotonic() < deadline, "node2 never rebooted"
            time.sleep(0.05)
        assert not node2.boot_ids(), "the kill must land while node2 is down"
        env.operator.kill9()
        time.sleep(1)
        env.operator.start()

    obj, _ = under_load(env, patch_and_kill_while_node2_is_down, "OSPatch", timeout=300)
    for n in NODES:
        node = env.fleet.node(n)
        assert len(node.boot_ids()) == 1, (n, node.boot_ids())  # rebooted exactly once
        assert node.boot_id() == node.boot_ids()[0] != boots[n]
        assert Path(node.dir, "log", "patches.log").read_text().splitlines() == ["patched"], n
        assert node.installed_version() == "1.0.0"
        assert rows(obj)[n]["revision"] == {"patch": "2026-12-01T00:00:00Z"}
    assert obj["status"]["history"][-1]["message"] == "all nodes patched and rebooted, on 1.0.0"
    assert env.operator.starts == 2

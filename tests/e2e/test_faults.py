"""Faults during a rollout under load: what the operator must do when an LB goes silent.

The partition is made with SIGSTOP on every sshd process of the LB host (the listener and the
per-connection children): the operator's open SSH channel to that LB stops answering and new
connections hang in the handshake, as behind a dead network path. HAProxy itself keeps running
and keeps serving clients, as it would for clients on the other side of such a partition.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Env, LBSampler, installs_completed
from wso2_sandbox.load import LoadConfig, LoadGenerator, LoadThread, targets_from_fleet

pytestmark = pytest.mark.e2e


def sshd_tree(lb_dir: str) -> list[int]:
    """The LB host's sshd listener and all its descendants (one session process per client)."""
    root = int(Path(lb_dir, "sshd", "sshd.pid").read_text())
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(p.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(300)
def test_silent_lb_mid_rollout_holds_the_rollout_and_no_request_fails(make_env):
    env: Env = make_env(install_seconds=1.0)
    env.operator.start()
    env.apply_cluster("1.0.0")
    env.wait_ready()
    lb2 = env.fleet.lbs[1]
    load = LoadThread(
        LoadGenerator(
            targets_from_fleet(env.fleet.description),
            LoadConfig(rate=40, long_fraction=0.1, long_ms=(500, 1500), seed=7),
        )
    )
    frozen: list[int] = []
    try:
        with LBSampler(env.fleet) as sampler:
            load.start()
            env.patch_spec({"version": "2.0.0"})
            env.wait_for(
                lambda o: env.node_phase(o, "node2") == "Provisioning", what="node2 Provisioning"
            )
            frozen = sshd_tree(lb2.dir)
            signal_all(frozen, signal.SIGSTOP)

            # Held: node2 cannot be confirmed back on lb2, so it stays out, and node3, which
            # needs every LB to confirm its drain, is never touched.
            def held(o: dict) -> bool:
                conds = {c["type"]: c for c in o.get("status", {}).get("conditions", [])}
                said = " ".join(c.get("message", "") for c in conds.values())
                return conds.get("Ready", {}).get("status") == "False" and "lb2" in said

            t_frozen = time.monotonic()
            obj = env.wait_for(held, timeout=90, what="status naming the silent lb2")
            print(
                f"\nlb2 silent; after {time.monotonic() - t_frozen:.1f}s status says: "
                + "; ".join(f"{c['type']}={c['status']} {c['reason']}: {c['message']}"
                            for c in obj["status"]["conditions"])
            )  # fmt: skip
            time.sleep(5)
            assert env.node_phase(env.get(), "node3") in ("Outdated", "")
            assert installs_completed(env, "node3", "2.0.0") == 0
            assert "node3" not in sampler.ever_out()
            assert env.fleet.node("node3").installed_version() == "1.0.0"

            signal_all(frozen, signal.SIGCONT)
            frozen = []
            t_back = time.monotonic()
            obj = env.wait_ready(timeout=180)
            print(f"lb2 back; Ready at 2.0.0 {time.monotonic() - t_back:.1f}s later")
        records = load.stop()
    finally:
        signal_all(frozen, signal.SIGCONT)
        load.generator.stop()

    failed = [r for r in records if not r.ok]
    assert records and not failed, failed[:5]
    assert sampler.max_out() == 1
    rows = {r["name"]: r for r in obj["status"]["nodes"]}
    assert {n: r["version"] for n, r in rows.items()} == {f"node{i}": "2.0.0" for i in (1, 2, 3)}
    for lb in env.fleet.lbs:
        for name, row in lb.servers().items():
            assert row["status"].startswith("UP"), (lb.name, name, row["status"])
    for n in ("node1", "node2", "node3"):
        assert installs_completed(env, n, "2.0.0") == 1, n

"""`kubectl w2c get -w` during a real rollout: the operator, the fleet and load are real, and the
plugin is found by the real kubectl on PATH. One watch is piped (one line per change), one runs
in a pty (the view is redrawn); `promote` steers the canary pause.
"""

from __future__ import annotations

import os
import pty
import subprocess
import time

import pytest

from tests.conftest import KUBECTL
from tests.e2e.conftest import Env
from tests.integration.test_cli import plugin_env, read_until
from wso2_sandbox.load import LoadConfig, LoadGenerator, LoadThread, targets_from_fleet

pytestmark = pytest.mark.e2e


def drain(fd: int, seconds: float) -> str:
    """Everything readable from fd within `seconds` (an empty string when nothing came)."""
    import select

    out = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out.decode("utf-8", "replace")


@pytest.mark.timeout(300)
def test_get_watch_follows_a_real_canary_rollout_piped_and_on_a_terminal(make_env):
    env: Env = make_env()
    env.operator.start()
    update = {
        "steps": [{"nodes": 1}, {"pause": {}}],
        "analysis": {"intervalSeconds": 3, "minRequests": 10, "successWindows": 2},
    }
    env.apply_cluster("1.0.0", update=update)
    env.wait_ready()
    penv = plugin_env(env.kube, TERM="xterm")
    argv = [KUBECTL, "w2c", "get", env.name, "-n", env.namespace, "-w"]
    piped = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=penv)
    master, slave = pty.openpty()
    term = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=penv)
    os.close(slave)
    load = LoadThread(
        LoadGenerator(
            targets_from_fleet(env.fleet.description), LoadConfig(rate=30, long_fraction=0.0)
        )
    )
    load.start()
    try:
        read_until(master, r"Ctrl-C to stop")  # the first screen is up
        # And the piped watch's first line: under load it may start after node1's Draining.
        first_line = piped.stdout.readline()  # type: ignore[union-attr]
        assert first_line, piped.stderr.read()  # type: ignore[union-attr]
        env.patch_spec({"version": "2.0.0"})
        env.wait_for(
            lambda o: o.get("status", {}).get("phase") == "Paused", timeout=120, what="pause"
        )
        screen = read_until(master, r"Phase:\s+\S*Paused.*Ctrl-C to stop", timeout=30)
        assert "StepPaused" in screen
        snapshot = subprocess.run(
            [KUBECTL, "w2c", "get", env.name, "-n", env.namespace],
            capture_output=True,
            text=True,
            env={**penv, "NO_COLOR": "1"},
            timeout=60,
        )
        print("\n--- kubectl w2c get, at the canary pause ---\n" + snapshot.stdout)
        assert snapshot.returncode == 0, snapshot.stderr
        assert "Paused (StepPaused)" in snapshot.stdout
        promote = subprocess.run(
            [KUBECTL, "w2c", "promote", env.name, "-n", env.namespace],
            capture_output=True,
            text=True,
            env=penv,
            timeout=60,
        )
        assert promote.returncode == 0, promote.stderr
        env.wait_ready(timeout=120)
        screen = read_until(master, r"Phase:\s+\S*Ready.*Ctrl-C to stop", timeout=30)
        time.sleep(1)
        records = load.stop()
    finally:
        load.generator.stop()
        for p in (piped, term):
            p.terminate()
            p.wait(timeout=10)
        os.close(master)
    lines = (first_line + piped.stdout.read()).decode().splitlines()  # type: ignore[union-attr]
    print("--- kubectl w2c get -w | cat ---\n" + "\n".join(lines))
    text = "\n".join(lines)
    # One line per change, in the order the rollout went through them.
    assert len(lines) >= 5, text
    for seen in ("node1=Draining", "node1=Provisioning", "Paused StepPaused", " Ready "):
        assert seen in text, f"{seen!r} never shown:\n{text}"
    order = [text.index(s) for s in ("node1=Provisioning", "Paused StepPaused")]
    assert order == sorted(order)
    assert lines[-1].split()[2] == "Ready", lines[-1]
    assert records and not [r for r in records if not r.ok]

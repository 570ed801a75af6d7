"""The generated `wso2ctl` run by real bash on a node directory, in both fleet modes (no sshd).

`PY` is replaced by a recorder, so every Python start wso2ctl would make shows up in a file:
only the per-process stand-in (`start`) and `reboot` may start one. Hosted mode talks to a real
`wso2_sandbox.standin_host` process.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_fleet import wait_for
from wso2_sandbox.fleet_base import free_port, http_status
from wso2_sandbox.fleet_files import wso2ctl_script

pytestmark = pytest.mark.timeout(60)

EVENT_KEYS = {"t", "event", "version"}


@dataclass
class Node:
    home: Path
    py_calls: Path  # one line per (recorded) Python start

    def run(self, *args: str, target: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        if target is not None:
            env["TARGET_VERSION"] = target
        return subprocess.run(
            [str(self.home / "bin" / "wso2ctl"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def ok(self, *args: str, target: str | None = None) -> str:
        r = self.run(*args, target=target)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def python_starts(self) -> list[str]:
        return self.py_calls.read_text().splitlines() if self.py_calls.exists() else []

    def event_lines(self) -> list[str]:
        """The raw lines of events.jsonl, each checked to be one JSON event of the known shape."""
        raw = (self.home / "log" / "events.jsonl").read_bytes()
        assert raw.endswith(b"\n")
        lines = raw.decode().split("\n")[:-1]
        for line in lines:
            event = json.loads(line)
            assert set(event) == EVENT_KEYS, line
            assert isinstance(event["t"], float) and abs(event["t"] - time.time()) < 600
        return lines

    def events(self) -> list[tuple[str, str]]:
        return [(e["event"], e["version"]) for e in map(json.loads, self.event_lines())]


def make_node(tmp_path: Path, *, standin_endpoint: str | None = None, port: int = 8243) -> Node:
    home = tmp_path / "node1"
    for sub in ("bin", "etc", "opt", "run", "log"):
        (home / sub).mkdir(parents=True)
    (home / "opt" / "VERSION").write_text("1.0.0\n")
    (home / "log" / "installs.count").write_text("0\n")
    timing = {"boot_seconds": 0.2, "ready_gap_seconds": 0.1, "install_seconds": 0.0}
    (home / "etc" / "standin.json").write_text(json.dumps(timing, indent=2) + "\n")
    py_calls = tmp_path / "py-calls"
    recorder = tmp_path / "python-recorder"
    recorder.write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> {shlex.quote(str(py_calls))}\n')
    recorder.chmod(0o755)
    ctl = home / "bin" / "wso2ctl"
    ctl.write_text(
        wso2ctl_script(
            node_home=str(home),
            node_name="node1",
            node_addr="127.0.0.1",
            http_port=port,
            python=str(recorder),
            standin_endpoint=standin_endpoint,
        )
    )
    ctl.chmod(0o755)
    return Node(home, py_calls)


# ------------------------------------------------------------------ per-process mode


def test_only_the_stand_in_itself_starts_python(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    assert node.ok("stop") == "stopped"
    assert node.ok("install", target="2.0.0") == "installed 2.0.0"
    assert node.ok("version") == "2.0.0"
    assert node.ok("status") == "stopped"
    assert node.python_starts() == []
    assert node.ok("start").startswith("started (pid ")
    # The stand-in is started detached: wait for the recorder to have run.
    starts = wait_for("the stand-in's start", node.python_starts)
    assert len(starts) == 1 and f"{node.home}/opt/standin.py" in starts[0]
    t0 = float(starts[0].split("--t0 ")[1].split()[0])
    assert abs(t0 - time.time()) < 600  # unix seconds, as the stand-in expects
    assert node.events() == [
        ("stop", "1.0.0"),
        ("install_start", "2.0.0"),
        ("install_end", "2.0.0"),
        ("start", "2.0.0"),
    ]
    assert (node.home / "log" / "installs.count").read_text() == "1\n"


@pytest.mark.parametrize(
    ("version_file", "logged"),
    [
        ('1.0"q\\b\nx\x01\ty\n', '1.0"q\\bxy'),
        ('"\\"\\\\\n', '"\\"\\\\'),
        ("2.0.0-é\x7f\n", "2.0.0-"),
        ("\\" * 5000, "\\" * 2000),  # cut: the escaped line stays one write
    ],
    ids=["quotes-backslash-newline-controls", "only-quotes-and-backslashes", "non-ascii", "huge"],
)
def test_hostile_installed_version_stays_one_json_line(
    tmp_path: Path, version_file: str, logged: str
) -> None:
    node = make_node(tmp_path)
    (node.home / "opt" / "VERSION").write_text(version_file)
    assert node.ok("stop") == "stopped"
    # One element: the line was neither split by the version nor by bash's output buffer.
    assert node.events() == [("stop", logged)]


def test_invalid_target_version_is_refused_before_any_event(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    r = node.run("install", target='2.0"; rm -rf /')
    assert r.returncode == 2 and "invalid TARGET_VERSION" in r.stderr
    r = node.run("update")
    assert r.returncode == 2 and "TARGET_VERSION is not set" in r.stderr
    assert not (node.home / "log" / "events.jsonl").exists()


@pytest.mark.parametrize(
    ("standin_json", "down_seconds"),
    [
        (None, "2"),
        ("", "2"),
        ("not json at all\n", "2"),
        ('{"reboot_seconds": 7', "2"),  # truncated
        ('{"boot_seconds": 3.0}\n', "2"),  # key missing
        ('{"xreboot_seconds": 7.0}\n', "2"),
        ('{"reboot_seconds": "7"}\n', "2"),  # not a number
        ('[{"reboot_seconds": 7}]\n', "2"),  # not a flat object
        ('{"reboot_seconds": 7.5}', "7.5"),
        (json.dumps({"boot_seconds": 3.0, "reboot_seconds": 1e-05}, indent=2) + "\n", "1e-05"),
        (json.dumps({"reboot_seconds": -1.0, "install_seconds": 0}) + "\n", "-1.0"),
    ],
)
def test_conf_reads_the_fleets_json_and_falls_back_to_its_default(
    tmp_path: Path, standin_json: str | None, down_seconds: str
) -> None:
    node = make_node(tmp_path)
    path = node.home / "etc" / "standin.json"
    if standin_json is None:
        path.unlink()
    else:
        path.write_text(standin_json)
    # `reboot` hands `conf reboot_seconds 2` to reboot_node.py, which the recorder stands in for.
    assert node.ok("reboot") == "rebooting"
    call = wait_for("reboot_node.py's start", node.python_starts)[0]
    assert call.split("--down-seconds ")[1] == down_seconds


# ------------------------------------------------------------------ hosted mode


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[Node]:
    """A node whose product runs in a real stand-in host process."""
    port = free_port("127.0.0.1")
    endpoint = tmp_path / "standin1.endpoint"
    node = make_node(tmp_path, standin_endpoint=str(endpoint), port=port)
    argv = [sys.executable, "-I", "-m", "wso2_sandbox.standin_host", "--endpoint", str(endpoint)]
    argv += ["--port", str(port), "--node", f"node1=127.0.0.1={node.home}"]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("the hosted node", lambda: http_status("127.0.0.1", port, "/health") == 200)
        yield node
    finally:
        proc.kill()
        proc.wait()


def test_hosted_update_starts_no_python(hosted: Node) -> None:
    endpoint = Path(hosted.home.parent, "standin1.endpoint")
    assert oct(endpoint.stat().st_mode & 0o777) == "0o600"  # the token is the fleet's only
    assert hosted.ok("status") == "running"
    assert hosted.ok("update", target="2.0.0").splitlines() == [
        "stopped",
        "installed 2.0.0",
        "started",
    ]
    assert hosted.ok("start") == "already running"
    assert hosted.ok("version") == "2.0.0"
    wait_for("ready", lambda: ("ready", "2.0.0") in hosted.events())
    assert hosted.python_starts() == []
    assert hosted.events()[-6:] == [
        ("stop", "1.0.0"),
        ("install_start", "2.0.0"),
        ("install_end", "2.0.0"),
        ("start", "2.0.0"),
        ("port_open", "2.0.0"),
        ("ready", "2.0.0"),
    ]
    assert hosted.ok("stop") == "stopped"
    assert hosted.ok("status") == "stopped"


def test_hosted_control_refuses_a_wrong_token_and_says_when_unreachable(hosted: Node) -> None:
    endpoint = Path(hosted.home.parent, "standin1.endpoint")
    port, token = endpoint.read_text().split()
    endpoint.write_text(f"{port} {'0' * len(token)}\n")
    r = hosted.run("stop")
    assert r.returncode == 1 and "error: bad token" in r.stderr
    assert hosted.run("status").stdout.strip() == "stopped"  # unknown counts as not running
    endpoint.unlink()
    r = hosted.run("start")
    assert r.returncode == 1 and "no stand-in host endpoint" in r.stderr
    endpoint.write_text(f"{free_port('127.0.0.1')} {token}\n")
    r = hosted.run("stop")
    assert r.returncode == 1 and "cannot reach the stand-in host" in r.stderr
    endpoint.write_text(f"{port} {token}\n")
    assert hosted.ok("status") == "running"  # nothing above reached the node

"""The local fleet against real sshd, HAProxy and stand-in processes (no mocks)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from email.message import Message
from pathlib import Path

import asyncssh
import pytest

from wso2_sandbox import fleet_procs
from wso2_sandbox.fleet import Fleet
from wso2_sandbox.fleet_handles import NodeHandle, socket_command

pytestmark = pytest.mark.timeout(60)

UPDATE_EVENTS = ["stop", "install_start", "install_end", "start", "port_open", "ready"]


def ssh(fleet: Fleet, host: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command with OpenSSH's client, strict host-key checking, the fleet's key only."""
    h = next(x for x in [*fleet.nodes, *fleet.lbs] if x.name == host)
    d = fleet.description["ssh"]
    argv = [
        "ssh",
        "-F", "/dev/null",
        "-i", d["private_key_path"],
        "-o", f"UserKnownHostsFile={d['known_hosts_path']}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-p", str(h.ssh_port),
        f"{d['user']}@{h.host}",
        command,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def get(url: str, timeout: float = 5) -> tuple[int, Message, str]:
    """Status, headers (case-insensitive: HAProxy lower-cases names) and body of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def wait_for(
    what: str, cond: Callable[[], object], timeout: float = 15.0, interval: float = 0.05
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def health(node: NodeHandle) -> int | None:
    conn = http.client.HTTPConnection(node.host, node.http_port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def events_since(node: NodeHandle, t: float) -> list[dict]:
    return [e for e in node.events() if e["t"] >= t]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------


def test_starts_fast_and_describes_itself(fleet: Fleet) -> None:
    print(f"\nfleet start: {fleet.start_seconds:.2f}s")
    assert fleet.start_seconds is not None and fleet.start_seconds < 5.0
    desc = json.loads(Path(fleet.base_dir, "fleet.json").read_text())
    assert desc == json.loads(json.dumps(fleet.description))
    assert [n["name"] for n in desc["nodes"]] == ["node1", "node2", "node3"]
    assert [lb["name"] for lb in desc["lbs"]] == ["lb1", "lb2"]
    assert desc["lbs"][0]["tcp_admin"] is None
    assert desc["lbs"][1]["tcp_admin"] == f"{desc['lbs'][1]['host']}:9999"
    assert all(lb["backend"] == "PRD_wso2ei" for lb in desc["lbs"])
    hosts = [h["host"] for h in desc["nodes"] + desc["lbs"]]
    assert len(set(hosts)) == 5 and len({h.rsplit(".", 1)[0] for h in hosts}) == 1
    assert set(desc["ssh"]) >= {"user", "private_key_path", "public_key_path", "known_hosts_path"}
    known = fleet.known_hosts()
    for h in desc["nodes"] + desc["lbs"]:
        who = h["host"] if h["ssh_port"] == 22 else f"[{h['host']}]:{h['ssh_port']}"
        assert f"{who} ssh-ed25519 " in known
    assert b"OPENSSH PRIVATE KEY" in fleet.client_private_key()
    for n in fleet.nodes:
        assert n.installed_version() == "1.0.0"
        assert get(n.url("/version"))[2].strip() == "1.0.0"


def test_frontends_spread_requests_over_all_nodes(fleet: Fleet) -> None:
    for lb in fleet.lbs:
        seen: Counter[str] = Counter()
        for _ in range(12):
            status, headers, _ = get(lb.url("/"))
            assert status == 200
            assert headers["X-Version"] == "1.0.0"
            seen[headers["X-Node"]] += 1
        assert set(seen) == {"node1", "node2", "node3"}, seen


def test_ssh_client_runs_wso2ctl_on_node_path(fleet: Fleet) -> None:
    for n in fleet.nodes:
        r = ssh(fleet, n.name, "wso2ctl version && wso2ctl status && echo $NODE_HOME")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["1.0.0", "running", n.dir]


def test_admin_sockets_and_levels(fleet: Fleet) -> None:
    lb1, lb2 = fleet.lbs
    assert lb1.command("show cli level").strip() == "admin"
    assert socket_command(lb1.operator_socket, "show cli level").strip() == "operator"
    reply = socket_command(lb1.operator_socket, "set server PRD_wso2ei/node1 state drain")
    assert "Permission denied" in reply
    assert lb1.servers()["node1"]["status"] == "UP"
    with socket.create_connection(lb2.tcp_admin, timeout=5) as s:
        s.sendall(b"show cli level\n")
        assert s.makefile().read().strip() == "admin"


async def test_admin_socket_reachable_over_ssh_streamlocal(fleet: Fleet) -> None:
    # The operator's path: asyncssh to the LB host, then a direct-streamlocal channel.
    lb = fleet.lbs[0]
    d = fleet.description["ssh"]
    async with asyncssh.connect(
        lb.host,
        port=lb.ssh_port,
        username=d["user"],
        known_hosts=asyncssh.import_known_hosts(fleet.known_hosts()),
        client_keys=[asyncssh.import_private_key(fleet.client_private_key())],
        agent_path=None,
        config=None,
    ) as conn:
        reader, writer = await conn.open_unix_connection(lb.socket)
        writer.write(b"show stat PRD_wso2ei 4 -1\n")
        data = (await reader.read()).decode()
        writer.close()
    assert data.startswith("# pxname,svname,")
    assert data.count("PRD_wso2ei,node") == 3


def test_update_over_ssh_boots_with_open_port_before_ready(fleet: Fleet) -> None:
    node = fleet.node("node1")
    cfg = node.timing()
    installs = node.install_count()
    t_before = time.time()
    r = ssh(fleet, node.name, "env TARGET_VERSION=2.0.0 wso2ctl update")
    assert r.returncode == 0, r.stderr
    assert time.time() - t_before < cfg["boot_seconds"], "update must not wait for the boot"

    # Watch /health through the boot: refused, then 503 (port open, not ready), then 200.
    seen: list[tuple[float, int | None]] = []
    root_codes: list[tuple[float, int]] = []

    def ready() -> bool:
        seen.append((time.time(), code := health(node)))
        if code == 503:
            root_codes.append((time.time(), get(node.url("/"))[0]))
        return code == 200

    wait_for("node1 ready", ready, timeout=cfg["boot_seconds"] + 5, interval=0.05)
    assert get(node.url("/version"))[2].strip() == "2.0.0"
    assert get(node.url("/services/Version"))[1]["X-Version"] == "2.0.0"
    assert ssh(fleet, node.name, "wso2ctl version").stdout.strip() == "2.0.0"
    assert node.installed_version() == "2.0.0"
    assert node.install_count() == installs + 1

    ev = events_since(node, t_before)
    assert [e["event"] for e in ev] == UPDATE_EVENTS, ev
    t = {e["event"]: e["t"] for e in ev}
    assert {e["version"] for e in ev if e["event"] != "stop"} == {"2.0.0"}
    assert t["install_end"] - t["install_start"] == pytest.approx(cfg["install_seconds"], abs=0.4)
    assert t["ready"] - t["port_open"] == pytest.approx(cfg["ready_gap_seconds"], abs=0.3)
    assert t["ready"] - t["start"] == pytest.approx(cfg["boot_seconds"], abs=0.4)
    during_gap = [code for ts, code in seen if t["port_open"] + 0.1 < ts < t["ready"] - 0.1]
    assert during_gap and set(during_gap) == {503}, seen
    # Before the port opens the connection is refused; in the gap every path answers 503, as a
    # booting product would.
    assert all(code is None for ts, code in seen if ts < t["port_open"] - 0.1)
    assert {code for ts, code in root_codes if ts < t["ready"] - 0.1} == {503}


def test_stop_aborts_in_flight_request_and_start_is_idempotent(fleet: Fleet) -> None:
    node = fleet.node("node2")
    node.set_timing(boot_seconds=0.6, ready_gap_seconds=0.3)
    outcome: dict[str, object] = {}

    def slow_request() -> None:
        conn = http.client.HTTPConnection(node.host, node.http_port, timeout=10)
        t0 = time.monotonic()
        try:
            conn.request("GET", "/slow?ms=5000")
            outcome["status"] = conn.getresponse().status
        except (OSError, http.client.HTTPException) as e:
            outcome["error"] = e
        outcome["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=slow_request)
    th.start()
    time.sleep(0.3)
    r = ssh(fleet, node.name, "wso2ctl stop")
    assert r.returncode == 0, r.stderr
    th.join(10)
    assert "error" in outcome, outcome
    assert outcome["elapsed"] < 4.5
    assert health(node) is None
    assert ssh(fleet, node.name, "wso2ctl status").stdout.strip() == "stopped"
    assert ssh(fleet, node.name, "wso2ctl stop").returncode == 0  # idempotent

    t0 = time.time()
    r = ssh(fleet, node.name, "wso2ctl start")
    assert r.returncode == 0, r.stderr
    r2 = ssh(fleet, node.name, "wso2ctl start")
    assert r2.returncode == 0 and "already running" in r2.stdout
    wait_for("node2 ready", lambda: health(node) == 200, timeout=10)
    assert [e["event"] for e in events_since(node, t0)] == ["start", "port_open", "ready"]
    assert get(node.url("/version"))[2].strip() == "1.0.0"


def test_install_failure_and_missing_version(fleet: Fleet) -> None:
    node = fleet.node("node3")
    node.set_timing(install_seconds=0.1)
    node.set_fail_install(["6.6.6"])
    installs = node.install_count()
    t0 = time.time()
    r = ssh(fleet, node.name, "env TARGET_VERSION=6.6.6 wso2ctl install")
    assert r.returncode == 1
    assert "6.6.6" in r.stderr and "failed" in r.stderr
    assert node.installed_version() == "1.0.0" and node.install_count() == installs
    assert [e["event"] for e in events_since(node, t0)] == ["install_start", "install_failed"]

    r = ssh(fleet, node.name, "wso2ctl install")
    assert r.returncode == 2 and "TARGET_VERSION" in r.stderr
    r = ssh(fleet, node.name, "wso2ctl update")  # refused before anything is stopped
    assert r.returncode == 2 and health(node) == 200

    node.set_fail_install([])
    r = ssh(fleet, node.name, "env TARGET_VERSION=6.6.6 wso2ctl install")
    assert r.returncode == 0, r.stderr
    assert node.installed_version() == "6.6.6" and node.install_count() == installs + 1


def test_reload_loses_maint(fleet: Fleet) -> None:
    lb = fleet.lbs[0]
    assert lb.command("set server PRD_wso2ei/node3 state maint").strip() == ""
    assert lb.servers()["node3"]["status"] == "MAINT"
    worker = lb.worker_pid()
    fleet.reload_lb(0)
    assert lb.worker_pid() != worker
    wait_for("node3 UP after reload", lambda: lb.servers()["node3"]["status"] == "UP", 5)
    # The other LB never saw the MAINT.
    assert fleet.lbs[1].servers()["node3"]["status"] == "UP"


def test_stop_leaves_no_process(make_fleet: Callable[..., Fleet]) -> None:
    f = make_fleet(nodes=2, lbs=1, tcp_admin_lbs=(0,), boot_seconds=0.4, ready_gap_seconds=0.2)
    # A stand-in started over SSH and an SSH session still running must go as well.
    assert ssh(f, "node1", "wso2ctl stop && wso2ctl start").returncode == 0
    wait_for("node1 ready", lambda: health(f.node("node1")) == 200)
    hanging = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-i", f.description["ssh"]["private_key_path"],
         "-o", f"UserKnownHostsFile={f.description['ssh']['known_hosts_path']}",
         "-o", "BatchMode=yes", "-p", str(f.nodes[1].ssh_port),
         f"{f.description['ssh']['user']}@{f.nodes[1].host}", "sleep 60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for("remote sleep", lambda: "sleep 60" in {cmdline(p) for p in f.processes()})
        pids = f.processes()
        names = [cmdline(p) for p in pids]
        assert set(f.description["pids"].values()) <= pids
        assert {f.nodes[0].standin_pid(), f.nodes[1].standin_pid()} <= pids
        assert any(n.startswith("sshd: root@notty") for n in names), names
        assert sum(n.startswith("/usr/sbin/haproxy") for n in names) == 2, names
        base = f.base_dir
        f.stop()
        f.stop()  # idempotent
        assert not [p for p in pids if fleet_procs.is_alive(p)]
        assert not fleet_procs.fleet_processes(base, pids)
        assert not os.path.exists(base)
        assert hanging.wait(10) != 0  # its session was cut
    finally:
        hanging.kill()
        hanging.wait()


def test_cli_up_down_leaves_nothing(tmp_path: Path) -> None:
    # A long directory forces the admin sockets into a short /tmp directory.
    base = tmp_path / ("d" * 60) / "fleet"
    cli = [sys.executable, "-m", "wso2_sandbox.fleet"]
    # The initial build is a bad one: it fails every plain request, its probes still pass.
    faults = tmp_path / "faults.json"
    faults.write_text('{"1.0.0": {"errorPercent": 100, "errorStatus": 503}}')
    up = [*cli, "up", "--dir", str(base), "--nodes", "2", "--lbs", "1", "--faults", str(faults)]
    r = subprocess.run(up, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    desc = json.loads((base / "fleet.json").read_text())
    try:
        assert str(base / "fleet.json") in r.stdout
        assert desc["lbs"][0]["frontend"] in r.stdout
        assert desc["socket_dir"] and len(desc["lbs"][0]["socket"]) < 80
        host, port = desc["lbs"][0]["frontend"].rsplit(":", 1)
        status, headers, _ = get(f"http://{host}:{port}/")
        assert status == 503 and headers["X-Version"] == "1.0.0"  # answered by the stand-in
        assert get(f"http://{host}:{port}/health")[0] == 200
        assert Fleet.load(base).nodes[1].faults()["1.0.0"]["errorStatus"] == 503
        again = subprocess.run(up, capture_output=True, text=True, timeout=30)
        assert again.returncode == 0 and "already up" in again.stdout
        assert json.loads((base / "fleet.json").read_text())["pids"] == desc["pids"]
    finally:
        down = subprocess.run(
            [*cli, "down", "--dir", str(base)], capture_output=True, text=True, timeout=30
        )
    assert down.returncode == 0, down.stderr
    assert not any(fleet_procs.is_alive(p) for p in desc["pids"].values())
    assert not fleet_procs.fleet_processes(desc["base_dir"], desc["pids"].values())
    assert not (base / "fleet.json").exists()
    assert not os.path.exists(desc["socket_dir"])
    r = subprocess.run([*cli, "down", "--dir", str(base)], capture_output=True, text=True)
    assert r.returncode == 0 and "no fleet" in r.stdout


def fleet_cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wso2_sandbox.fleet", *args, "--dir", fleet.base_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fail_install_command_makes_wso2ctl_install_fail_and_clears(fleet: Fleet) -> None:
    """The README's failure walkthrough: `python -m wso2_sandbox.fleet fail-install node2 4.0.0`."""
    node = fleet.node("node2")
    node.set_timing(install_seconds=0.1)
    r = fleet_cli(fleet, "fail-install", "node2", "4.0.0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "node2: wso2ctl install now fails for 4.0.0 "
        "(undo: python -m wso2_sandbox.fleet fail-install --clear node2)"
    )
    r = fleet_cli(fleet, "fail-install", "node2", "4.0.1", "4.0.0")
    assert node.fail_install_versions() == ["4.0.0", "4.0.1"]
    assert fleet_cli(fleet, "fail-install", "node2").stdout.strip() == (
        "node2: wso2ctl install fails for 4.0.0, 4.0.1"
    )
    for v in ("4.0.0", "4.0.1"):
        r = ssh(fleet, node.name, f"env TARGET_VERSION={v} wso2ctl install")
        assert r.returncode == 1 and f"installing {v} on node2 failed" in r.stderr
    assert fleet.node("node1").fail_install_versions() == []

    r = fleet_cli(fleet, "fail-install", "--clear", "node2")
    assert r.returncode == 0 and r.stdout.strip() == (
        "node2: wso2ctl install works again for every version"
    )
    r = ssh(fleet, node.name, "env TARGET_VERSION=4.0.0 wso2ctl install")
    assert r.returncode == 0, r.stderr
    assert node.installed_version() == "4.0.0"
    ssh(fleet, node.name, "env TARGET_VERSION=1.0.0 wso2ctl install")  # as the module found it

    r = fleet_cli(fleet, "fail-install", "node9", "4.0.0")
    assert r.returncode == 1 and "no node 'node9'" in r.stderr and "node1, node2, node3" in r.stderr
    r = fleet_cli(fleet, "fail-install", "--clear", "node2", "4.0.0")
    assert r.returncode == 2 and "not both" in r.stderr

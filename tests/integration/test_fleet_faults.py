"""Bad builds in the fleet: per-version faults of the real stand-in, seen through real HAProxy."""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from wso2_sandbox.fleet import Fleet
from wso2_sandbox.fleet_handles import NodeHandle
from wso2_sandbox.load import LoadConfig, LoadGenerator, LoadThread, summarize, targets_from_fleet

pytestmark = pytest.mark.timeout(60)

BACKEND = "PRD_wso2ei"
BAD = "2.0.0"


@dataclass
class Answer:
    status: int
    node: str | None
    version: str | None
    seconds: float


def request(host: str, port: int, path: str = "/") -> Answer:
    # A fresh connection per request, like the load generator: HAProxy balances per connection.
    conn = http.client.HTTPConnection(host, port, timeout=10)
    t = time.perf_counter()
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        r.read()
        return Answer(
            r.status, r.getheader("X-Node"), r.getheader("X-Version"), time.perf_counter() - t
        )
    finally:
        conn.close()


def blast(host: str, port: int, n: int, path: str = "/", workers: int = 6) -> list[Answer]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: request(host, port, path), range(n)))


def wait_for(what: str, cond: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ensure_version(fleet: Fleet, node: NodeHandle, version: str) -> None:
    """Run `version` on `node` (update over SSH) and wait until every LB checks it UP again."""
    if node.installed_version() != version:
        node.set_timing(boot_seconds=0.4, ready_gap_seconds=0.2, install_seconds=0.1)
        argv = fleet.ssh_argv(node.name, f"env TARGET_VERSION={version} wso2ctl update")
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    wait_for(
        f"{node.name} to answer as {version}",
        lambda: _answers_as(node, version),
    )

    def seen_up() -> bool:
        for lb in fleet.lbs:
            s = lb.servers()[node.name]
            if s["status"] != "UP" or s["check_status"].lstrip("* ") != "L7OK":
                return False
        return True

    # After a restart the LB first marks it DOWN (fall 2), then UP again (rise 2).
    time.sleep(1.2)
    wait_for(f"every LB to see {node.name} UP", seen_up)


def _answers_as(node: NodeHandle, version: str) -> bool:
    try:
        a = request(node.host, node.http_port, "/version")
    except OSError:
        return False
    return a.status == 200 and a.version == version


def counters(fleet: Fleet, lb: int = 0) -> dict[str, dict[str, int]]:
    keys = ("stot", "hrsp_5xx", "hrsp_2xx", "chkfail", "eresp", "econ")
    return {
        name: {k: int(row[k] or 0) for k in keys} for name, row in fleet.lbs[lb].servers().items()
    }


def by_node(answers: list[Answer]) -> dict[str, Counter[int]]:
    out: dict[str, Counter[int]] = {}
    for a in answers:
        assert a.node, a  # every answer came from a stand-in, none from HAProxy itself
        out.setdefault(a.node, Counter())[a.status] += 1
    return out


# ------------------------------------------------------------------------------------------


def test_bad_version_fails_its_share_through_the_lb_while_health_passes(fleet: Fleet) -> None:
    # Configured per version for the whole fleet, as a bad release would be: only the node that
    # runs it misbehaves; the others (1.0.0, no entry) stay clean.
    fleet.set_faults({BAD: {"errorPercent": 10, "errorStatus": 500}})
    node1 = fleet.node("node1")
    ensure_version(fleet, node1, BAD)
    lb = fleet.lbs[0]
    before = counters(fleet)

    answers = blast(*lb.frontend, 450)

    seen = by_node(answers)
    assert set(seen) == {"node1", "node2", "node3"}, seen
    bad = seen["node1"]
    total = sum(bad.values())
    assert set(bad) == {200, 500}, bad
    assert abs(100 * bad[500] / total - 10) <= 2.5, bad
    assert all(a.version == BAD for a in answers if a.node == "node1")
    for clean in ("node2", "node3"):
        assert set(seen[clean]) == {200}, seen
        assert all(a.version == "1.0.0" for a in answers if a.node == clean)

    # HAProxy counted every one of them against the right server.
    after = counters(fleet)
    delta = {n: {k: after[n][k] - before[n][k] for k in after[n]} for n in after}
    assert delta["node1"]["hrsp_5xx"] == bad[500]
    assert delta["node1"]["stot"] == total
    for clean in ("node2", "node3"):
        assert delta[clean]["hrsp_5xx"] == 0
        assert delta[clean]["stot"] == sum(seen[clean].values())

    # The probes never fail, so the bad build stays in rotation on every LB.
    for path in ("/health", "/version", "/services/Version"):
        probes = [request(node1.host, node1.http_port, path) for _ in range(30)]
        assert {a.status for a in probes} == {200}, path
    assert request(node1.host, node1.http_port, "/version").version == BAD
    assert counters(fleet)["node1"]["chkfail"] == before["node1"]["chkfail"]
    for each in fleet.lbs:
        assert each.servers()["node1"]["status"] == "UP"

    # Direct to the node the share is exact over any run of requests, not a sample.
    direct = blast(node1.host, node1.http_port, 200)
    assert Counter(a.status for a in direct) == {200: 180, 500: 20}


def test_load_generator_reports_failures_and_nodes_per_version(fleet: Fleet) -> None:
    fleet.set_faults({BAD: {"errorPercent": 10, "errorStatus": 503}})
    ensure_version(fleet, fleet.node("node1"), BAD)
    cfg = LoadConfig(rate=150, long_fraction=0.0, max_seconds=2.0, seed=1)
    gen = LoadGenerator(targets_from_fleet(fleet.description), cfg)
    with LoadThread(gen) as load:
        time.sleep(2.5)
    records = load.records
    summary = summarize(records)
    per_version = summary["by_version"]
    assert set(per_version) == {"1.0.0", BAD}, per_version
    assert per_version["1.0.0"] == {
        "total": per_version["1.0.0"]["total"],
        "failed": 0,
        "nodes": ["node2", "node3"],
    }
    assert per_version[BAD]["nodes"] == ["node1"]
    failed_bad = per_version[BAD]["failed"]
    assert failed_bad == sum(1 for r in records if r.status == 503 and r.version == BAD)
    assert abs(100 * failed_bad / per_version[BAD]["total"] - 10) <= 3, per_version
    assert summary["failed"] == failed_bad  # nothing else failed
    assert load.counters.snapshot()["failed_by_version"] == {BAD: failed_bad}
    assert all(r.version is not None and r.duration > 0 for r in records)


def test_faults_change_on_a_running_node(fleet: Fleet) -> None:
    node = fleet.node("node3")
    assert node.installed_version() == "1.0.0"
    pid = node.standin_pid()
    before = node.faults()

    def statuses(n: int) -> Counter[int]:
        return Counter(request(node.host, node.http_port, "/").status for _ in range(n))

    try:
        assert statuses(20) == {200: 20}
        node.set_faults({"1.0.0": {"errorPercent": 100, "errorStatus": 503}})
        assert statuses(10) == {503: 10}
        assert request(node.host, node.http_port, "/health").status == 200
        # A second change within the same instant is seen too (atomic replace: new inode).
        node.set_faults({"1.0.0": {"errorPercent": 100, "errorStatus": 500}})
        assert statuses(5) == {500: 5}
        node.set_version_fault("1.0.0", error_percent=50)
        assert statuses(20) == {200: 10, 500: 10}
        # An entry for another version, or none at all, leaves this build clean.
        node.set_faults({BAD: {"errorPercent": 100}})
        assert statuses(20) == {200: 20}
        # "*" covers every version without an entry of its own.
        node.set_faults({"*": {"errorPercent": 100, "errorStatus": 503}})
        assert statuses(5) == {503: 5}

        # A bad mapping is refused and changes nothing; a broken file is ignored, not obeyed.
        with pytest.raises(ValueError, match="errorStatus"):
            node.set_faults({"1.0.0": {"errorPercent": 10, "errorStatus": 404}})
        with pytest.raises(ValueError, match="errorPercent"):
            node.set_version_fault("1.0.0", error_percent=150)
        with pytest.raises(ValueError):
            node.set_faults({"1.0.0": {"errorRate": 10}})
        assert node.faults() == {"*": {"errorPercent": 100.0, "errorStatus": 503, "latencyMs": 0.0}}
        Path(node.dir, "etc", "faults.json").write_text('{"1.0.0": {"errorPercent": 1')
        assert statuses(5) == {200: 5}
        assert "ignoring" in Path(node.dir, "log", "standin.log").read_text()

        node.clear_faults()
        assert node.faults() == {}
        assert statuses(20) == {200: 20}
        assert node.standin_pid() == pid  # all of it without a restart
    finally:
        node.set_faults(before)


def test_latency_fault_shows_in_response_times_and_haproxy_rtime(
    make_fleet: Callable[..., Fleet],
) -> None:
    # Its own fleet: rtime averages a server's recent history, which must hold only this test.
    f = make_fleet(
        nodes=2,
        lbs=1,
        boot_seconds=0.4,
        ready_gap_seconds=0.2,
        install_seconds=0.1,
        faults={"*": {"latencyMs": 20}, BAD: {"latencyMs": 60}},
    )
    node1 = f.node("node1")
    ensure_version(f, node1, BAD)
    f.lbs[0].command("clear counters all")

    answers = blast(*f.lbs[0].frontend, 160, workers=4)

    assert {a.status for a in answers} == {200}
    ms = {
        n: statistics.median(1000 * a.seconds for a in answers if a.node == n)
        for n in ("node1", "node2")
    }
    assert ms["node1"] >= 60 and 20 <= ms["node2"] < 50, ms
    rtime = {n: int(row["rtime"]) for n, row in f.lbs[0].servers().items()}
    assert rtime["node1"] >= 55 and 18 <= rtime["node2"] <= 45, rtime
    assert rtime["node1"] >= 2 * rtime["node2"], rtime
    # The health check is not slowed down: the LB has no reason to take the node out.
    health = [request(node1.host, node1.http_port, "/health").seconds for _ in range(10)]
    assert statistics.median(health) < 0.015, health
    assert f.lbs[0].servers()["node1"]["status"] == "UP"


def test_servers_have_weight_100_to_ramp_in_steps(fleet: Fleet) -> None:
    for lb in fleet.lbs:
        cfg = Path(lb.dir, "haproxy.cfg").read_text()
        assert cfg.count(" weight 100 ") == len(fleet.nodes), cfg
        assert {n: row["weight"] for n, row in lb.servers().items()} == dict.fromkeys(
            ("node1", "node2", "node3"), "100"
        )
    lb = fleet.lbs[1]
    try:
        assert lb.command(f"set weight {BACKEND}/node2 10").strip() == ""
        assert lb.servers()["node2"]["weight"] == "10"
        seen = Counter(a.node for a in blast(*lb.frontend, 210))
        # 10 of 210 by weight; a rounding of the weighted round robin at most.
        assert 5 <= seen["node2"] <= 15, seen
    finally:
        lb.command(f"set weight {BACKEND}/node2 100")
    assert lb.servers()["node2"]["weight"] == "100"


def test_cli_faults_sets_shows_and_clears(fleet: Fleet) -> None:
    cli = [sys.executable, "-m", "wso2_sandbox.fleet", "faults", "--dir", fleet.base_dir]
    before = {n.name: n.faults() for n in fleet.nodes}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=30)

    entry = {"errorPercent": 25.0, "errorStatus": 503, "latencyMs": 5.0}
    try:
        r = run("3.0.0", "--error-percent", "25", "--status", "503", "--latency-ms", "5")
        assert r.returncode == 0, r.stderr
        for n in fleet.nodes:
            assert n.faults() == {**before[n.name], "3.0.0": entry}
            assert f"{n.name}: " in r.stdout
        r = run("--clear", "3.0.0", "--node", "node2")
        assert r.returncode == 0, r.stderr
        assert "3.0.0" not in fleet.node("node2").faults()
        assert fleet.node("node1").faults()["3.0.0"] == entry
        shown = run()
        assert shown.returncode == 0
        assert json.loads(shown.stdout.splitlines()[0].split(": ", 1)[1])["3.0.0"] == entry

        for bad in (["4.0.0", "--status", "404"], ["4.0.0", "--node", "node9"]):
            r = run(*bad)
            assert r.returncode == 1 and "error:" in r.stderr, (bad, r)
        assert not any("4.0.0" in n.faults() for n in fleet.nodes)

        r = run("--clear")
        assert r.returncode == 0, r.stderr
        assert all(n.faults() == {} for n in fleet.nodes)
    finally:
        for n in fleet.nodes:
            n.set_faults(before[n.name])

"""The analysis counter sampler and the traffic ramp against a real HAProxy 2.6 (no mocks).

A private 2-node, 1-LB fleet (wso2_sandbox.fleet): HAProxy balances its frontend over two
stand-ins, node1 (the "canary") and node2 (the "baseline"), whose faults (5xx share, added
latency) the tests set. Requests go through the LB's frontend; the client records which node
answered (X-Node) with which status, and the counters read through the runtime API must match.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from wso2_operator.analysis import CounterSample, WindowVerdict, measure
from wso2_operator.counters import sample_counters
from wso2_operator.haproxy import LBClient, UnixSocketTransport
from wso2_operator.model import AnalysisPolicy
from wso2_operator.ramp import ramp_share, set_share
from wso2_sandbox.fleet import Fleet, FleetConfig

pytestmark = pytest.mark.timeout(180)

BACKEND = "PRD_wso2ei"
VERSION = "1.0.0"  # the fleet's initial version: faults are keyed by it
POLICY = AnalysisPolicy(min_requests=10)


@pytest.fixture(scope="module")
def counters_fleet() -> Iterator[Fleet]:
    cfg = FleetConfig(nodes=2, lbs=1, boot_seconds=0.5, ready_gap_seconds=0.3, install_seconds=0.1)
    with Fleet(cfg) as fleet:
        yield fleet


@pytest.fixture
async def lb(counters_fleet: Fleet) -> AsyncIterator[LBClient]:
    client = LBClient("lb1", UnixSocketTransport(counters_fleet.lbs[0].socket))
    try:
        yield client
    finally:
        await client.close()
        counters_fleet.clear_faults()


async def send(fleet: Fleet, n: int, path: str = "/", concurrency: int = 8) -> Counter:
    """n GETs through the LB's frontend; Counter of (node, status) as the client saw them."""
    url = fleet.lbs[0].url(path)
    seen: Counter = Counter()
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one() -> None:
            async with sem, session.get(url) as r:
                await r.read()
                seen[(r.headers.get("X-Node", "?"), r.status)] += 1

        await asyncio.gather(*(one() for _ in range(n)))
    return seen


def per_node(seen: Counter, node: str) -> tuple[int, int]:
    """(responses, 5xx responses) the client got from node."""
    total = sum(c for (n, _), c in seen.items() if n == node)
    errors = sum(c for (n, s), c in seen.items() if n == node and s >= 500)
    return total, errors


def delta(a: CounterSample, b: CounterSample, node: str, field: str) -> int:
    return getattr(b.servers[("lb1", node)], field) - getattr(a.servers[("lb1", node)], field)


async def test_sampled_counters_match_the_requests_sent(counters_fleet: Fleet, lb: LBClient):
    counters_fleet.set_version_fault(VERSION, error_percent=20, nodes=["node1"])
    s0 = await sample_counters([lb], BACKEND)
    seen = await send(counters_fleet, 200)
    s1 = await sample_counters([lb], BACKEND)

    assert sum(seen.values()) == 200
    assert set(seen) <= {("node1", 200), ("node1", 500), ("node2", 200)}
    pid = str(counters_fleet.lbs[0].worker_pid())
    assert s0.epochs == s1.epochs == {"lb1": pid}
    assert s1.time >= s0.time
    for node in ("node1", "node2"):
        total, errors = per_node(seen, node)
        assert total > 50  # round robin over two equal weights
        assert delta(s0, s1, node, "requests") == total
        assert delta(s0, s1, node, "responses") == total
        assert delta(s0, s1, node, "lbtot") == total
        assert delta(s0, s1, node, "errors") == errors
    total1, errors1 = per_node(seen, "node1")
    assert errors1 == total1 * 20 // 100  # the stand-in fails exactly every fifth request
    assert per_node(seen, "node2")[1] == 0

    w = measure(s0, s1, "node1", ["node2"], POLICY)
    assert (w.verdict, w.reason) == (WindowVerdict.BAD, "ErrorRate")
    assert (w.requests, w.errors) == (total1, errors1)
    assert (w.baseline_requests, w.baseline_errors) == (per_node(seen, "node2")[0], 0)
    assert w.error_percent == pytest.approx(100 * errors1 / total1)
    # The other way round the baseline (node1) is the bad one: node2 itself is within limits.
    assert measure(s0, s1, "node2", ["node1"], POLICY).verdict == WindowVerdict.GOOD


async def test_response_time_of_a_slow_canary(counters_fleet: Fleet, lb: LBClient):
    """After more than 512 requests per server (HAProxy's rtime is then its 512-sample moving
    average), a window recovers the slow node's mean from the averages before and after."""
    s = await sample_counters([lb], BACKEND)
    served = min(s.servers[("lb1", n)].lbtot for n in ("node1", "node2"))
    if served <= 600:
        await send(counters_fleet, 2 * (600 - served) + 20, concurrency=16)
    counters_fleet.set_version_fault(VERSION, latency_ms=30, nodes=["node1"])
    s0 = await sample_counters([lb], BACKEND)
    assert all(c.lbtot > 512 for c in s0.servers.values())
    seen = await send(counters_fleet, 400, concurrency=16)
    s1 = await sample_counters([lb], BACKEND)
    k = per_node(seen, "node1")[0]
    assert k > 150

    w = measure(s0, s1, "node1", ["node2"], POLICY)
    # t_data is 30 ms of sleep plus the stand-in's own time. HAProxy shows rtime truncated to
    # whole ms, which moves the recovered mean by up to 1 / (1 - (511/512)**k) < 4 ms for
    # k >= 150 responses, either way (CI once saw 28.8 ms).
    assert w.response_ms is not None and 26 <= w.response_ms <= 45, w
    assert w.baseline_response_ms is not None and w.baseline_response_ms < 8, w
    assert (w.verdict, w.reason) == (WindowVerdict.BAD, "ResponseTime")
    assert "mean response time" in w.message


async def test_response_time_right_after_counters_start(counters_fleet: Fleet, lb: LBClient):
    """Fresh counters (as after a reload): 100-odd responses of ~30 ms each. rtime shows their
    plain mean, so the window's mean must come out near 30 ms, not 30 / (1 - 1/e)."""
    counters_fleet.lbs[0].command("clear counters all")
    counters_fleet.set_version_fault(VERSION, latency_ms=30, nodes=["node1"])
    s0 = await sample_counters([lb], BACKEND)
    seen = await send(counters_fleet, 200, concurrency=16)
    s1 = await sample_counters([lb], BACKEND)
    assert per_node(seen, "node1")[0] > 50
    w = measure(s0, s1, "node1", ["node2"], POLICY)
    assert w.response_ms is not None and 29 <= w.response_ms <= 40, w


async def test_worker_changes_across_a_reload_and_the_window_is_a_reset(
    counters_fleet: Fleet, lb: LBClient
):
    s0 = await sample_counters([lb], BACKEND)
    before = lb.worker_id
    assert before.isdigit() and before == str(counters_fleet.lbs[0].worker_pid())
    await asyncio.to_thread(counters_fleet.reload_lb, 0)
    # Enough traffic that no counter went down: the new worker alone must make it a reset.
    served = max(c.requests for c in s0.servers.values())
    await send(counters_fleet, 2 * served + 40, concurrency=16)
    s1 = await sample_counters([lb], BACKEND)
    after = lb.worker_id
    assert after.isdigit() and after != before
    assert after == str(counters_fleet.lbs[0].worker_pid())
    assert s1.epochs == {"lb1": after}
    assert all(s1.servers[k].requests > s0.servers[k].requests for k in s0.servers)
    w = measure(s0, s1, "node1", ["node2"], POLICY)
    assert (w.verdict, w.reason) == (WindowVerdict.INCONCLUSIVE, "CounterReset")
    assert w.requests == 0
    # The next window, within the new worker, is judged again (200 requests: see
    # test_clear_counters for why not fewer).
    await send(counters_fleet, 200)
    s2 = await sample_counters([lb], BACKEND)
    assert measure(s1, s2, "node1", ["node2"], POLICY).verdict == WindowVerdict.GOOD


async def test_clear_counters(counters_fleet: Fleet, lb: LBClient):
    lbh = counters_fleet.lbs[0]
    await send(counters_fleet, 60)
    s0 = await sample_counters([lb], BACKEND)
    # Plain `clear counters` only clears the max values: the next window is a normal one.
    assert lbh.command("clear counters").strip() == ""
    # 200, not 40: on a loaded machine one stalled answer among ~20 made node1's mean over
    # 10 ms (twice the 5 ms floor) against node2's, a ResponseTime verdict (CI saw it).
    seen = await send(counters_fleet, 200)
    s1 = await sample_counters([lb], BACKEND)
    w = measure(s0, s1, "node1", ["node2"], POLICY)
    assert (w.verdict, w.reason) == (WindowVerdict.GOOD, "WithinLimits")
    assert w.requests == per_node(seen, "node1")[0]
    # `clear counters all` zeroes the cumulated counters on the same worker: a reset.
    assert lbh.command("clear counters all").strip() == ""
    seen = await send(counters_fleet, 40)
    s2 = await sample_counters([lb], BACKEND)
    assert s2.epochs == s1.epochs
    assert s2.servers[("lb1", "node1")].requests == per_node(seen, "node1")[0]
    w = measure(s1, s2, "node1", ["node2"], POLICY)
    assert (w.verdict, w.reason) == (WindowVerdict.INCONCLUSIVE, "CounterReset")
    assert "went down" in w.message


async def test_weights_follow_the_ramp_and_are_restored_exactly(
    counters_fleet: Fleet, lb: LBClient
):
    assert await lb.get_weight(BACKEND, "node1") == (100, 100)
    await set_share([lb], BACKEND, "node1", 0.1)
    assert await lb.get_weight(BACKEND, "node1") == (10, 100)
    assert await lb.get_weight(BACKEND, "node2") == (100, 100)  # only node1 changed
    # HAProxy balances by it: node1 gets about 10 of every 110 requests.
    seen = await send(counters_fleet, 220)
    assert 5 <= per_node(seen, "node1")[0] <= 40, seen
    await set_share([lb], BACKEND, "node1", 1.0)
    assert await lb.get_weight(BACKEND, "node1") == (100, 100)

    # The ramp's schedule over 60 s, as the reconciler applies it tick by tick.
    got = []
    for elapsed in (0, 15, 30, 60, 90):
        await set_share([lb], BACKEND, "node1", ramp_share(elapsed, 60))
        got.append(await lb.get_weight(BACKEND, "node1"))
    assert got == [(10, 100), (32, 100), (55, 100), (100, 100), (100, 100)]

    # Never 0, however small the share: 0 would stop the node's traffic.
    for share in (0.0, 0.001, 0.004, -1.0):
        await set_share([lb], BACKEND, "node1", share)
        assert await lb.get_weight(BACKEND, "node1") == (1, 100)
    await set_share([lb], BACKEND, "node1", 1.0)
    assert await lb.get_weight(BACKEND, "node1") == (100, 100)


async def test_share_is_reasserted_after_haproxy_resets_weights(
    counters_fleet: Fleet, lb: LBClient
):
    await set_share([lb], BACKEND, "node1", 0.1)
    assert await lb.get_weight(BACKEND, "node1") == (10, 100)
    await asyncio.to_thread(counters_fleet.reload_lb, 0)
    assert await lb.get_weight(BACKEND, "node1") == (100, 100)  # the reload reset it
    await set_share([lb], BACKEND, "node1", 0.1)  # the next ramp tick
    assert await lb.get_weight(BACKEND, "node1") == (10, 100)
    # A weight changed behind the ramp's back is corrected too.
    assert counters_fleet.lbs[0].command(f"set weight {BACKEND}/node1 77").strip() == ""
    await set_share([lb], BACKEND, "node1", 0.1)
    assert await lb.get_weight(BACKEND, "node1") == (10, 100)
    await set_share([lb], BACKEND, "node1", 1.0)
    assert await lb.get_weight(BACKEND, "node1") == (100, 100)


async def test_set_share_skips_an_lb_that_fails(counters_fleet: Fleet, lb: LBClient, tmp_path):
    """An LB that does not answer is left for the next tick; the others are still set."""
    ghost = LBClient("ghost", UnixSocketTransport(str(tmp_path / "nothing.sock")))
    try:
        await set_share([ghost, lb], BACKEND, "node1", 0.5)
        assert await lb.get_weight(BACKEND, "node1") == (50, 100)
        sample = await sample_counters([ghost, lb], BACKEND)
        assert set(sample.epochs) == {"lb1"}
        assert {k[0] for k in sample.servers} == {"lb1"}
    finally:
        await ghost.close()
        await set_share([lb], BACKEND, "node1", 1.0)

"""Property and example tests of the analysis verdicts (analysis.measure, judge, window_mean_ms).

HAProxy 2.6's response-time average, simulated below exactly as src/stream.c and
include/haproxy/freq_ctr.h do it (TIME_STATS_SAMPLES = 512, unsigned integer arithmetic):

* every response adds its time t (ms, an integer) to the server's sum ``d_time``:
  while the server has served at most 512 requests, ``sum += t`` (swrate_add_dynamic with
  n = 0); after that ``sum = sum - ceil(sum / 512) + t``;
* ``show stat`` shows ``rtime = ceil(sum / n)`` with n = min(512, requests served).

Tolerance of `window_mean_ms` in the steady state (n = 512, q = 1 - 1/n), derived:
with A = sum/n, one response gives A' = q*A + t/n - d/n where d = ceil(sum/n) - sum/n is in
[0, 1); after k responses of true mean m (all equal to m, the case window_mean_ms is exact
for in real numbers), A_k = q**k * A_0 + (1 - q**k) * m - D with D in [0, 1 - q**k).
The shown averages are a_i = A_i + e_i with e_i in [0, 1) (the ceiling). window_mean_ms
returns (a_k - q**k * a_0) / (1 - q**k) = m + (e_k - q**k * e_0 - D) / (1 - q**k), and the
numerator lies in (-1, 1), so |error| < 1 / (1 - q**k): 512 ms for one response (one response
barely moves a rounded average), 5.6 ms for 100, 1.6 ms for 512, under 1.02 ms from 2048.
When the k times vary, the EMA weighs the newest most: the recovered value is a weighted mean
whose distance to the plain mean is at most (max - min) / 2 * (q**-(k-1) - 1), added below.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wso2_operator.analysis import (
    EMA_SAMPLES,
    CounterSample,
    NodeAnalysis,
    ServerCounters,
    Verdict,
    Window,
    WindowVerdict,
    judge,
    measure,
    restart_count,
    window_mean_ms,
)
from wso2_operator.model import AnalysisPolicy

NODE = "node1"
BASE = ("node2", "node3")
POLICY = AnalysisPolicy()

# ------------------------------------------------------------------------------ HAProxy model


class HAProxyServer:
    """One server's counters, updated the way HAProxy 2.6 updates them (see module docstring)."""

    def __init__(self) -> None:
        self.req = 0  # p.http.cum_req (= stot = lbtot here)
        self.sum = 0  # d_time

    def respond(self, t: int) -> None:
        self.req += 1  # cum_req counts the request before its response is timed
        n = EMA_SAMPLES if self.req > EMA_SAMPLES else 0
        self.sum = self.sum - (-(-self.sum // n) if n else 0) + t

    def counters(self) -> ServerCounters:
        n = self.req if 0 < self.req < EMA_SAMPLES else EMA_SAMPLES
        rtime = -(-self.sum // n)  # swrate_avg: (sum + n - 1) / n
        return ServerCounters(
            requests=self.req, errors=0, responses=self.req, rtime_ms=float(rtime), lbtot=self.req
        )


def tolerance(k: int, n: int = EMA_SAMPLES) -> float:
    return 1.0 / (1.0 - (1.0 - 1.0 / n) ** k)


# ------------------------------------------------------------------------------ samples

COUNTS = st.integers(0, 10**6)


@st.composite
def counters(draw) -> ServerCounters:
    requests = draw(COUNTS)
    return ServerCounters(
        requests=requests,
        errors=draw(st.integers(0, requests)),
        responses=draw(st.integers(0, requests)),
        rtime_ms=float(draw(st.integers(0, 3000))),
        lbtot=draw(st.integers(0, requests)),
    )


@st.composite
def grown(draw, c: ServerCounters, max_new: int = 5000) -> ServerCounters:
    new = draw(st.integers(0, max_new))
    return ServerCounters(
        requests=c.requests + new,
        errors=c.errors + draw(st.integers(0, new)),
        responses=c.responses + draw(st.integers(0, new)),
        rtime_ms=float(draw(st.integers(0, 3000))),
        lbtot=c.lbtot + draw(st.integers(0, new)),
    )


@st.composite
def sample_pairs(draw, max_new: int = 5000) -> tuple[CounterSample, CounterSample]:
    """Two samples of the same LB workers where every counter only grew."""
    lbs = draw(
        st.lists(st.sampled_from(["lb1", "lb2", "lb3"]), min_size=1, max_size=3, unique=True)
    )
    before, after = {}, {}
    for lb in lbs:
        for server in (NODE, *BASE):
            c = draw(counters())
            before[(lb, server)] = c
            after[(lb, server)] = draw(grown(c, max_new))
    epochs = {lb: f"pid-{lb}" for lb in lbs}
    t0 = draw(st.floats(0, 1e6, allow_nan=False))
    return (
        CounterSample(time=t0, epochs=epochs, servers=before),
        CounterSample(time=t0 + 10, epochs=dict(epochs), servers=after),
    )


@st.composite
def policies(draw) -> AnalysisPolicy:
    return AnalysisPolicy(
        min_requests=draw(st.integers(1, 200)),
        failure_limit=draw(st.integers(1, 5)),
        success_windows=draw(st.integers(1, 5)),
        inconclusive_limit=draw(st.integers(1, 8)),
        max_error_percent=draw(st.floats(0, 50, allow_nan=False)),
        max_error_ratio=draw(st.floats(1, 10, allow_nan=False)),
        max_response_time_ratio=draw(st.floats(1, 5, allow_nan=False)),
    )


NODE_STATES = st.builds(
    NodeAnalysis,
    good=st.integers(0, 10),
    bad=st.integers(0, 10),
    inconclusive=st.integers(0, 10),
    verdict=st.sampled_from(list(Verdict)),
)


def window(verdict: WindowVerdict, reason: str = "") -> Window:
    return Window(node=NODE, end=0.0, seconds=10.0, verdict=verdict, reason=reason, message=reason)


GOOD, BAD, INC = WindowVerdict.GOOD, WindowVerdict.BAD, WindowVerdict.INCONCLUSIVE


def run_judge(verdicts: Iterable[WindowVerdict], policy: AnalysisPolicy) -> list[NodeAnalysis]:
    state, out = NodeAnalysis(), []
    for v in verdicts:
        state = judge(
            state, window(v, {GOOD: "WithinLimits", BAD: "ErrorRate"}.get(v, "NoData")), policy
        )
        out.append(state)
    return out


# ------------------------------------------------------------------------------ resets


@settings(max_examples=400)
@given(pair=sample_pairs(), policy=policies(), state=NODE_STATES, data=st.data())
def test_a_reset_is_never_good_nor_a_pass(pair, policy, state, data) -> None:
    before, after = pair
    lbs = sorted(before.epochs)
    lb = data.draw(st.sampled_from(lbs))
    how = data.draw(st.sampled_from(["epoch", "requests", "errors", "responses", "lbtot"]))
    if how == "epoch":
        after = CounterSample(after.time, {**after.epochs, lb: "pid-new"}, after.servers)
    else:
        server = data.draw(st.sampled_from([NODE, *BASE]))
        a = before.servers[(lb, server)]
        old = getattr(a, how)
        assume(old > 0)
        down = data.draw(st.integers(0, old - 1))
        b = after.servers[(lb, server)]
        servers = {**after.servers, (lb, server): replace(b, **{how: down})}
        after = CounterSample(after.time, after.epochs, servers)
    w = measure(before, after, NODE, BASE, policy)
    assert w.verdict == WindowVerdict.INCONCLUSIVE
    assert w.reason == "CounterReset"
    assert w.requests == 0  # never a huge or negative delta
    s = judge(state, w, policy)
    assert s.verdict != Verdict.PASSED
    if state.verdict == Verdict.FAILED:
        assert s == state


@settings(max_examples=300)
@given(pair=sample_pairs(max_new=60), policy=policies(), state=NODE_STATES)
def test_too_few_requests_is_never_good_nor_a_pass(pair, policy, state) -> None:
    before, after = pair
    new = sum(
        after.servers[k].requests - before.servers[k].requests
        for k in before.servers
        if k[1] == NODE
    )
    assume(new < policy.min_requests)
    w = measure(before, after, NODE, BASE, policy)
    assert w.verdict == WindowVerdict.INCONCLUSIVE
    assert w.reason == "TooFewRequests"
    assert w.requests == new
    assert judge(state, w, policy).verdict != Verdict.PASSED


@settings(max_examples=300)
@given(pair=sample_pairs(), policy=policies())
def test_a_clean_window_counts_exactly_the_deltas(pair, policy) -> None:
    before, after = pair

    def delta(servers, field):
        return sum(
            getattr(after.servers[k], field) - getattr(before.servers[k], field)
            for k in before.servers
            if k[1] in servers
        )

    w = measure(before, after, NODE, BASE, policy)
    assert (w.requests, w.errors) == (delta({NODE}, "requests"), delta({NODE}, "errors"))
    assert (w.baseline_requests, w.baseline_errors) == (
        delta(set(BASE), "requests"),
        delta(set(BASE), "errors"),
    )
    assert w.seconds == pytest.approx(10.0)
    if w.requests < policy.min_requests:
        assert w.verdict == WindowVerdict.INCONCLUSIVE
    else:
        assert w.verdict in (GOOD, BAD)
        if w.verdict == GOOD:
            assert w.error_percent <= policy.max_error_percent


def test_epoch_change_on_one_lb_of_two_is_a_reset_and_a_new_lb_is_ignored() -> None:
    c0 = ServerCounters(requests=100, errors=0, responses=100, rtime_ms=10, lbtot=100)
    c1 = ServerCounters(requests=200, errors=0, responses=200, rtime_ms=10, lbtot=200)
    servers0 = {(lb, s): c0 for lb in ("lb1", "lb2") for s in (NODE, "node2")}
    servers1 = {(lb, s): c1 for lb in ("lb1", "lb2") for s in (NODE, "node2")}
    before = CounterSample(0, {"lb1": "10", "lb2": "20"}, servers0)
    same = CounterSample(10, {"lb1": "10", "lb2": "20"}, servers1)
    assert measure(before, same, NODE, ["node2"], POLICY).verdict == GOOD
    assert measure(before, same, NODE, ["node2"], POLICY).requests == 200
    reloaded = CounterSample(10, {"lb1": "10", "lb2": "21"}, servers1)
    w = measure(before, reloaded, NODE, ["node2"], POLICY)
    assert (w.verdict, w.reason) == (INC, "CounterReset")
    # An LB only in the later sample (or gone from it) is left out, not a reset.
    grown_lbs = CounterSample(
        10, {"lb1": "10", "lb2": "20", "lb3": "7"}, {**servers1, ("lb3", NODE): c0}
    )
    assert measure(before, grown_lbs, NODE, ["node2"], POLICY).requests == 200
    one_left = CounterSample(
        10, {"lb1": "10"}, {k: v for k, v in servers1.items() if k[0] == "lb1"}
    )
    assert measure(before, one_left, NODE, ["node2"], POLICY).requests == 100
    nobody = CounterSample(10, {"lb9": "1"}, {})
    assert measure(before, nobody, NODE, ["node2"], POLICY).reason == "NoData"


# ------------------------------------------------------------------------------ judge


@settings(max_examples=300)
@given(state=NODE_STATES, policy=policies(), n=st.integers(1, 30))
def test_inconclusive_windows_never_pass(state, policy, n) -> None:
    for _ in range(n):
        new = judge(state, window(INC, "TooFewRequests"), policy)
        assert new.verdict != Verdict.PASSED
        state = new
    fresh = run_judge([INC] * n, policy)
    assert all(s.verdict in (Verdict.RUNNING, Verdict.INCONCLUSIVE) for s in fresh)
    assert [s.verdict == Verdict.INCONCLUSIVE for s in fresh] == [
        i + 1 >= policy.inconclusive_limit for i in range(n)
    ]


@settings(max_examples=300)
@given(
    state=NODE_STATES,
    policy=policies(),
    seq=st.lists(st.sampled_from([GOOD, BAD, INC]), max_size=20),
)
def test_failed_is_final(state, policy, seq) -> None:
    failed = NodeAnalysis(
        good=state.good, bad=state.bad, verdict=Verdict.FAILED, message="m", metric="ErrorRate"
    )
    s = failed
    for v in seq:
        s = judge(s, window(v), policy)
        assert s == failed
    assert restart_count(failed) == failed
    assert restart_count(NodeAnalysis(good=3, verdict=Verdict.PASSED)) == NodeAnalysis()


@settings(max_examples=400)
@given(policy=policies(), seq=st.lists(st.sampled_from([GOOD, BAD]), max_size=25))
def test_fail_after_exactly_failure_limit_bad_windows_in_a_row(policy, seq) -> None:
    states = run_judge(seq, policy)
    run = 0
    for v, s in zip(seq, states, strict=True):
        run = run + 1 if v == BAD else 0
        if run >= policy.failure_limit:
            assert s.verdict == Verdict.FAILED
            assert s.metric == "ErrorRate"
            break
        assert s.verdict != Verdict.FAILED
        assert s.bad == run


@settings(max_examples=400)
@given(policy=policies(), seq=st.lists(st.sampled_from([GOOD, BAD, INC]), max_size=25))
def test_pass_only_after_success_windows_good_ones(policy, seq) -> None:
    states = run_judge(seq, policy)
    goods = 0
    for v, s in zip(seq, states, strict=True):
        goods += v == GOOD
        if s.verdict == Verdict.FAILED:
            break
        if s.verdict == Verdict.PASSED:
            assert v == GOOD  # a pass is only ever earned by a good window
            assert goods >= policy.success_windows
            assert s.bad == 0 and s.inconclusive == 0
    # success_windows good windows in a row from a fresh start pass, exactly at the last one.
    only_good = run_judge([GOOD] * policy.success_windows, policy)
    assert [s.verdict for s in only_good] == [Verdict.RUNNING] * (policy.success_windows - 1) + [
        Verdict.PASSED
    ]


def test_judge_examples() -> None:
    p = AnalysisPolicy(failure_limit=2, success_windows=3, inconclusive_limit=3)
    v = [s.verdict for s in run_judge([GOOD, BAD, GOOD, BAD, BAD, GOOD], p)]
    assert v == [Verdict.RUNNING] * 4 + [Verdict.FAILED, Verdict.FAILED]
    v = [s.verdict for s in run_judge([GOOD, GOOD, INC, GOOD], p)]
    assert v == [Verdict.RUNNING, Verdict.RUNNING, Verdict.RUNNING, Verdict.PASSED]
    v = [s.verdict for s in run_judge([INC, INC, INC, GOOD], p)]
    assert v == [Verdict.RUNNING, Verdict.RUNNING, Verdict.INCONCLUSIVE, Verdict.RUNNING]


# ------------------------------------------------------------------------------ rtime recovery


def ema_window(warm: Iterable[int], new: Iterable[int]) -> tuple[ServerCounters, ServerCounters]:
    srv = HAProxyServer()
    for t in warm:
        srv.respond(t)
    before = srv.counters()
    for t in new:
        srv.respond(t)
    return before, srv.counters()


@settings(max_examples=300)
@given(
    warm_t=st.integers(0, 2000),
    warm_n=st.integers(EMA_SAMPLES + 1, 3000),
    m=st.integers(0, 2000),
    k=st.integers(1, 3000),
)
def test_window_mean_recovers_a_constant_mean_within_the_rounding_bound(warm_t, warm_n, m, k):
    """Steady state (more than 512 requests served): k responses of m ms each."""
    before, after = ema_window([warm_t] * warm_n, [m] * k)
    got = window_mean_ms(before, after)
    assert got is not None
    mean, count = got
    assert count == k
    assert abs(mean - m) < tolerance(k) + 1e-9


@settings(max_examples=200)
@given(
    seed=st.integers(0, 2**32),
    warm_n=st.integers(EMA_SAMPLES + 1, EMA_SAMPLES + 400),
    k=st.integers(64, 1500),
    lo=st.integers(0, 500),
    spread=st.integers(0, 500),
)
def test_window_mean_recovers_a_varying_mean(seed, warm_n, k, lo, spread) -> None:
    """k responses of varying times (drawn from a seeded generator: long lists drawn by
    hypothesis itself are slow)."""
    rnd = random.Random(seed)
    warm = [rnd.randint(0, 500) for _ in range(warm_n)]
    new = [rnd.randint(lo, lo + spread) for _ in range(k)]
    before, after = ema_window(warm, new)
    mean, count = window_mean_ms(before, after)
    k = len(new)
    true = sum(new) / k
    q = 1 - 1 / EMA_SAMPLES
    weighting = (max(new) - min(new)) / 2 * (q ** -(k - 1) - 1)
    assert count == k
    assert abs(mean - true) < tolerance(k) + weighting + 1e-9


@pytest.mark.parametrize("n", [513, 600, 1000, 5000])
@pytest.mark.parametrize("k", [16, 50, 100, 512, 2000])
def test_window_mean_examples_after_warm_up(n, k) -> None:
    before, after = ema_window([10] * n, [40] * k)
    mean, count = window_mean_ms(before, after)
    assert count == k
    assert abs(mean - 40) < tolerance(k)
    # A constant time stays recovered exactly, whatever the history.
    before, after = ema_window([40] * n, [40] * k)
    assert window_mean_ms(before, after) == (pytest.approx(40, abs=1), k)


def test_window_mean_without_responses_is_none() -> None:
    c = ServerCounters(requests=5, errors=0, responses=5, rtime_ms=3, lbtot=5)
    assert window_mean_ms(c, c) is None


@pytest.mark.parametrize(("served", "k"), [(0, 100), (10, 100), (100, 300)])
def test_window_mean_during_warm_up(served, k) -> None:
    """Before a server has served 512 requests (a fresh LB worker), rtime is the plain running
    mean: 100 ms for `served` requests then k at 10 ms; the window's mean is 10 ms."""
    before, after = ema_window([100] * served, [10] * k)
    mean, _ = window_mean_ms(before, after)
    # The exact mean comes back from avg1 * n1 - avg0 * n0 up to the ceilings: within 1 ms
    # times (served + k) / k; 3 ms is ample for these cases.
    assert abs(mean - 10) < 3


# ------------------------------------------------------------------------------ verdicts


def pair(
    canary: tuple[int, int, float],
    baseline: tuple[int, int, float] | None,
    policy: AnalysisPolicy = POLICY,
) -> Window:
    """A window where the canary served (requests, errors) at a steady rtime, and the baseline
    likewise (steady: the rtime before and after equal, so that window's mean is that rtime)."""

    def rows(req, err, rt, base):
        a = ServerCounters(base, 0, base, rt, base)
        b = ServerCounters(base + req, err, base + req, rt, base + req)
        return a, b

    servers0, servers1 = {}, {}
    servers0[("lb1", NODE)], servers1[("lb1", NODE)] = rows(*canary, 10_000)
    if baseline is not None:
        servers0[("lb1", "node2")], servers1[("lb1", "node2")] = rows(*baseline, 50_000)
    before = CounterSample(0, {"lb1": "1"}, servers0)
    after = CounterSample(10, {"lb1": "1"}, servers1)
    return measure(before, after, NODE, ["node2"], policy)


def test_error_rate_verdicts() -> None:
    p = AnalysisPolicy(max_error_percent=2)
    w = pair((100, 10, 20.0), (1000, 0, 20.0), p)
    assert (w.verdict, w.reason) == (BAD, "ErrorRate")
    assert w.error_percent == pytest.approx(10.0)
    assert w.message == "node1: error rate 10.0% (10/100) vs baseline 0.0%, limit 2%"
    # Exactly at the limit is within it; the absolute limit needs no baseline.
    assert pair((100, 2, 20.0), (1000, 0, 20.0), p).verdict == GOOD
    w = pair((100, 3, 20.0), None, p)
    assert (w.verdict, w.reason) == (BAD, "ErrorRate")
    assert "no baseline" in w.message


def test_error_ratio_verdicts() -> None:
    p = AnalysisPolicy(max_error_percent=10, max_error_ratio=3)
    # 4% vs a baseline at 1%: more than 3x.
    w = pair((1000, 40, 20.0), (1000, 10, 20.0), p)
    assert (w.verdict, w.reason) == (BAD, "ErrorRatio")
    # 2.5% vs 1% is not more than 3x.
    assert pair((1000, 25, 20.0), (1000, 10, 20.0), p).verdict == GOOD
    # 2 errors (2%) against an error-free baseline: fewer than 3 errors, no ratio verdict.
    assert pair((100, 2, 20.0), (1000, 0, 20.0), p).verdict == GOOD
    # 4 errors in 1000 (0.4%) against an error-free baseline: 0.4% > 3 x the 0.1% floor.
    w = pair((1000, 4, 20.0), (1000, 0, 20.0), p)
    assert (w.verdict, w.reason) == (BAD, "ErrorRatio")
    # A baseline below minRequests is no base for a ratio.
    assert pair((1000, 40, 20.0), (10, 0, 20.0), p).verdict == GOOD


def test_response_time_verdicts() -> None:
    p = AnalysisPolicy(max_response_time_ratio=2)
    w = pair((100, 0, 60.0), (1000, 0, 20.0), p)  # 3x slower than 20 ms
    assert (w.verdict, w.reason) == (BAD, "ResponseTime")
    assert (w.response_ms, w.baseline_response_ms) == (pytest.approx(60), pytest.approx(20))
    assert w.message == "node1: mean response time 60 ms vs baseline 20 ms, limit 2x"
    assert pair((100, 0, 39.0), (1000, 0, 20.0), p).verdict == GOOD  # under 2x
    # 2 ms vs 0.5 ms is 4x, but under the 5 ms floor (limit 2 x 5 ms = 10 ms).
    w = pair((100, 0, 2.0), (1000, 0, 0.5), p)
    assert (w.verdict, w.reason) == (GOOD, "WithinLimits")
    assert pair((100, 0, 10.5), (1000, 0, 0.5), p).verdict == BAD
    # No baseline: no response-time verdict.
    assert pair((100, 0, 900.0), None, p).verdict == GOOD


def test_min_requests_boundary() -> None:
    p = AnalysisPolicy(min_requests=20)
    assert pair((19, 0, 1.0), (1000, 0, 1.0), p).reason == "TooFewRequests"
    assert pair((20, 0, 1.0), (1000, 0, 1.0), p).verdict == GOOD
    assert pair((19, 19, 1.0), (1000, 0, 1.0), p).verdict == INC  # all errors, still too few


def test_rtime_floor_constant() -> None:
    # The documented floor: 2 x max(5 ms, baseline).
    p = AnalysisPolicy(max_response_time_ratio=2)
    assert pair((100, 0, 9.9), (1000, 0, 0.0), p).verdict == GOOD
    assert pair((100, 0, 10.1), (1000, 0, 0.0), p).verdict == BAD


def test_failed_lb_health_checks_are_a_bad_window_whatever_the_traffic() -> None:
    c0 = ServerCounters(requests=100, errors=0, responses=100, rtime_ms=10, lbtot=100)
    quiet = replace(c0, requests=103, responses=103, lbtot=103)  # below minRequests
    base1 = replace(c0, requests=300, responses=300, lbtot=300)
    before = CounterSample(0, {"lb1": "1"}, {("lb1", NODE): c0, ("lb1", "node2"): c0})
    clean = CounterSample(10, {"lb1": "1"}, {("lb1", NODE): quiet, ("lb1", "node2"): base1})
    w = measure(before, clean, NODE, ["node2"], POLICY)
    assert (w.verdict, w.reason) == (INC, "TooFewRequests")
    checks = replace(quiet, check_failures=2)
    failing = CounterSample(10, {"lb1": "1"}, {("lb1", NODE): checks, ("lb1", "node2"): base1})
    w = measure(before, failing, NODE, ["node2"], POLICY)
    assert (w.verdict, w.reason, w.check_failures) == (BAD, "CheckFailures", 2)
    # A chkfail counter that went down is a reset, not a good window.
    down = CounterSample(20, {"lb1": "1"}, {("lb1", NODE): quiet, ("lb1", "node2"): base1})
    assert measure(failing, down, NODE, ["node2"], POLICY).reason == "CounterReset"

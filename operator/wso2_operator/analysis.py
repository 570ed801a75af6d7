"""Analysis verdicts from HAProxy's per-server counters: pure decisions, no I/O.

Every interval the operator samples `show stat` on every LB (counters.py). Two samples make a
window; in a window each node under analysis (the canary) is compared with the nodes still on
the old version (the baseline) over the same time, on the same LBs:

* errors: 5xx answers + response errors (eresp) + connection errors (econ), per request
  (stot), against an absolute limit and a ratio to the baseline's rate;
* response time: HAProxy only shows a moving average (rtime, over the last 512 responses), so
  the window's own mean is recovered from the average before and after and the number of
  responses in between (see `window_mean_ms`);
* a window counts only with at least ``min_requests`` requests on the node; a counter that went
  down (`clear counters`) or an LB whose worker changed (a reload) makes the window
  inconclusive, never a huge delta or a pass.

A node's verdict (`judge`) fails after ``failure_limit`` bad windows in a row, passes after
``success_windows`` good ones, and is inconclusive after ``inconclusive_limit`` inconclusive
ones in a row. Invariants (tests/unit/test_analysis_properties.py): a reset or too few requests
never yields a pass; a failure is final.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from .model import AnalysisPolicy

# HAProxy's TIME_STATS_SAMPLES: rtime is a sliding average over this many responses (fewer
# while the server has served fewer, see srv_samples_window() in HAProxy 2.6).
EMA_SAMPLES = 512
# Times under this are noise (a sub-millisecond baseline would make 2 ms a "2x regression").
RT_FLOOR_MS = 5.0
# The error ratio is judged only once the node has this many errors in the window, and an
# error-free baseline counts as this rate (per request), so one stray 500 is no regression.
RATIO_MIN_ERRORS = 3
BASELINE_RATE_FLOOR = 0.001


@dataclass(frozen=True)
class ServerCounters:
    """One server on one LB at one instant (`show stat` columns)."""

    requests: int  # stot
    errors: int  # hrsp_5xx + eresp + econ
    responses: int  # hrsp_1xx..5xx + hrsp_other: the responses rtime averages over
    rtime_ms: float  # HAProxy's moving average
    lbtot: int  # times selected by the balancer (sizes rtime's window)
    check_failures: int = 0  # chkfail: failed health checks of the LB itself


@dataclass(frozen=True)
class CounterSample:
    time: float
    epochs: Mapping[str, str]  # LB -> worker identity; another value means counters restarted
    servers: Mapping[tuple[str, str], ServerCounters]  # (LB, server) -> counters


class WindowVerdict(StrEnum):
    GOOD = "Good"
    BAD = "Bad"
    INCONCLUSIVE = "Inconclusive"


class Verdict(StrEnum):
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class Window:
    node: str
    end: float
    seconds: float
    requests: int = 0
    errors: int = 0
    baseline_requests: int = 0
    baseline_errors: int = 0
    response_ms: float | None = None
    baseline_response_ms: float | None = None
    check_failures: int = 0
    verdict: WindowVerdict = WindowVerdict.INCONCLUSIVE
    reason: str = ""
    message: str = ""

    @property
    def error_percent(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0

    @property
    def baseline_error_percent(self) -> float | None:
        if not self.baseline_requests:
            return None
        return 100.0 * self.baseline_errors / self.baseline_requests


def window_mean_ms(before: ServerCounters, after: ServerCounters) -> tuple[float, int] | None:
    """The mean response time of the responses between two samples, and how many there were.

    HAProxy 2.6 keeps sum and shows rtime = sum/n with n = min(512, lbtot). Until a server has
    served 512 requests every response only adds to sum (rtime is the plain running mean);
    after that each one does sum = sum - sum/512 + t. So with j responses still in the warm-up
    and r = k - j after it, q = 1 - 1/512, and m the window's mean:
        avg1 * n1 = (avg0 * n0 + j * m) * q**r + 512 * m * (1 - q**r)
    which is solved for m. None when nothing was answered.
    """
    k = after.responses - before.responses
    if k <= 0:
        return None
    n0 = min(EMA_SAMPLES, max(0, before.lbtot))
    n1 = min(EMA_SAMPLES, max(1, after.lbtot))
    j = min(k, max(0, EMA_SAMPLES - before.lbtot))
    qr = (1.0 - 1.0 / EMA_SAMPLES) ** (k - j)
    denominator = j * qr + EMA_SAMPLES * (1.0 - qr)
    if denominator <= 0:
        return None
    mean = (after.rtime_ms * n1 - before.rtime_ms * n0 * qr) / denominator
    return max(0.0, mean), k


def _decreased(a: ServerCounters, b: ServerCounters) -> bool:
    return (
        b.requests < a.requests
        or b.errors < a.errors
        or b.responses < a.responses
        or b.lbtot < a.lbtot
        or b.check_failures < a.check_failures
    )


@dataclass
class _Totals:
    requests: int = 0
    errors: int = 0
    rt_weighted: float = 0.0
    rt_count: int = 0
    check_failures: int = 0

    def add(self, a: ServerCounters, b: ServerCounters) -> None:
        self.requests += b.requests - a.requests
        self.errors += b.errors - a.errors
        self.check_failures += b.check_failures - a.check_failures
        rt = window_mean_ms(a, b)
        if rt is not None:
            self.rt_weighted += rt[0] * rt[1]
            self.rt_count += rt[1]

    @property
    def mean_ms(self) -> float | None:
        return self.rt_weighted / self.rt_count if self.rt_count else None


def measure(
    before: CounterSample,
    after: CounterSample,
    node: str,
    baseline: Collection[str],
    policy: AnalysisPolicy,
) -> Window:
    """Judge one node over the window between two samples, against the baseline nodes."""
    seconds = max(0.0, after.time - before.time)
    base = Window(node=node, end=after.time, seconds=seconds)
    lbs = [lb for lb, e in after.epochs.items() if lb in before.epochs]
    if any(before.epochs[lb] != after.epochs[lb] for lb in lbs):
        return replace(base, reason="CounterReset", message="an LB restarted or reloaded")
    canary, old = _Totals(), _Totals()
    seen = False
    for lb in lbs:
        for server, totals in ((node, canary), *((b, old) for b in baseline)):
            a, b = before.servers.get((lb, server)), after.servers.get((lb, server))
            if a is None or b is None:
                continue
            if _decreased(a, b):
                return replace(
                    base, reason="CounterReset", message=f"counters of {server} on {lb} went down"
                )
            totals.add(a, b)
            seen = seen or server == node
    w = replace(
        base,
        requests=canary.requests,
        errors=canary.errors,
        baseline_requests=old.requests,
        baseline_errors=old.errors,
        response_ms=canary.mean_ms,
        baseline_response_ms=old.mean_ms,
        check_failures=canary.check_failures,
    )
    if not seen:
        return replace(w, reason="NoData", message=f"no LB reported {node} in both samples")
    if w.check_failures:
        # The LB's own health check failing is bad whatever the traffic (it is not a pass).
        return replace(
            w,
            verdict=WindowVerdict.BAD,
            reason="CheckFailures",
            message=f"{node}: {w.check_failures} failed LB health checks in {seconds:.0f}s",
        )
    if w.requests < policy.min_requests:
        return replace(
            w,
            reason="TooFewRequests",
            message=f"{node} served {w.requests} requests (< minRequests {policy.min_requests})",
        )
    return _judge_window(w, policy)


def _judge_window(w: Window, policy: AnalysisPolicy) -> Window:
    rate = w.errors / w.requests
    base_pct = w.baseline_error_percent
    shown_base = f"{base_pct:.1f}%" if base_pct is not None else "no baseline"
    if w.error_percent > policy.max_error_percent:
        return replace(
            w,
            verdict=WindowVerdict.BAD,
            reason="ErrorRate",
            message=(
                f"{w.node}: error rate {w.error_percent:.1f}% ({w.errors}/{w.requests}) vs "
                f"baseline {shown_base}, limit {policy.max_error_percent:g}%"
            ),
        )
    if base_pct is not None and w.baseline_requests >= policy.min_requests:
        base_rate = max(BASELINE_RATE_FLOOR, base_pct / 100)
        if w.errors >= RATIO_MIN_ERRORS and rate > policy.max_error_ratio * base_rate:
            return replace(
                w,
                verdict=WindowVerdict.BAD,
                reason="ErrorRatio",
                message=(
                    f"{w.node}: error rate {w.error_percent:.2f}% is more than "
                    f"{policy.max_error_ratio:g}x the baseline's {base_pct:.2f}%"
                ),
            )
    if w.response_ms is not None and w.baseline_response_ms is not None:
        limit = policy.max_response_time_ratio * max(RT_FLOOR_MS, w.baseline_response_ms)
        if w.response_ms > limit:
            return replace(
                w,
                verdict=WindowVerdict.BAD,
                reason="ResponseTime",
                message=(
                    f"{w.node}: mean response time {w.response_ms:.0f} ms vs baseline "
                    f"{w.baseline_response_ms:.0f} ms, limit {policy.max_response_time_ratio:g}x"
                ),
            )
    return replace(
        w,
        verdict=WindowVerdict.GOOD,
        reason="WithinLimits",
        message=(
            f"{w.node}: {w.error_percent:.1f}% errors ({w.errors}/{w.requests}) vs baseline "
            f"{shown_base}"
        ),
    )


@dataclass(frozen=True)
class NodeAnalysis:
    """One node's windows so far; kept in status.analysis.nodes."""

    good: int = 0  # good windows since its soak or the current pause began
    bad: int = 0  # bad windows in a row
    inconclusive: int = 0  # inconclusive windows in a row
    verdict: Verdict = Verdict.RUNNING
    message: str = ""
    metric: str = ""


def judge(state: NodeAnalysis, w: Window, policy: AnalysisPolicy) -> NodeAnalysis:
    """The node's state after one more window. A failure is final."""
    if state.verdict == Verdict.FAILED:
        return state
    if w.verdict == WindowVerdict.GOOD:
        s = replace(state, good=state.good + 1, bad=0, inconclusive=0)
    elif w.verdict == WindowVerdict.BAD:
        s = replace(state, bad=state.bad + 1, inconclusive=0, message=w.message, metric=w.reason)
        if s.bad >= policy.failure_limit:
            return replace(s, verdict=Verdict.FAILED)
    else:
        s = replace(state, inconclusive=state.inconclusive + 1)
        if s.inconclusive >= policy.inconclusive_limit:
            return replace(
                s,
                verdict=Verdict.INCONCLUSIVE,
                message=f"{w.node}: {s.inconclusive} inconclusive windows in a row: {w.message}",
                metric=w.reason,
            )
    if s.good >= policy.success_windows and s.inconclusive == 0 and s.bad == 0:
        return replace(s, verdict=Verdict.PASSED)
    return replace(s, verdict=Verdict.RUNNING)


def restart_count(state: NodeAnalysis) -> NodeAnalysis:
    """A new pause (or soak) needs its own good windows; a failure stays a failure."""
    if state.verdict == Verdict.FAILED:
        return state
    return NodeAnalysis()


def baseline_nodes(
    versions: Mapping[str, str | None], serving: Collection[str], target: str
) -> tuple[str, ...]:
    """The nodes a canary is compared with: serving, on a known version other than the target."""
    return tuple(n for n, v in versions.items() if n in serving and v is not None and v != target)

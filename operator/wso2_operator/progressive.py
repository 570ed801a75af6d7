"""Progressive delivery for one cluster: canary steps, promote/abort tokens and the analysis
state, between the pure decisions (canary.py, analysis.py) and the reconciler.

What lives here is what status keeps (status.rollout's cursor and tokens, status.analysis) and
the bookkeeping around it; the reconciler calls it at fixed points of its pass. LB counters are
always re-read (counters.py); after a restart the first sample only starts a new window.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .analysis import (
    CounterSample,
    NodeAnalysis,
    Verdict,
    Window,
    judge,
    measure,
    restart_count,
)
from .canary import CanaryCursor, CanaryGate, advance
from .counters import sample_counters
from .model import IN_FLIGHT, ClusterSpec, NodeProgress, Phase, RolloutState
from .observation import NodeObservation
from .revision import kind_for
from .status import MAX_NODES, _clamped_int, _list, _mapping, iso, parse_iso, stored_token
from .textcap import MESSAGE_LIMIT, NAME_LIMIT, cap, cap_token

log = logging.getLogger(__name__)

PROMOTE_ANNOTATION = "vmops.dev/promote"
PROMOTE_FULL_ANNOTATION = "vmops.dev/promote-full"
ABORT_ANNOTATION = "vmops.dev/abort"
WINDOWS_LIMIT = 20  # CRD: status.analysis.windows maxItems
MAX_WINDOW_COUNT = 1_000_000


@dataclass(frozen=True)
class Requests:
    """Annotations with a value not acted on yet."""

    promote: bool = False
    promote_full: bool = False
    abort: bool = False


def new_requests(annotations: Mapping[str, Any], r: RolloutState) -> tuple[Requests, RolloutState]:
    """Which steering annotations are new, and the rollout cursor that records them as seen."""
    promote = stored_token(annotations.get(PROMOTE_ANNOTATION))
    full = stored_token(annotations.get(PROMOTE_FULL_ANNOTATION))
    abort = stored_token(annotations.get(ABORT_ANNOTATION))
    req = Requests(
        promote=bool(promote) and promote != r.promote_token,
        promote_full=bool(full) and full != r.promote_full_token,
        abort=bool(abort) and abort != r.abort_token,
    )
    return req, replace(r, promote_token=promote, promote_full_token=full, abort_token=abort)


def seen_tokens(annotations: Mapping[str, Any], r: RolloutState) -> RolloutState:
    """For an object without a record of what was acted on: what is there now is old."""
    return new_requests(annotations, r)[1]


@dataclass
class AnalysisState:
    """status.analysis, plus the last counter sample (memory only: re-read after a restart)."""

    nodes: dict[str, NodeAnalysis] = field(default_factory=dict)
    windows: list[dict[str, Any]] = field(default_factory=list)
    phase: str = ""
    message: str = ""
    metric: str = ""
    last: CounterSample | None = None

    def reset(self) -> None:
        self.nodes.clear()
        self.windows.clear()
        self.phase = self.message = self.metric = ""
        self.last = None

    def verdict(self, node: str) -> NodeAnalysis:
        return self.nodes.get(node, NodeAnalysis())

    def restart(self, nodes: Collection[str]) -> None:
        """A new soak or pause: good windows are counted again from zero."""
        for n in nodes:
            self.nodes[n] = restart_count(self.verdict(n))
        if self.phase != "Failed":
            self.phase = "Running"

    def accept(self, nodes: Collection[str]) -> None:
        """A promotion: a human accepts what the analysis could not decide."""
        for n in nodes:
            if self.verdict(n).verdict == Verdict.INCONCLUSIVE:
                self.nodes[n] = replace(self.verdict(n), verdict=Verdict.PASSED, inconclusive=0)

    def record(self, w: Window, state: NodeAnalysis) -> None:
        self.nodes[w.node] = state
        self.windows = [*self.windows, window_row(w)][-WINDOWS_LIMIT:]
        if state.verdict == Verdict.FAILED:
            self.phase, self.message, self.metric = "Failed", state.message, state.metric
        elif self.phase != "Failed":
            verdicts = {s.verdict for s in self.nodes.values()}
            if Verdict.INCONCLUSIVE in verdicts:
                self.phase = "Inconclusive"
                self.message = next(
                    s.message for s in self.nodes.values() if s.verdict == Verdict.INCONCLUSIVE
                )
            else:
                self.phase = "Passed" if verdicts == {Verdict.PASSED} else "Running"
                self.message = w.message
            self.metric = w.reason if w.reason not in ("WithinLimits",) else ""

    def to_status(self) -> dict[str, Any]:
        return {
            "phase": self.phase or "Running",
            "message": cap(self.message, MESSAGE_LIMIT),
            "metric": cap_token(self.metric, NAME_LIMIT),
            "nodes": [
                {
                    "name": n,
                    "verdict": str(s.verdict),
                    "good": s.good,
                    "bad": s.bad,
                    "inconclusive": s.inconclusive,
                }
                for n, s in list(self.nodes.items())[:MAX_NODES]
            ],
            "windows": list(self.windows),
        }


def window_row(w: Window) -> dict[str, Any]:
    row: dict[str, Any] = {
        "time": iso(w.end),
        "node": cap_token(w.node, NAME_LIMIT),
        "seconds": round(w.seconds, 1),
        "requests": w.requests,
        "errors": w.errors,
        "errorPercent": round(w.error_percent, 2),
        "baselineRequests": w.baseline_requests,
        "checkFailures": w.check_failures,
        "verdict": str(w.verdict),
        "reason": cap_token(w.reason, NAME_LIMIT),
    }
    if w.baseline_error_percent is not None:
        row["baselineErrorPercent"] = round(w.baseline_error_percent, 2)
    if w.response_ms is not None:
        row["responseMs"] = round(w.response_ms, 1)
    if w.baseline_response_ms is not None:
        row["baselineResponseMs"] = round(w.baseline_response_ms, 1)
    return row


_VERDICTS = {v.value: v for v in Verdict}
_WINDOW_INTS = ("requests", "errors", "baselineRequests", "checkFailures")
_WINDOW_FLOATS = ("seconds", "errorPercent", "baselineErrorPercent", "responseMs")


def analysis_from_status(status: object, now: float | None = None) -> AnalysisState:
    """status.analysis, sanitised. Never raises; anything not understood is dropped."""
    a = _mapping(_mapping(status).get("analysis"))
    state = AnalysisState()
    for row in _list(a.get("nodes"))[:MAX_NODES]:
        row = _mapping(row)
        name = row.get("name")
        verdict = _VERDICTS.get(row.get("verdict"))  # type: ignore[arg-type]
        if not isinstance(name, str) or verdict is None:
            continue
        state.nodes[cap_token(name, NAME_LIMIT)] = NodeAnalysis(
            good=_clamped_int(row.get("good"), MAX_WINDOW_COUNT),
            bad=_clamped_int(row.get("bad"), MAX_WINDOW_COUNT),
            inconclusive=_clamped_int(row.get("inconclusive"), MAX_WINDOW_COUNT),
            verdict=verdict,
        )
    for row in _list(a.get("windows"))[-WINDOWS_LIMIT:]:
        row = _mapping(row)
        kept: dict[str, Any] = {}
        ts = iso(parse_iso(row.get("time"), now))
        if ts:
            kept["time"] = ts
        for k in ("node", "verdict", "reason"):
            if isinstance(row.get(k), str):
                kept[k] = cap_token(row[k], NAME_LIMIT)
        for k in _WINDOW_INTS:
            kept[k] = _clamped_int(row.get(k), 2**62)
        for k in _WINDOW_FLOATS:
            v = row.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e12:
                kept[k] = float(v)
        state.windows.append(kept)
    for k in ("phase", "message", "metric"):
        v = a.get(k)
        if isinstance(v, str):
            setattr(state, k, cap(v, MESSAGE_LIMIT) if k == "message" else cap_token(v, NAME_LIMIT))
    return state


def at_target(
    spec: ClusterSpec,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    target: str,
) -> tuple[int, int]:
    """(nodes at or moving to the target, those of them done and serving)."""
    moving = settled = 0
    for n in spec.node_names:
        p, o = progress.get(n, NodeProgress()), observed.get(n, NodeObservation())
        if p.phase in IN_FLIGHT and p.target == target:
            moving += 1
        elif p.phase != Phase.FAILED and on_target(spec, o, target):
            moving += 1
            settled += o.available
    return moving, settled


def subjects(
    spec: ClusterSpec,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    target: str,
    holding: bool,
) -> tuple[str, ...]:
    """The nodes under analysis: soaking toward the target, and, while a canary step holds,
    the nodes that run it and serve."""
    out = []
    for n in spec.node_names:
        p, o = progress.get(n, NodeProgress()), observed.get(n, NodeObservation())
        if p.phase == Phase.SOAKING and p.target == target:
            out.append(n)
        elif holding and p.phase not in IN_FLIGHT and p.phase != Phase.FAILED:
            if on_target(spec, o, target) and o.in_rotation:
                out.append(n)
    return tuple(out)


def baseline(
    spec: ClusterSpec,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    target: str,
) -> tuple[str, ...]:
    """Serving nodes on a known version other than the target, not being touched."""
    out = []
    for n in spec.node_names:
        p, o = progress.get(n, NodeProgress()), observed.get(n, NodeObservation())
        if p.phase in IN_FLIGHT or p.phase == Phase.FAILED:
            continue
        if o.version is not None and not on_target(spec, o, target) and o.in_rotation:
            out.append(n)
    return tuple(out)


def on_target(spec: ClusterSpec, o: NodeObservation, target: str) -> bool:
    """The node runs the target version and every maintenance token the spec asks for: so
    canary steps and analysis apply to a restart, config change or patch as to an upgrade."""
    return o.version == target and kind_for(target, spec.revision, o.version, o.revision) is None


def gate(
    spec: ClusterSpec,
    rollout: RolloutState,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    state: AnalysisState,
    target: str,
    now: float,
    promote: bool,
) -> CanaryGate:
    """Where the canary steps stand, from the cursor in ``rollout``."""
    moving, settled = at_target(spec, observed, progress, target)
    ready = True
    if spec.analysis is not None:
        held = subjects(spec, observed, progress, target, holding=True)
        ready = bool(held) and all(state.verdict(n).verdict == Verdict.PASSED for n in held)
    cursor = CanaryCursor(rollout.step_index, rollout.pause_start, rollout.promoted_full)
    return advance(
        spec.canary_steps,
        cursor,
        total=len(spec.node_names),
        at_target=moving,
        settled=settled,
        now=now,
        promote=promote,
        analysis_ready=ready,
    )


async def sample_and_judge(
    spec: ClusterSpec,
    clients: list[Any],
    state: AnalysisState,
    nodes: Collection[str],
    old: Collection[str],
) -> list[str]:
    """Take one counter sample; judge each node over the window since the previous one.
    Returns the nodes whose verdict changed."""
    assert spec.analysis is not None
    sample = await sample_counters(clients, spec.backend)
    before, state.last = state.last, sample
    if before is None or not sample.epochs:
        return []
    changed = []
    for n in nodes:
        w = measure(before, sample, n, old, spec.analysis)
        prev = state.verdict(n)
        new = judge(prev, w, spec.analysis)
        state.record(w, new)
        if new.verdict != prev.verdict:
            changed.append(n)
    return changed

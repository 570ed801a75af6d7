"""The reconciler's side of progressive delivery: steering annotations, the canary gate, the
analysis task, and what a failed analysis or an abort does to nodes.

A mixin of `ClusterReconciler` (it uses its spec, observations, progress, rollout cursor,
persist and _fail); the decisions themselves are pure (canary.py, analysis.py) and the status
shapes live in progressive.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import metrics
from .adapters import Adapters
from .analysis import NodeAnalysis, Verdict
from .errors import WSO2OperatorError
from .kube import event
from .model import IN_FLIGHT, ClusterSpec, NodeProgress, Phase
from .planner import effective_target
from .progressive import (
    baseline,
    gate,
    new_requests,
    sample_and_judge,
    subjects,
)
from .ramp import set_share
from .status import iso
from .status_writer import StoodDown
from .steps import VerdictOf, evict
from .textcap import cap

if TYPE_CHECKING:
    from .reconciler import ClusterReconciler

log = logging.getLogger(__name__)


class CanaryDriving:
    """Mixin: see the module docstring."""

    async def _steer(self: ClusterReconciler, spec: ClusterSpec, adapters: Adapters) -> bool:
        """Act on new promote/promote-full/abort annotations and on nodes whose analysis failed
        while serving. Returns whether a promotion is pending for the canary gate."""
        annotations = self.body.get("metadata", {}).get("annotations") or {}
        req, self.rollout = new_requests(annotations, self.rollout)
        active = not self.rollout.finished and self.rollout.to_version == spec.version
        if req.promote_full:
            if active and spec.canary_steps:
                self.rollout = replace(self.rollout, promoted_full=True)
                event(self.body, "PromotedFull", "vmops.dev/promote-full: skipping every pause")
            else:
                event(self.body, "NothingToPromote", "vmops.dev/promote-full: no rollout holds")
        if req.promote:
            target, _, _ = effective_target(spec, self.rollout)
            held = subjects(spec, self.observed, self.progress, target, holding=True)
            self.analysis.accept(held)
        if req.abort:
            await self._abort(spec, adapters)
        await self._fail_analysed(spec, adapters)
        return req.promote

    def _canary_room(
        self: ClusterReconciler, spec: ClusterSpec, now: float, promote: bool
    ) -> int | None:
        """How many more nodes the canary steps let begin (None: no limit), and the gate."""
        target, rolling_back, held = effective_target(spec, self.rollout)
        r = self.rollout
        # A rollout with nothing to change (a new object for nodes already at the version)
        # has no canary to hold; a maintenance rollout keeps the version and has one.
        no_change = r.from_version == r.to_version and r.maintenance is None
        if not spec.canary_steps or rolling_back or held or r.finished or no_change:
            self.gate = None
            if promote:
                event(self.body, "NothingToPromote", "vmops.dev/promote: no canary step holds")
            return None
        g = gate(
            spec, self.rollout, self.observed, self.progress, self.analysis, target, now, promote
        )
        if promote:
            if g.promote_used:
                event(self.body, "Promoted", f"vmops.dev/promote: {g.message or 'promoted'}")
            else:
                event(self.body, "NothingToPromote", "vmops.dev/promote: no canary step holds")
        steps = len(spec.canary_steps) + 1
        for i in g.passed:
            event(self.body, "CanaryStepDone", f"step {i + 1}/{steps} done")
        if g.pause_started:
            held_nodes = subjects(spec, self.observed, self.progress, target, holding=True)
            self.analysis.restart(held_nodes)
            event(self.body, "CanaryPaused", g.message)
        self.rollout = replace(
            self.rollout, step_index=g.cursor.index, pause_start=g.cursor.pause_start
        )
        self.gate = g
        return g.room

    def _hold(self: ClusterReconciler) -> tuple[str, str] | None:
        """The reason and message of a hold that waits for time or a human, if any."""
        if self.analysis.phase == "Inconclusive":
            return (
                "AnalysisInconclusive",
                f"{self.analysis.message}; promote (vmops.dev/promote) to accept, or abort "
                "(vmops.dev/abort)",
            )
        if self.gate is not None and self.gate.holding:
            return ("StepPaused", self.gate.message)
        return None

    def _canary_status(self: ClusterReconciler, spec: ClusterSpec, status: dict[str, Any]) -> None:
        """status.analysis and the canary fields of status.rollout."""
        ro = status["rollout"]
        if spec.canary_steps:
            ro["stepCount"] = len(spec.canary_steps) + 1
            # Without the "step i/n: " label: stepIndex and stepCount say which step it is.
            message = self.gate.message if self.gate else ""
            ro["stepMessage"] = cap(message.partition(": ")[2] or message, 512)
            ro["pauseEndTime"] = iso(self.gate.pause_end) if self.gate else None
        # The analysis of the last rollout stays readable until the next one starts.
        status["analysis"] = (
            self.analysis.to_status() if (spec.analysis or self.analysis.nodes) else None
        )

    def _verdict(self: ClusterReconciler, spec: ClusterSpec) -> VerdictOf | None:
        """The analysis a soak waits for; a rollback is not analysed (it returns to the
        version that was serving)."""
        _, rolling_back, _ = effective_target(spec, self.rollout)
        if spec.analysis is None or rolling_back:
            return None
        return self.analysis.verdict

    # ------------------------------------------------------------------ analysis task
    def _ensure_analysis(self: ClusterReconciler, spec: ClusterSpec) -> None:
        if spec.analysis is None or self.adapters is None:
            return
        if self._analysis_task is not None and not self._analysis_task.done():
            return
        target, rolling_back, _ = effective_target(spec, self.rollout)
        holding = self.gate is not None and self.gate.holding
        if not rolling_back and subjects(spec, self.observed, self.progress, target, holding):
            self._analysis_task = asyncio.create_task(self._analyse(), name="analysis")

    async def _stop_analysis(self: ClusterReconciler) -> None:
        task, self._analysis_task = self._analysis_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _analyse(self: ClusterReconciler) -> None:
        """Sample the LB counters every intervalSeconds while there is something to judge."""
        try:
            while True:
                spec = self.spec()
                target, rolling_back, _ = effective_target(spec, self.rollout)
                holding = self.gate is not None and self.gate.holding
                nodes = subjects(spec, self.observed, self.progress, target, holding)
                if spec.analysis is None or rolling_back or not nodes or self.adapters is None:
                    self.analysis.last = None  # a later analysis starts with a fresh sample
                    return
                old = baseline(spec, self.observed, self.progress, target)
                try:
                    changed = await sample_and_judge(
                        spec, self.adapters.pool.clients, self.analysis, nodes, old
                    )
                except WSO2OperatorError as e:
                    log.warning("analysis sample failed: %s", cap(e))
                    changed = []
                for n in changed:
                    self._report_verdict(n, self.analysis.verdict(n))
                if changed:
                    self.wake.set()
                await self.persist(spec)
                await asyncio.sleep(spec.analysis.interval)
        except StoodDown:
            return

    def _report_verdict(self: ClusterReconciler, node: str, v: NodeAnalysis) -> None:
        metrics.analysis_verdict(self.namespace, self.name, str(v.verdict), v.metric)
        if v.verdict == Verdict.FAILED:
            event(self.body, "AnalysisFailed", v.message, warning=True)
        elif v.verdict == Verdict.INCONCLUSIVE:
            event(self.body, "AnalysisInconclusive", v.message, warning=True)
        elif v.verdict == Verdict.PASSED:
            event(self.body, "AnalysisPassed", f"{node}: passed {v.good} windows")

    async def _restore_ramped_weights(self: ClusterReconciler) -> None:
        """On a stop (deletion, shutdown): a node mid-ramp gets its configured weight back, so
        no weight is left lowered when nobody will finish the ramp. A restarted operator
        resumes the ramp from status (kill -9 leaves it lowered until then)."""
        try:
            spec = self.spec()
        except (KeyError, TypeError, ValueError):
            return
        if spec.ramp_seconds <= 0 or self.adapters is None:
            return
        soaking = [n for n, p in self.progress.items() if p.phase == Phase.SOAKING]
        for n in soaking:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    set_share(self.adapters.pool.clients, spec.backend, n, 1.0), 3.0
                )

    # ------------------------------------------------------------------ acting on verdicts
    async def _fail_analysed(
        self: ClusterReconciler, spec: ClusterSpec, adapters: Adapters
    ) -> None:
        """A node that failed its analysis while not in flight (held at a canary pause): take
        it out of rotation if maxUnavailable allows, and fail it (failurePolicy applies).

        Only while the version it was judged on is still the one rolled out: the verdict stays
        in status after a rollback, and the node then runs the old version again."""
        target, rolling_back, held = effective_target(spec, self.rollout)
        if rolling_back or held:
            return
        for n in spec.node_names:
            p = self.progress.get(n, NodeProgress())
            v = self.analysis.verdict(n)
            if v.verdict != Verdict.FAILED or p.phase in IN_FLIGHT or p.phase == Phase.FAILED:
                continue
            o = self.observed.get(n)
            if n in self.tasks or o is None or o.version != target:
                continue
            out = {m for m in spec.node_names if m != n and not self._available(m)}
            serving = o is not None and o.in_rotation
            if serving and len(out) + 1 <= spec.max_unavailable:
                await evict(adapters, spec, n)
                self.custody.owned.add(n)
                where = "taken out of rotation"
            elif serving:
                where = "left in rotation: taking it out would exceed maxUnavailable"
            else:
                where = "already out of rotation"
            self.progress[n] = p
            await self._fail(spec, n, "AnalysisFailed", f"AnalysisFailed: {v.message}; {where}")

    def _available(self: ClusterReconciler, n: str) -> bool:
        p = self.progress.get(n, NodeProgress())
        o = self.observed.get(n)
        return (
            p.phase not in IN_FLIGHT and p.phase != Phase.FAILED and o is not None and o.available
        )

    async def _abort(self: ClusterReconciler, spec: ClusterSpec, adapters: Adapters) -> None:
        """vmops.dev/abort: fail the rollout now. Nodes in flight stop (a serving one is taken
        out of rotation at once) and fail; then failurePolicy applies."""
        r = self.rollout
        if r.finished or r.to_version != spec.version or r.failed_version == spec.version:
            event(self.body, "NothingToAbort", "vmops.dev/abort: no rollout in progress")
            return
        self.rollout = replace(r, aborted=True)
        flying = [
            n for n in spec.node_names if self.progress.get(n, NodeProgress()).phase in IN_FLIGHT
        ]
        for n in flying:
            task = self.tasks.pop(n, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for n in flying:
            p = self.progress[n]
            if p.phase in (Phase.ENABLING, Phase.SOAKING):
                await evict(adapters, spec, n)
            self.custody.owned.add(n)
        message = f"RolloutAborted: {spec.version} aborted by vmops.dev/abort"
        for n in flying:
            await self._fail(
                spec, n, "RolloutAborted", f"{message} ({n} was {self.progress[n].phase})"
            )
        if not flying:
            await self._fail_rollout(spec, "RolloutAborted", message)

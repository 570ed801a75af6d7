"""The per-cluster reconcile loop: observe, plan, act one step, persist.

One `ClusterReconciler` runs per WSO2Cluster (as a kopf daemon). The loop observes every node
(version over SSH, health over HTTP, server state on every LB), asks the pure planner what to do,
and runs each in-flight node's sequence as its own task. Every step is written to the CR's status
before and after it runs, so a restarted operator resumes from status alone:

    Draining -> Provisioning[k] -> Verifying -> WaitingHealthy -> Enabling -> Soaking -> Current

Each step is idempotent. A step that was interrupted by a crash simply runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import metrics
from .adapters import Adapters, adapter_key, lb_view, observe, reason_of, timed
from .analysis import NodeAnalysis
from .canary import CanaryGate
from .canary_driver import CanaryDriving
from .coalesce import Coalesced
from .custody import HAND_BACK_ANNOTATION, Custody, departed_from_status, hand_back_nodes
from .errors import (
    WSO2OperatorError,
)
from .hooks import AFTER, PlayDriving, after_failed, after_hook_due, retry_resets
from .kube import KubeAdapter, SecretProblem, event
from .maintenance import MaintenanceRollouts, describe, maintenance_done, next_rollout
from .model import (
    IN_FLIGHT,
    RETARGETABLE,
    ClusterSpec,
    NodeProgress,
    Phase,
    RolloutState,
)
from .ownership import DRAIN
from .planner import (
    Blocked,
    NodeObservation,
    Plan,
    StepKind,
    effective_target,
    node_step,
    plan,
    step_deadline,
)
from .probe_cadence import ProbeCadence
from .progressive import analysis_from_status, seen_tokens
from .revision import Kind, Revision
from .status import (
    SetupProblem,
    append_history,
    conditions_from_status,
    history_entry,
    history_from_status,
    progress_from_status,
    rollout_from_status,
    stored_token,
    summarize,
)
from .status_writer import StatusWriter, StoodDown
from .steps import StepFailed, run_step
from .textcap import cap

log = logging.getLogger(__name__)
RETRY_ANNOTATION = "vmops.dev/retry"
# Clean-ups that outlive a cancelled daemon; asyncio keeps only weak references to tasks.
_CLEANUPS: set[asyncio.Future[None]] = set()


@dataclass
class Settings:
    observe_period: float = 30.0  # idle re-observation: re-asserts LB state after HAProxy reloads
    active_period: float = 5.0  # the same while nodes are out of rotation
    max_backoff: float = 30.0
    # Before resuming a node that status shows in flight: another replica may have been acting
    # on it until a moment ago (a higher-priority replica that just came back pauses the one that
    # took over, and kopf resumes the newcomer at once). The paused one cancels its step within
    # milliseconds; waiting this long first keeps two replicas from running the same step.
    resume_grace: float = 2.0
    # A quiet cluster reads its nodes' versions over SSH every this many passes (see
    # probe_cadence.py); health and LB state on every pass.
    version_probe_every: int = 2

    @property
    def writer_lease(self) -> float:
        """How long another writer's silence must last before this one acts again: every writer
        writes status at least once per observe period."""
        return 2 * self.observe_period + 15


class ClusterReconciler(CanaryDriving, PlayDriving, MaintenanceRollouts):
    def __init__(
        self,
        *,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        kube: KubeAdapter,
        settings: Settings | None = None,
        adapters_factory: Callable[[ClusterSpec, bytes, str], Adapters] = Adapters,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.body = body  # kopf's live view: spec changes show up here without a restart
        self.kube = kube
        self.settings = settings or Settings()
        self._adapters_factory = adapters_factory
        self.writer = StatusWriter(kube, namespace, name, None, lease=self.settings.writer_lease)
        self._load(body)
        self.observed: dict[str, NodeObservation] = {}
        self.problem: SetupProblem | None = None
        self.adapters: Adapters | None = None
        self._adapters_key = ""
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._retired: list[Adapters] = []
        self.wake = asyncio.Event()
        self._persist_lock = asyncio.Lock()
        # Node tasks record their steps through shared writes (see persist).
        self._status_writes: Coalesced[None] = Coalesced(self._write_for_waiters)
        self._newest_spec: ClusterSpec | None = None
        self._last_plan: Plan | None = None
        self._stood_down = False
        self.probe_cadence = ProbeCadence(self.settings.version_probe_every)
        self._woken = True  # the first pass reads everything
        self._last_pass: tuple[bool, int] | None = None  # (active, generation) of the last pass
        self._reassert_failed: set[str] = set()
        self._analysis_task: asyncio.Task[None] | None = None
        self.gate: CanaryGate | None = None
        self._init_plays()

    def _load(self, obj: Mapping[str, Any]) -> None:
        """Resume state from an object's status (at start, and after standing down)."""
        status = dict(obj.get("status") or {})
        self.writer.adopt(obj)
        self.progress: dict[str, NodeProgress] = progress_from_status(status)
        self.rollout: RolloutState = rollout_from_status(status)
        self.history: list[dict[str, Any]] = history_from_status(status)
        self.conditions: list[dict[str, Any]] = conditions_from_status(status)
        self.custody = Custody(self.body, self.name, departed_from_status(status))
        self.analysis = analysis_from_status(status)
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if not status.get("rollout"):
            # No record of what was acted on (a new object, or status wiped): annotations that are
            # already there are old requests, not new ones. A wiped status must not turn an old
            # retry into an automatic retry of a version that failed.
            self.rollout = replace(
                seen_tokens(annotations, self.rollout),
                retry_token=stored_token(annotations.get(RETRY_ANNOTATION)),
                hand_back_token=stored_token(annotations.get(HAND_BACK_ANNOTATION)),
            )

    # ------------------------------------------------------------------ spec & adapters
    def spec(self) -> ClusterSpec:
        return ClusterSpec.from_dict(self.body["spec"])

    @property
    def generation(self) -> int:
        return int(self.body.get("metadata", {}).get("generation") or 0)

    def retry_token(self) -> str | None:
        """The retry annotation as status stores it (long values hashed)."""
        annotations = self.body.get("metadata", {}).get("annotations") or {}
        return stored_token(annotations.get(RETRY_ANNOTATION))

    def hand_back(self, spec: ClusterSpec) -> frozenset[str]:
        """Nodes named by a hand-back annotation not acted on yet."""
        token = (self.body.get("metadata", {}).get("annotations") or {}).get(HAND_BACK_ANNOTATION)
        if not token or stored_token(token) == self.rollout.hand_back_token:
            return frozenset()
        return hand_back_nodes(token, spec)

    async def _ensure_adapters(self, spec: ClusterSpec) -> Adapters:
        key, hosts = await self.kube.read_ssh_secret(
            self.namespace,
            spec.secret_name,
            spec.private_key_key,
            spec.known_hosts_key,
            cluster=self.name,
        )
        k = adapter_key(spec, key, hosts)
        if self.adapters is None or k != self._adapters_key:
            try:
                fresh = self._adapters_factory(spec, key, hosts)
            except (ValueError, WSO2OperatorError) as e:
                raise SecretProblem("InvalidSSHCredentials", str(e)) from None
            if self.adapters is not None:
                # New credentials or LBs: node tasks switch at their next step, and the old
                # connections are closed once no task can still be using them.
                self._retired.append(self.adapters)
            self.adapters, self._adapters_key = fresh, k
        return self.adapters

    # ------------------------------------------------------------------ main loop
    async def run(self, stopped: Any) -> None:
        try:
            flying = sorted(n for n, p in self.progress.items() if p.phase in IN_FLIGHT)
            if flying and self.settings.resume_grace > 0:
                log.info(
                    "[%s/%s] resuming %s in %gs (another replica may just have stopped)",
                    self.namespace,
                    self.name,
                    ", ".join(flying),
                    self.settings.resume_grace,
                )
                await self._wait_stopped(self.settings.resume_grace, stopped)
            # Resume from the freshest status, not the one kopf saw when it started the daemon:
            # a replica that was stopping may have written since.
            try:
                fresh = await self.kube.read_cluster(self.namespace, self.name)
            except Exception:  # the apiserver hiccuped: kopf's view will do
                log.exception("[%s/%s] could not re-read the object", self.namespace, self.name)
                fresh = None
            if fresh is not None:
                self._load(fresh)
            while not stopped:
                if self.writer.other is not None:
                    if not self._stood_down:
                        # A node task's write lost: stop every other task too, and say so.
                        await self._stand_down(StoodDown(self.writer.other))
                    await self._stand_by(stopped)
                    continue
                try:
                    active = await self.reconcile_once()
                except StoodDown as e:
                    await self._stand_down(e)
                    continue
                except Exception as e:
                    # A bug or an apiserver refusal must not crash-loop the daemon (kopf would
                    # restart it from status and forget what this process proved): report it as
                    # a condition and an Event, back off, and observe again.
                    log.exception("[%s/%s] reconcile pass failed", self.namespace, self.name)
                    self.problem = SetupProblem(
                        "ReconcileError",
                        f"{type(e).__name__}: {cap(e, 512)}; retrying every "
                        f"{self.settings.max_backoff:g}s",
                    )
                    try:
                        await self.persist(self.spec())  # the condition, and its Event
                    except Exception:
                        event(self.body, "ReconcileError", self.problem.message, warning=True)
                    await self._wait_stopped(self.settings.max_backoff, stopped)
                    continue
                period = self.settings.active_period if active else self.settings.observe_period
                await self._wait(period, stopped)
        finally:
            # kopf signals a stop (pause for a peer, deletion, shutdown) and may cancel this
            # task a moment later, in the middle of this clean-up: shielded, the node steps are
            # still cancelled and every SSH/LB connection still closed.
            cleanup = asyncio.ensure_future(self._shutdown())
            _CLEANUPS.add(cleanup)
            cleanup.add_done_callback(_CLEANUPS.discard)
            await asyncio.shield(cleanup)

    async def _stand_down(self, e: StoodDown) -> None:
        """Another operator wrote this cluster's status: stop every node task at once (a
        cancelled command is killed on the node) and act no more until it goes silent."""
        await self._stop_analysis()
        for t in self.tasks.values():
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        self.custody.owned.clear()
        self._stood_down = True
        event(
            self.body,
            "ConcurrentOperator",
            f"{e}; this operator ({self.writer.identity}) stands down until it has been silent "
            f"for {self.writer.lease:g}s",
            warning=True,
        )

    async def _stand_by(self, stopped: Any) -> None:
        await self._wait_stopped(self.settings.observe_period, stopped)
        try:
            if stopped or await self.writer.other_still_active():
                return
        except Exception:
            log.exception("[%s/%s] could not read the object", self.namespace, self.name)
            return
        self._stood_down = False
        log.warning("[%s/%s] the other writer went silent; resuming", self.namespace, self.name)
        if self.writer.fresh is not None:
            self._load(self.writer.fresh)

    async def _shutdown(self) -> None:
        await self._stop_analysis()
        for t in self.tasks.values():
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self._restore_ramped_weights()
        for a in (*self._retired, self.adapters):
            if a is not None:
                await a.close()

    async def _wait_stopped(self, seconds: float, stopped: Any) -> None:
        if hasattr(stopped, "wait"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), seconds)
        else:
            await asyncio.sleep(seconds)

    async def _wait(self, period: float, stopped: Any) -> None:
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self.wake.wait())}
        waiters |= set(self.tasks.values())
        if hasattr(stopped, "wait"):
            waiters.add(asyncio.ensure_future(stopped.wait()))
        _, pending = await asyncio.wait(
            waiters, timeout=period, return_when=asyncio.FIRST_COMPLETED
        )
        for w in pending:
            if w not in self.tasks.values():
                w.cancel()
        self._woken = self.wake.is_set() or len(pending) < len(waiters)
        self.wake.clear()

    async def reconcile_once(self) -> bool:
        """One observe-plan-act pass. Returns True while a rollout is active."""
        spec = self.spec()
        now = time.time()
        self._reap_tasks()
        if self._retired and not self.tasks:
            for old in self._retired:
                await old.close()
            self._retired.clear()
        try:
            adapters = await self._ensure_adapters(spec)
        except SecretProblem as e:
            self.problem = SetupProblem(e.reason, e.message)
            self.observed = {}
            self._track_rollout(spec, now)
            await self.persist(spec)
            return bool(self.tasks)

        previous = self.observed
        self.custody.note_departed(spec, self.progress)
        extra: dict[str, dict[str, str]] = {}
        known = self.probe_cadence.reusable(quiet=self._quiet(), previous=previous)
        for _ in range(3):
            snapshot = dict(self.progress)
            self.observed, self.problem, extra = await observe(
                spec, adapters, self.custody.departed, known=known
            )
            # A node task that finished while we observed makes the observation stale for that
            # node (e.g. seen in DRAIN, now Current): planning on it would start it again.
            if self._unchanged(snapshot):
                break
        self._track_rollout(spec, now)
        self._detect_drift(spec, previous)
        self._detect_revision_drift(spec, previous)
        self.custody.release_departed(extra)
        self.progress = self.custody.audit(spec, self.observed, self.progress)
        promote = await self._steer(spec, adapters)
        hand_back = self.hand_back(spec)
        room = self._canary_room(spec, now, promote)
        p = plan(
            spec, self.observed, self.progress, self.rollout, self.custody.owned, hand_back, room
        )
        if p.blocked == Blocked.CANARY and self.gate is not None:
            p = replace(p, blocked_message=self.gate.message)
        self._last_plan = p
        self.custody.report_held(p.held_out, self.observed)
        self.custody.report_unknown_versions(self.observed)
        snapshot = dict(self.progress)
        await self._reassert(spec, adapters, p)

        if p.begin and self.problem is None:
            try:
                async with timed("lb"):
                    await adapters.pool.preflight(spec.backend, list(spec.node_names))
            except WSO2OperatorError as e:
                self.problem = SetupProblem(reason_of(e, "PreflightFailed"), f"preflight: {e}")
                p = replace(p, begin=())
        if p.begin and not self._unchanged(snapshot):
            # A node task moved on while we re-asserted or checked the LBs: the plan was made on
            # a world that is gone. Start nothing; the next pass plans again.
            p = replace(p, begin=())
        # Play content fetched once for the rollout, run-once hooks (hooks.py).
        p = await self._around_rollout(spec, p)
        begun = {b.node for b in p.begin}
        if hand_back and all(
            n in begun or not self.observed.get(n, NodeObservation()).admin_out for n in hand_back
        ):
            # Every node handed back is back with the operator: the request is done.
            annotations = self.body.get("metadata", {}).get("annotations") or {}
            self.rollout = replace(
                self.rollout, hand_back_token=stored_token(annotations.get(HAND_BACK_ANNOTATION))
            )
        for b in p.begin:
            self.progress[b.node] = NodeProgress(
                phase=b.phase,
                target=b.target,
                previous_version=b.previous_version,
                since=now,
                start=now,
                message=f"{b.node}: starting {describe(b.kind, b.target)}",
                kind=b.kind,
                revision=b.revision,
            )
            self.custody.owned.add(b.node)
            event(
                self.body,
                "NodeUpdateStarted",
                f"{b.node}: {describe(b.kind, b.target, b.previous_version)}",
            )
        # Written before any node task starts: a conflicting write (another operator) stops
        # here, before the begun nodes are touched.
        await self.persist(spec, p)
        for n, prog in self.progress.items():
            if prog.phase in IN_FLIGHT and n not in self.tasks and n in spec.node_names:
                self.tasks[n] = asyncio.create_task(self._drive_node(n), name=f"node-{n}")
        self._ensure_analysis(spec)
        holding = self.gate is not None and self.gate.holding
        active = bool(self.tasks) or bool(p.unavailable) or holding
        self._last_pass = (active, self.generation)
        return active

    def _quiet(self) -> bool:
        """Nothing suggests a change since the last pass (probe_cadence.py): the timer woke this
        pass, no node is in flight, the last pass was idle, found no problem and saw this
        generation."""
        in_flight = any(p.phase in IN_FLIGHT for p in self.progress.values())
        return (
            not self._woken
            and not self.tasks
            and not in_flight
            and self.problem is None
            and self._last_pass == (False, self.generation)
        )

    def _unchanged(self, snapshot: Mapping[str, NodeProgress]) -> bool:
        return all(self.progress.get(n) is p for n, p in snapshot.items()) and len(snapshot) == len(
            self.progress
        )

    def _reap_tasks(self) -> None:
        for n, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[n]
                if not t.cancelled() and t.exception() is not None:
                    log.error("node task %s crashed", n, exc_info=t.exception())
                    e = t.exception()
                    event(
                        self.body,
                        "ReconcileError",
                        f"{n}: node task stopped on {type(e).__name__}: {cap(e, 512)}; "
                        "it is started again from status on the next pass",
                        warning=True,
                    )

    # ------------------------------------------------------------------ observation
    def _detect_drift(self, spec: ClusterSpec, previous: Mapping[str, NodeObservation]) -> None:
        """A node's version changed while the operator was not updating it: a change by hand."""
        target, _, _ = effective_target(spec, self.rollout)
        for n in spec.node_names:
            p = self.progress.get(n, NodeProgress())
            before = previous.get(n, NodeObservation()).version
            v = self.observed.get(n, NodeObservation()).version
            if not self._left_alone(n, p):
                continue
            if before is None or v is None or v == before or v == target:
                continue
            msg = (
                f"DriftDetected: {n} runs {v} but ran {before} (changed outside the "
                f"operator); it will be brought to {target}"
            )
            self.progress[n] = p.to(Phase.OUTDATED, time.time(), msg)
            event(self.body, "DriftDetected", msg, warning=True)

    async def _refresh_node_lb(self, spec: ClusterSpec, node: str) -> None:
        if self.adapters is None:
            return
        states = (await lb_view(spec, self.adapters)).states
        for n, lb in states.items():
            o = self.observed.get(n, NodeObservation())
            self.observed[n] = replace(o, lb=lb)

    async def _reassert(self, spec: ClusterSpec, adapters: Adapters, p: Plan) -> None:
        planned = dict(self.progress)
        for r in p.reassert:
            prog = self.progress.get(r.node, NodeProgress())
            if r.node in self.tasks and prog.phase == Phase.WAITING_HEALTHY:
                continue
            if prog is not planned.get(r.node):
                continue  # its task moved on (maybe to Enabling) since the plan: never fight it
            msg = (
                f"{r.node} was back in rotation on {', '.join(r.lbs)} (HAProxy reload?); "
                f"{r.state} re-asserted"
            )
            try:
                async with timed("lb"):
                    if r.state == DRAIN:
                        for c in adapters.pool.clients:
                            if c.name in r.lbs:
                                await c.set_state(spec.backend, r.node, "drain")
                    else:
                        await adapters.pool.maint(spec.backend, r.node)
                event(self.body, "StateReasserted", msg, warning=True)
                self._reassert_failed.discard(r.node)
            except WSO2OperatorError as e:
                log.warning("could not re-assert %s on %s: %s", r.state, r.node, cap(e))
                if r.node in self._reassert_failed:
                    continue  # one Event per node until a re-assertion succeeds
                self._reassert_failed.add(r.node)
                event(
                    self.body,
                    "ReassertFailed",
                    f"{r.node} is back in rotation on {', '.join(r.lbs)} and could not be taken "
                    f"out again: {type(e).__name__}: {cap(e, 512)}",
                    warning=True,
                )

    # ------------------------------------------------------------------ rollout bookkeeping
    def _track_rollout(self, spec: ClusterSpec, now: float) -> None:
        r = self.rollout
        token = self.retry_token()
        if token and token != r.retry_token:
            # A human asked to retry the same version: forget that it failed.
            event(
                self.body, "RetryRequested", f"retrying {spec.version} ({RETRY_ANNOTATION}={token})"
            )
            r = replace(
                r,
                retry_token=token,
                failed_version=None,
                rollback_failed=False,
                finished=False,
                aborted=False,
                **retry_resets(r),
            )
            self.analysis.reset()
        new_version = r.to_version != spec.version
        if not new_version and (r.to_revision or Revision()) != spec.revision:
            # Same version, new configRevision/restartedAt/patchedAt: a maintenance rollout.
            self.rollout = r
            self._start_maintenance(spec, now)
            return
        if new_version:
            if r.to_version is not None and not r.finished:
                self.history = append_history(
                    self.history,
                    history_entry(r, "Superseded", now, f"spec.version -> {spec.version}"),
                )
            versions = [o.version for o in self.observed.values() if o.version]
            from_v = next((v for v in versions if v != spec.version), None) or (
                versions[0] if versions else r.to_version
            )
            r = next_rollout(
                r,
                from_version=from_v,
                to_version=spec.version,
                to_revision=spec.revision,
                start=now,
            )
            self.analysis.reset()
            metrics.rollout_started(self.namespace, self.name)
        self.rollout = r

    def _finish_rollout_if_done(self, spec: ClusterSpec, p: Plan, now: float) -> None:
        r = self.rollout
        if not p.complete or r.finished or r.to_version is None or after_hook_due(spec, r, p):
            return
        if r.from_version == r.to_version and not p.rolling_back and not r.maintenance:
            # Nothing had to change (e.g. a new CR for nodes already at the version): no history.
            self.rollout = replace(r, finished=True)
            return
        result = "RolledBack" if p.rolling_back else "Succeeded"
        msg = (
            f"{r.failed_version} failed; all nodes back on {p.target}"
            if p.rolling_back
            else maintenance_done(r.maintenance, p.target, r.to_revision)
        )
        # Every node is updated, so history says Succeeded, but the Event must not read as a
        # clean success next to the Degraded condition.
        degraded = result == "Succeeded" and after_failed(r)
        if degraded:
            msg += f"; {AFTER} failed"
        self.history = append_history(self.history, history_entry(r, result, now, msg))
        self.rollout = replace(r, finished=True)
        metrics.rollout_finished(self.namespace, self.name, result, now - (r.start or now))
        reason = "RolloutDegraded" if degraded else "Rollout" + result
        event(self.body, reason, f"{r.from_version} -> {r.to_version}: {msg}", warning=degraded)

    # ------------------------------------------------------------------ status
    async def persist(self, spec: ClusterSpec, p: Plan | None = None) -> None:
        """Write the state in memory to status; returns once a write that started after this
        call succeeded, so everything the caller changed before calling is recorded.

        The node tasks of a big cluster record steps at the same time, and each write carries
        the whole status: those that ask while a write runs share the next one (coalesce.py),
        made with the newest spec any of them passed. The loop's own write of the nodes it is
        about to begin carries its plan and is made as it is.
        """
        if p is not None:
            async with self._persist_lock:
                await self._write_status(spec, p)
            return
        self._newest_spec = spec
        await self._status_writes.run()

    async def _write_for_waiters(self) -> None:
        spec = self._newest_spec
        assert spec is not None
        async with self._persist_lock:
            await self._write_status(spec, None)

    async def _write_status(self, spec: ClusterSpec, p: Plan | None) -> None:
        p = p or plan(spec, self.observed, self.progress, self.rollout)
        # History and Ready=True go out in the same write, so readers never see one alone.
        self._finish_rollout_if_done(spec, p, time.time())
        # The gauge follows every status write: a node task that finishes the rollout
        # writes status itself, between two passes of the loop.
        metrics.nodes_out(self.namespace, self.name, len(p.unavailable))
        self.custody.report_problem(self.problem)
        lb_block = p.blocked in (Blocked.LB_UNREACHABLE, Blocked.LB_ERROR)
        self.custody.report_blocked(p.blocked if lb_block else None, p.blocked_message)
        status = summarize(
            spec=spec,
            generation=self.generation,
            observed=self.observed,
            progress=self.progress,
            rollout=self.rollout,
            plan=p,
            previous_conditions=self.conditions,
            problem=self.problem,
            now=time.time(),
            departed=self.custody.departed,
            hold=self._hold(),
        )
        self._canary_status(spec, status)
        self._hooks_status(spec, status, p)
        self.custody.report_paused(spec.paused, status, spec.version)
        status["history"] = self.history
        status["departedNodes"] = list(self.custody.departed)
        await self.writer.write(status)
        self.conditions = status["conditions"]

    # ------------------------------------------------------------------ one node
    async def _drive_node(self, name: str) -> None:
        """Runs one node's sequence to the end (or to Failed), persisting around each step."""
        try:
            await self._drive_node_steps(name)
        except StoodDown:
            return  # the loop stands down and cancels every node task

    async def _drive_node_steps(self, name: str) -> None:
        while True:
            spec = self.spec()
            if name not in spec.node_names:
                return  # removed from the spec: leave the VM alone
            p = self.progress[name]
            target, _, _ = effective_target(spec, self.rollout)
            if p.target != target and (p.phase in RETARGETABLE or p.phase == Phase.DRAINING):
                # The node is still out of rotation: the safe point to switch versions.
                phase = Phase.DRAINING if p.phase == Phase.DRAINING else Phase.PROVISIONING
                p = self.progress[name] = p.to(
                    phase,
                    time.time(),
                    f"{name}: retargeted to {target}",
                    target=target,
                    step=0,
                    kind=Kind.PROVISION,
                    revision=spec.revision,
                )
                event(self.body, "NodeRetargeted", f"{name}: now moving to {target}")
            step = node_step(name, p, spec, time.time())
            if step is None:
                return
            if step.kind == StepKind.FAIL:
                await self._fail(spec, name, step.reason, step.message)
                return
            t0 = time.monotonic()
            try:
                assert self.adapters is not None
                # progressDeadlineSeconds holds while a step runs too: a command stuck on the
                # node or an LB that never answers is cancelled (and killed) at the deadline.
                async with asyncio.timeout(step_deadline(p, spec, time.time())):
                    new = await run_step(
                        self.adapters,
                        self.observed,
                        spec,
                        name,
                        p,
                        step,
                        self._verdict(spec),
                        self._play_context(name, p),
                    )
            except TimeoutError:
                metrics.step_done(step.kind, time.monotonic() - t0, ok=False)
                await self._fail(
                    spec,
                    name,
                    "ProgressDeadlineExceeded",
                    f"{name}: update took longer than progressDeadlineSeconds="
                    f"{spec.progress_deadline:g} ({step.kind} cancelled)",
                )
                return
            except StepFailed as e:
                metrics.step_done(step.kind, time.monotonic() - t0, ok=False)
                await self._fail(spec, name, e.reason, f"{e.reason}: {e.message}")
                return
            except WSO2OperatorError as e:
                if not e.transient:
                    metrics.step_done(step.kind, time.monotonic() - t0, ok=False)
                    await self._fail(
                        spec,
                        name,
                        reason_of(e, "StepFailed"),
                        f"{reason_of(e, 'StepFailed')}: {name} {step.kind}: {e}",
                    )
                    return
                attempts = p.attempts + 1
                delay = min(self.settings.max_backoff, 0.5 * 2 ** min(attempts, 10))
                if attempts == 1:
                    # The first of a run of retries is worth an Event; the node row counts them.
                    event(
                        self.body,
                        "StepRetrying",
                        f"{name}: {step.kind} failed ({type(e).__name__}: {cap(e, 512)}); "
                        "retrying with back-off until progressDeadlineSeconds",
                        warning=True,
                    )
                self.progress[name] = replace(
                    p,
                    attempts=attempts,
                    message=(
                        f"{name}: {step.kind} will retry in {delay:.1f}s after "
                        f"{type(e).__name__}: {e}"
                    ),
                )
                await self.persist(spec)
                await asyncio.sleep(delay)
                continue
            metrics.step_done(step.kind, time.monotonic() - t0, ok=True)
            if not self._step_owner(name, p):
                continue  # changed under us (retarget): re-evaluate before recording
            self.progress[name] = new
            if new.phase == Phase.SOAKING and p.phase != Phase.SOAKING and spec.analysis:
                self.analysis.nodes[name] = NodeAnalysis()  # a new soak is judged afresh
                self.wake.set()  # the loop starts the analysis
            await self._refresh_node_lb(spec, name)
            await self.persist(spec)
            if new.phase != p.phase:
                event(self.body, f"Node{new.phase}", new.message or f"{name}: {new.phase}")
            if new.phase not in IN_FLIGHT:
                return

    async def _fail(self, spec: ClusterSpec, name: str, reason: str, message: str) -> None:
        p = self.progress.get(name)
        if p is None:
            return  # removed from the spec during its step: reported as departed, not failed
        if not message.startswith(reason):
            message = f"{reason}: {message}"
        self.progress[name] = p.to(Phase.FAILED, time.time(), message)
        await self._fail_rollout(spec, reason, message, p.target)

    async def _fail_rollout(
        self, spec: ClusterSpec, reason: str, message: str, node_target: str | None = None
    ) -> None:
        r = self.rollout
        if r.rolling_back or (node_target is not None and node_target != spec.version):
            # The rollback itself failed: hold for a human rather than loop.
            self.rollout = replace(r, failed_version=spec.version, rollback_failed=True)
        else:
            self.rollout = replace(r, failed_version=spec.version)
        _, rolling_back, _ = effective_target(spec, self.rollout)
        self.rollout = replace(self.rollout, rolling_back=rolling_back)
        if not rolling_back:
            result = "Aborted" if self.rollout.aborted else "Failed"
            self.history = append_history(
                self.history, history_entry(self.rollout, result, time.time(), message)
            )
            self.rollout = replace(self.rollout, finished=True)
        metrics.rollout_failed(self.namespace, self.name, reason)
        event(self.body, reason, message, warning=True)
        log.error("%s/%s: %s", self.namespace, self.name, message)
        await self.persist(spec)
        self.wake.set()

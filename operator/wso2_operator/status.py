"""Pure construction of the WSO2Cluster status: counts, per-node rows, conditions, history.

Kept apart from I/O so the exact shape users read with `kubectl get/describe/wait` and ArgoCD's
health script is unit-testable.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import IN_FLIGHT, ClusterSpec, NodeProgress, Phase, RolloutState
from .planner import Blocked, NodeObservation, Plan, display_phase

HISTORY_LIMIT = 10


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str | None) -> float | None:
    if not value:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


@dataclass(frozen=True)
class SetupProblem:
    """Something that stops the operator from acting at all: a missing Secret, a bad key..."""

    reason: str
    message: str


def condition(
    ctype: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: float,
) -> dict[str, Any]:
    text = "Unknown" if status is None else ("True" if status else "False")
    prev = next((c for c in previous if c.get("type") == ctype), None)
    # lastTransitionTime moves only when the status flips, as metav1.Condition requires.
    ltt = prev["lastTransitionTime"] if prev and prev.get("status") == text else iso(now)
    return {
        "type": ctype,
        "status": text,
        "observedGeneration": generation,
        "lastTransitionTime": ltt,
        "reason": reason,
        "message": message,
    }


def node_rows(
    spec: ClusterSpec,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    target: str,
) -> list[dict[str, Any]]:
    rows = []
    for name in spec.node_names:
        p = progress.get(name, NodeProgress())
        o = observed.get(name, NodeObservation())
        row: dict[str, Any] = {
            "name": name,
            "phase": str(display_phase(p, o, target)),
            "loadBalancers": dict(o.lb),
            "message": p.message or _idle_message(o, target),
            "step": p.step,
            "attempts": p.attempts,
        }
        if o.version is not None:
            row["version"] = o.version
        if o.healthy is not None:
            row["healthy"] = o.healthy
        if p.since is not None:
            row["lastTransitionTime"] = iso(p.since)
        if p.target:
            row["target"] = p.target
        if p.previous_version:
            row["previousVersion"] = p.previous_version
        if p.start is not None:
            row["startTime"] = iso(p.start)
        rows.append(row)
    return rows


def _idle_message(o: NodeObservation, target: str) -> str:
    if o.version is None:
        return "version unknown"
    if o.version != target:
        return f"runs {o.version}, wants {target}"
    if not o.in_rotation:
        out = ", ".join(f"{lb}={s}" for lb, s in o.lb.items() if s != "UP")
        return f"out of rotation ({out})" if out else "out of rotation"
    if o.healthy is False:
        return "failing the health check"
    return "serving"


def summarize(
    *,
    spec: ClusterSpec,
    generation: int,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    rollout: RolloutState,
    plan: Plan,
    previous_conditions: Sequence[Mapping[str, Any]],
    problem: SetupProblem | None,
    now: float,
) -> dict[str, Any]:
    names = spec.node_names
    versions = {observed.get(n, NodeObservation()).version for n in names}
    current = next(iter(versions)) if len(versions) == 1 and None not in versions else None
    updated = sum(1 for n in names if observed.get(n, NodeObservation()).version == spec.version)
    ready = sum(1 for n in names if observed.get(n, NodeObservation()).available)
    failed = [n for n in names if progress.get(n, NodeProgress()).phase == Phase.FAILED]
    flying = [n for n in names if progress.get(n, NodeProgress()).phase in IN_FLIGHT]
    total = len(names)

    # Degraded: something needs a human (or a spec change) before the rollout can finish.
    if problem is not None:
        degraded = (True, problem.reason, problem.message)
    elif failed:
        p = progress[failed[0]]
        degraded = (True, _failure_reason(p), p.message or f"{failed[0]} failed")
    elif plan.rolling_back:
        msg = f"{rollout.failed_version} failed; rolling back to {plan.target}"
        degraded = (True, "RolledBack" if plan.complete else "RollingBack", msg)
    elif plan.blocked == Blocked.LB_UNREACHABLE:
        degraded = (True, str(plan.blocked), plan.blocked_message)
    else:
        degraded = (False, "AsExpected", "no failures")

    # Progressing: the operator is moving nodes right now.
    if flying or plan.begin:
        moving = flying or [b.node for b in plan.begin]
        phases = ", ".join(
            f"{n} {progress.get(n, NodeProgress()).phase or 'Draining'}" for n in moving
        )
        reason = "RollingBack" if plan.rolling_back else "NodeUpdating"
        progressing = (True, reason, f"{updated}/{total} at {spec.version}; {phases}")
    elif plan.complete:
        progressing = (False, "RolloutComplete", f"all {total} nodes run {plan.target}")
    elif plan.blocked is not None:
        progressing = (False, str(plan.blocked), plan.blocked_message)
    elif problem is not None:
        progressing = (False, problem.reason, problem.message)
    else:
        progressing = (False, "Waiting", "waiting for the next observation")

    if plan.complete and not plan.rolling_back and problem is None:
        ready_c = (
            True,
            "AllNodesReady",
            f"{total}/{total} nodes run {spec.version} and serve on every load balancer",
        )
    elif problem is not None:
        ready_c = (False, problem.reason, problem.message)
    elif failed or plan.rolling_back:
        ready_c = (False, degraded[1], degraded[2])
    elif spec.paused and not flying:
        ready_c = (False, "Paused", f"paused with {updated}/{total} nodes at {spec.version}")
    elif flying or plan.begin:
        ready_c = (False, "RolloutInProgress", progressing[2])
    elif plan.blocked is not None:
        ready_c = (False, str(plan.blocked), plan.blocked_message)
    else:
        ready_c = (False, "NodesNotReady", f"{ready}/{total} nodes ready, {updated} updated")

    # Paused wins over Ready: a user who paused wants to see that, even with nothing pending.
    if spec.paused and not flying and not degraded[0]:
        phase = "Paused"
    elif ready_c[0]:
        phase = "Ready"
    elif plan.rolling_back and not plan.complete:
        phase = "RollingBack"
    elif degraded[0]:
        phase = "Degraded"
    elif progressing[0]:
        phase = "Progressing"
    else:
        phase = "Unknown" if plan.blocked == Blocked.UNKNOWN_VERSION else "Progressing"

    conds = [
        condition("Ready", *ready_c, generation, previous_conditions, now),
        condition("Progressing", *progressing, generation, previous_conditions, now),
        condition("Degraded", *degraded, generation, previous_conditions, now),
    ]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "currentVersion": current,
        "targetVersion": plan.target,
        "nodeCount": total,
        "updatedNodes": updated,
        "readyNodes": ready,
        "updated": f"{updated}/{total}",
        "ready": f"{ready}/{total}",
        "lastObservedTime": iso(now),
        "nodes": node_rows(spec, observed, progress, plan.target),
        "conditions": conds,
        "rollout": rollout_dict(rollout),
    }
    return status


def _failure_reason(p: NodeProgress) -> str:
    # The message starts with "<Reason>: ..." by convention of the reconciler.
    head = p.message.split(":", 1)[0].strip()
    return head if head.isidentifier() and head[:1].isupper() else "NodeUpdateFailed"


def rollout_dict(r: RolloutState) -> dict[str, Any]:
    d: dict[str, Any] = {
        "fromVersion": r.from_version,
        "toVersion": r.to_version,
        "startTime": iso(r.start),
        "rollingBack": r.rolling_back,
        "failedVersion": r.failed_version,
        "retryToken": r.retry_token,
        "finished": r.finished,
        "rollbackFailed": r.rollback_failed,
    }
    # A merge patch with None deletes the key, which is what we want for cleared fields.
    return d


def rollout_from_status(status: Mapping[str, Any]) -> RolloutState:
    r = status.get("rollout") or {}
    return RolloutState(
        from_version=r.get("fromVersion"),
        to_version=r.get("toVersion"),
        start=parse_iso(r.get("startTime")),
        rolling_back=bool(r.get("rollingBack", False)),
        failed_version=r.get("failedVersion"),
        retry_token=r.get("retryToken"),
        finished=bool(r.get("finished", False)),
        rollback_failed=bool(r.get("rollbackFailed", False)),
    )


def progress_from_status(status: Mapping[str, Any]) -> dict[str, NodeProgress]:
    out = {}
    for row in status.get("nodes") or []:
        try:
            phase = Phase(row.get("phase", "Unknown"))
        except ValueError:
            phase = Phase.UNKNOWN
        out[row["name"]] = NodeProgress(
            phase=phase,
            target=row.get("target"),
            previous_version=row.get("previousVersion"),
            step=int(row.get("step") or 0),
            since=parse_iso(row.get("lastTransitionTime")),
            start=parse_iso(row.get("startTime")),
            message=row.get("message", "") if phase in IN_FLIGHT or phase == Phase.FAILED else "",
            attempts=int(row.get("attempts") or 0),
        )
    return out


def history_entry(r: RolloutState, result: str, now: float, message: str = "") -> dict[str, Any]:
    return {
        "fromVersion": r.from_version or "",
        "toVersion": r.to_version or "",
        "startTime": iso(r.start or now),
        "endTime": iso(now),
        "result": result,
        "message": message,
    }


def append_history(history: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [*history, entry][-HISTORY_LIMIT:]

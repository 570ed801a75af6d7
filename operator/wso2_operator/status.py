"""Pure construction of the WSO2Cluster status: counts, per-node rows, conditions, history.

Kept apart from I/O so the exact shape users read with `kubectl get/describe/wait` and ArgoCD's
health script is unit-testable.

Status is also the operator's only memory (README: "Reading status"), and anyone with access to
the status subresource can edit it, restore it from a backup, or leave it as an older or newer
operator wrote it. So the readers here (`progress_from_status`, `rollout_from_status`,
`history_from_status`, `conditions_from_status`, `parse_iso`) are total: they never raise, and
anything they do not understand becomes the field's safe default instead of a crash loop.

The writers cap every string that can come from outside (see textcap.py), so that the whole
status of the largest cluster the CRD allows stays under `STATUS_SIZE_BOUND`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import (
    IN_FLIGHT,
    NODE_NAME_RE,
    VERSION_RE,
    ClusterSpec,
    HookRun,
    NodeProgress,
    Phase,
    RolloutState,
)
from .planner import Blocked, NodeObservation, Plan, display_phase
from .revision import COMPONENTS, Kind, Revision
from .textcap import (
    LB_STATE_LIMIT,
    MESSAGE_LIMIT,
    NAME_LIMIT,
    REASON_LIMIT,
    VERSION_LIMIT,
    cap,
    cap_token,
    strip_reason,
)

# Matches the CRD's status.history maxItems.
HISTORY_LIMIT = 10

# The largest cluster the CRD admits: spec.nodes maxItems and spec.loadBalancers.hosts maxItems
# in crds/wso2clusters.yaml. Status rows follow the spec, so these bound status too.
MAX_NODES = 100
MAX_LBS = 16

# What the serialised status (json.dumps, as the Kubernetes client sends it) must stay under,
# with room left below the apiserver/etcd request limit of 1.5 MiB for spec and metadata
# (a kubectl last-applied-configuration annotation doubles the spec).
STATUS_SIZE_BOUND = 1024 * 1024

# Node messages share one budget, in characters: with MAX_NODES nodes each gets 400 instead of
# MESSAGE_LIMIT (at 1024 each, 100 nodes alone could take 1.2 MB). Free text can cost 12 bytes
# a character in json.dumps (an emoji is written as two \u escapes), so this budget is at most
# 480 KB of the bound; tokens (see textcap.cap_token) cost one byte a character.
# Measured worst case (tests/unit/test_status_hostile.py::test_worst_case_status_fits): 100
# nodes and 16 LBs, every field at its cap, 10 history entries, 32 departedNodes and the writer
# field, the canary fields, status.analysis, the play revision and both hooks at their caps,
# and the maintenance fields (revision, targetRevision, bootId, rollout.toRevision) at theirs:
# 1,037,755 bytes in json.dumps (the Kubernetes client's encoding), 580,539 as UTF-8.
NODE_MESSAGES_BUDGET = 40_000
MIN_NODE_MESSAGE_LIMIT = 128

# Clamps for the resume cursor. There are at most 20 provision commands (CRD maxItems); a larger
# step only means "all done", so 10000 changes nothing but keeps arithmetic and display sane.
MAX_STEP = 10_000
MAX_ATTEMPTS = 1_000
MAX_GENERATION = 2**63 - 1  # int64, as metadata.generation

# An annotation token (vmops.dev/retry, vmops.dev/hand-back) is stored as is up to this length,
# so the reconciler's equality check keeps working; a longer one is stored as its digest.
TOKEN_LIMIT = 256

# Times before this, or more than FUTURE_SLACK after now, are not believed (see parse_iso).
EARLIEST_TIME = 946_684_800.0  # 2000-01-01T00:00:00Z
FUTURE_SLACK = 86_400.0


# RFC 3339 date-time (section 5.6), with "t"/"z" in either case as it allows, any number of
# fraction digits and a numeric offset. The length check in parse_iso keeps a huge fraction out.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"([Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_MAX_TIME_LEN = 64


def iso(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC to the second; None for None, NaN, infinities and times
    datetime cannot represent."""
    if ts is None or isinstance(ts, bool) or not isinstance(ts, int | float):
        return None
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return None


def parse_iso(value: object, now: float | None = None) -> float | None:
    """Epoch seconds for an RFC 3339 date-time; None for anything else. Never raises.

    Accepted: every RFC 3339 form, i.e. fractions of a second (kept), "z" and "t" in lower case,
    numeric offsets (including -00:00) and a leap second (:60, counted as the next second).
    Rejected (None): non-strings, other formats (a space instead of T, no offset, a date alone),
    impossible dates, and times before 2000 or more than a day after ``now`` (default: the
    clock). Those come from a hand edit or a broken clock; believing them would make a
    progress deadline fire at once or never.
    """
    if not isinstance(value, str) or len(value) > _MAX_TIME_LEN:
        return None
    m = _RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if hour > 23 or minute > 59 or second > 60:
        return None
    offset = dt.timedelta()
    if m.group(9):
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            return None
        offset = dt.timedelta(hours=off_h, minutes=off_m)
        if m.group(9) == "-":
            offset = -offset
    leap = second == 60
    try:
        ts = dt.datetime(
            year, month, day, hour, minute, 59 if leap else second, tzinfo=dt.timezone(offset)
        ).timestamp()
    except (ValueError, OverflowError):
        return None
    ts += 1 if leap else 0
    if m.group(7):
        ts += float("0" + m.group(7)[:10])
    now = time.time() if now is None else now
    if not EARLIEST_TIME <= ts <= now + FUTURE_SLACK:
        return None
    return ts


def _clamped_int(value: object, high: int, default: int = 0) -> int:
    """An int in [0, high]. Booleans, strings, NaN and fractions are not numbers here."""
    if isinstance(value, bool):
        return default
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return default
        value = int(value)
    if not isinstance(value, int):
        return default
    return min(max(value, 0), high)


def _real_bool(value: object, default: bool = False) -> bool:
    # bool("false") is True: only a JSON boolean counts.
    return value if isinstance(value, bool) else default


def _version(value: object) -> str | None:
    """A version that matches the CRD's pattern, else None.

    Versions read back from status end up in TARGET_VERSION for provision commands (a rollback
    goes to rollout.fromVersion), so only what spec.version itself could be is believed.
    """
    if isinstance(value, str) and VERSION_RE.fullmatch(value):
        return value
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _capped_version(value: str | None) -> str | None:
    # None stays None: in a merge patch it deletes the key, which clears the field.
    return None if value is None else cap_token(value, VERSION_LIMIT)


def stored_token(token: object) -> str | None:
    """The form in which an annotation token (status.rollout.retryToken, handBackToken) is
    stored: the value of the annotation last acted on.

    A string up to TOKEN_LIMIT characters is kept as is, so equality with the annotation still
    works; a longer one becomes "sha256:<hex>" of its UTF-8, so an annotation as large as
    Kubernetes allows (256 KiB) cannot bloat status. Anything else is None. A reconciler that
    compares ``stored_token(annotation)`` with the stored token also matches long tokens after
    a restart (comparing the raw annotation, a long token looks new once after a restart).
    """
    if not isinstance(token, str):
        return None
    if len(token) <= TOKEN_LIMIT:
        return token
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest}"


def node_message_limit(node_count: int) -> int:
    """The cap on each node's message: MESSAGE_LIMIT, less for large clusters so that all the
    rows together stay within NODE_MESSAGES_BUDGET (but never below MIN_NODE_MESSAGE_LIMIT)."""
    share = NODE_MESSAGES_BUDGET // max(1, node_count)
    return max(MIN_NODE_MESSAGE_LIMIT, min(MESSAGE_LIMIT, share))


def _lb_states(lb: Mapping[str, str]) -> dict[str, str]:
    # Keys are LB names from the spec (CRD: 63 characters) and values normalised states, but an
    # un-normalised HAProxy status passes through as is: both are capped. At most MAX_LBS.
    out: dict[str, str] = {}
    for name, state in list(lb.items())[:MAX_LBS]:
        out[cap_token(name, NAME_LIMIT)] = cap_token(state, LB_STATE_LIMIT)
    return out


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
    """One metav1.Condition. ``reason`` and ``message`` are capped (they can quote an SSH or
    HAProxy error); ``previous`` may hold anything a user wrote (non-dicts are skipped)."""
    text = "Unknown" if status is None else ("True" if status else "False")
    prev = next(
        (c for c in previous if isinstance(c, Mapping) and c.get("type") == ctype),
        None,
    )
    # lastTransitionTime moves only when the status flips, as metav1.Condition requires; a
    # previous time that is not a believable RFC 3339 time is replaced rather than copied.
    ltt = None
    if prev is not None and prev.get("status") == text:
        ltt = iso(parse_iso(prev.get("lastTransitionTime"), now))
    return {
        "type": ctype,
        "status": text,
        "observedGeneration": generation,
        "lastTransitionTime": ltt or iso(now),
        "reason": cap_token(reason, REASON_LIMIT),
        "message": cap(message, MESSAGE_LIMIT),
    }


def node_rows(
    spec: ClusterSpec,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    target: str,
    held_out: Collection[str] = (),
) -> list[dict[str, Any]]:
    """One row per spec node. Names are the spec's (the CRD validates them) and are never
    altered: they are the key progress is read back by. Everything observed is capped, and the
    message to `node_message_limit` of the node count."""
    limit = node_message_limit(len(spec.node_names))
    rows = []
    for name in spec.node_names:
        p = progress.get(name, NodeProgress())
        o = observed.get(name, NodeObservation())
        row: dict[str, Any] = {
            "name": name,
            "phase": str(display_phase(p, o, target, spec.revision)),
            "loadBalancers": _lb_states(o.lb),
            "message": cap(p.message or _idle_message(o, target, name in held_out), limit),
            "step": _clamped_int(p.step, MAX_STEP),
            "attempts": _clamped_int(p.attempts, MAX_ATTEMPTS),
        }
        if o.version is not None:
            row["version"] = cap_token(o.version, VERSION_LIMIT)
        if o.healthy is not None:
            row["healthy"] = o.healthy
        if p.since is not None:
            row["lastTransitionTime"] = iso(p.since)
        if p.target:
            row["target"] = cap_token(p.target, VERSION_LIMIT)
        if p.previous_version:
            row["previousVersion"] = cap_token(p.previous_version, VERSION_LIMIT)
        if p.start is not None:
            row["startTime"] = iso(p.start)
        if o.revision is not None and o.revision.as_dict():
            row["revision"] = o.revision.as_dict()
        if p.target and (p.kind != Kind.PROVISION or p.revision is not None):
            row["maintenance"] = str(p.kind)
        if p.revision is not None and p.revision.as_dict():
            row["targetRevision"] = p.revision.as_dict()
        if p.boot_id:
            row["bootId"] = cap_token(p.boot_id, BOOT_ID_LIMIT)
        rows.append(row)
    return rows


def _idle_message(o: NodeObservation, target: str, held_out: bool = False) -> str:
    if held_out:
        out = ", ".join(f"{lb}={s}" for lb, s in o.lb.items() if s in ("MAINT", "DRAIN"))
        return (
            f"out of rotation ({out}), not by the operator: left alone and not updated until "
            "handed back (annotation vmops.dev/hand-back)"
        )
    if o.version is None:
        return f"version unknown: {o.version_problem}" if o.version_problem else "version unknown"
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
    departed: Sequence[str] = (),
    hold: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The whole status except history (the reconciler adds it). Every string that can come
    from outside is capped (textcap): condition messages and reasons, node messages (to
    `node_message_limit`), observed versions, LB names and states, rollout versions."""
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
        reason = _failure_reason(p)
        degraded = (True, reason, strip_reason(reason, p.message) or f"{failed[0]} failed")
    elif plan.rolling_back:
        msg = f"{rollout.failed_version} failed; rolling back to {plan.target}"
        degraded = (True, "RolledBack" if plan.complete else "RollingBack", msg)
    elif plan.blocked in (Blocked.LB_UNREACHABLE, Blocked.LB_ERROR):
        degraded = (True, str(plan.blocked), plan.blocked_message)
    elif plan.refused:
        degraded = (
            True,
            "ClaimRefused",
            f"status says {', '.join(plan.refused)} failed and is out of rotation, but it serves "
            "and taking it out would exceed maxUnavailable: left in rotation",
        )
    elif plan.held_out:
        degraded = (
            True,
            "NodeHeldOut",
            f"{', '.join(plan.held_out)} out of rotation (MAINT/DRAIN) by someone other than the "
            "operator: left alone and not updated. Hand back with: kubectl annotate w2c NAME "
            f"vmops.dev/hand-back='{plan.held_out[0]} <new word>' --overwrite",
        )
    elif departed:
        degraded = (
            True,
            "NodeRemovedWhileOut",
            f"{', '.join(departed)} left spec.nodes while out of rotation and is still out on a "
            "load balancer; the operator no longer touches it: put it back or remove it there",
        )
    else:
        degraded = (False, "AsExpected", "no failures")

    # Progressing: the operator is moving nodes right now. A hold (a canary pause, an
    # inconclusive analysis) waits for time or a human, even with a node soaking.
    if hold is not None and not degraded[0]:
        progressing = (False, *hold)
    elif flying or plan.begin:
        moving = flying or [b.node for b in plan.begin]
        phases = ", ".join(
            # A node begun in this pass has no progress yet: it starts with its drain.
            f"{n} {_moving_phase(progress.get(n, NodeProgress()))}"
            for n in moving
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
    elif hold is not None:
        ready_c = (False, *hold)
    elif flying or plan.begin:
        ready_c = (False, "RolloutInProgress", progressing[2])
    elif plan.blocked is not None:
        ready_c = (False, str(plan.blocked), plan.blocked_message)
    else:
        ready_c = (False, "NodesNotReady", f"{ready}/{total} nodes ready, {updated} updated")

    # Paused wins over Ready: a user who paused wants to see that, even with nothing pending.
    if ((spec.paused and not flying) or hold is not None) and not degraded[0]:
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
        "currentVersion": _capped_version(current),
        "targetVersion": cap_token(plan.target, VERSION_LIMIT),
        "nodeCount": total,
        "updatedNodes": updated,
        "readyNodes": ready,
        "updated": f"{updated}/{total}",
        "ready": f"{ready}/{total}",
        "lastObservedTime": iso(now),
        "nodes": node_rows(spec, observed, progress, plan.target, plan.held_out),
        "conditions": conds,
        "rollout": rollout_dict(rollout),
    }
    return status


def _moving_phase(p: NodeProgress) -> str:
    return str(p.phase) if p.phase in IN_FLIGHT else str(Phase.DRAINING)


def _failure_reason(p: NodeProgress) -> str:
    # The message starts with "<Reason>: ..." by convention of the reconciler.
    head = p.message.split(":", 1)[0].strip()
    return head if head.isidentifier() and head[:1].isupper() else "NodeUpdateFailed"


def rollout_dict(r: RolloutState) -> dict[str, Any]:
    """status.rollout. Versions are capped (fromVersion can be what a node printed); a long
    annotation token is stored as its digest (see `stored_token`)."""
    d: dict[str, Any] = {
        "fromVersion": _capped_version(r.from_version),
        "toVersion": _capped_version(r.to_version),
        "startTime": iso(r.start),
        "rollingBack": bool(r.rolling_back),
        "failedVersion": _capped_version(r.failed_version),
        "retryToken": stored_token(r.retry_token),
        "finished": bool(r.finished),
        "rollbackFailed": bool(r.rollback_failed),
        "handBackToken": stored_token(r.hand_back_token),
        "stepIndex": _clamped_int(r.step_index, MAX_STEP),
        "pauseStartTime": iso(r.pause_start),
        "promotedFull": bool(r.promoted_full),
        "aborted": bool(r.aborted),
        "promoteToken": stored_token(r.promote_token),
        "promoteFullToken": stored_token(r.promote_full_token),
        "abortToken": stored_token(r.abort_token),
        "provisionRevision": cap_token(r.provision_revision, TOKEN_LIMIT)
        if r.provision_revision
        else None,
        "hooks": {
            "beforeRollout": _hook_dict(r.before_hook),
            "afterRollout": _hook_dict(r.after_hook),
        },
        # Every key written, None for an empty one: a merge patch must drop a cleared token.
        "toRevision": revision_dict(r.to_revision) if r.to_revision else None,
        "maintenance": r.maintenance,
    }
    # A merge patch with None deletes the key, which is what we want for cleared fields.
    return d


def rollout_from_status(status: object, now: float | None = None) -> RolloutState:
    """The rollout cursor from status.rollout. Never raises; ``status`` may be anything.

    * versions (from/to/failed) that do not match the CRD's version pattern are None. A
      from-version that is None means no rollback target: the operator holds on failure
      instead of provisioning a version nobody could have asked for;
    * startTime as `parse_iso` (None if unbelievable);
    * the flags count only as real JSON booleans: "false" or 1 is False;
    * retryToken and handBackToken: a string (a long one as its digest, see `stored_token`),
      else None.
    """
    r = _mapping(_mapping(status).get("rollout"))
    return RolloutState(
        from_version=_version(r.get("fromVersion")),
        to_version=_version(r.get("toVersion")),
        start=parse_iso(r.get("startTime"), now),
        rolling_back=_real_bool(r.get("rollingBack")),
        failed_version=_version(r.get("failedVersion")),
        retry_token=stored_token(r.get("retryToken")),
        finished=_real_bool(r.get("finished")),
        rollback_failed=_real_bool(r.get("rollbackFailed")),
        hand_back_token=stored_token(r.get("handBackToken")),
        step_index=_clamped_int(r.get("stepIndex"), MAX_STEP),
        pause_start=parse_iso(r.get("pauseStartTime"), now),
        promoted_full=_real_bool(r.get("promotedFull")),
        aborted=_real_bool(r.get("aborted")),
        promote_token=stored_token(r.get("promoteToken")),
        promote_full_token=stored_token(r.get("promoteFullToken")),
        abort_token=stored_token(r.get("abortToken")),
        provision_revision=_text(r.get("provisionRevision"), TOKEN_LIMIT),
        before_hook=_hook_run(_mapping(r.get("hooks")).get("beforeRollout"), now),
        after_hook=_hook_run(_mapping(r.get("hooks")).get("afterRollout"), now),
        to_revision=Revision.from_dict(r["toRevision"])
        if isinstance(r.get("toRevision"), Mapping)
        else None,
        maintenance=r.get("maintenance") if r.get("maintenance") in MAINTENANCE_LABELS else None,
    )


MAINTENANCE_LABELS = frozenset({"Restart", "ConfigRevision", "OSPatch"})
# A boot id is a UUID on Linux; whatever bootIdCommand prints is kept to this length.
BOOT_ID_LIMIT = 64


def revision_dict(r: Revision) -> dict[str, str | None]:
    return {c: getattr(r, c) or None for c in COMPONENTS}


def _kind(value: object) -> Kind:
    try:
        return Kind(value) if isinstance(value, str) else Kind.PROVISION
    except ValueError:
        return Kind.PROVISION


HOOK_PHASES = frozenset({"Running", "Succeeded", "Failed"})


def _text(value: object, limit: int) -> str | None:
    return cap_token(value, limit) if isinstance(value, str) and value else None


def _hook_dict(h: HookRun | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {
        "phase": h.phase,
        "message": cap(h.message, MESSAGE_LIMIT),
        "startTime": iso(h.start),
        "endTime": iso(h.end),
    }


def _hook_run(value: object, now: float | None) -> HookRun | None:
    """A hook's record from status; anything not shaped like one is None (the hook then counts
    as not run, and its on-host markers still keep a finished command from running twice)."""
    d = _mapping(value)
    phase = d.get("phase")
    if phase not in HOOK_PHASES:
        return None
    msg = d.get("message")
    return HookRun(
        phase=str(phase),
        message=cap(msg, MESSAGE_LIMIT) if isinstance(msg, str) else "",
        start=parse_iso(d.get("startTime"), now),
        end=parse_iso(d.get("endTime"), now),
    )


def _phase(value: object) -> Phase:
    if isinstance(value, str):
        try:
            return Phase(value)
        except ValueError:
            pass
    return Phase.UNKNOWN


def progress_from_status(status: object, now: float | None = None) -> dict[str, NodeProgress]:
    """Each node's resume cursor from status.nodes. Never raises; ``status`` may be anything.

    * ``nodes`` that is not a list is empty; a row that is not an object, or whose name is not
      a string matching the CRD's node-name pattern, is skipped (the node then starts from
      what is observed, as a new node would). Of rows with the same name the first counts;
    * a phase that is not a known Phase is Unknown (not in flight: nothing is resumed);
    * target and previousVersion that do not match the CRD's version pattern are None;
    * step is an integer clamped to [0, MAX_STEP] and attempts to [0, MAX_ATTEMPTS]: -1 would
      otherwise index the last provision command; anything else (a string, a boolean, NaN, a
      fraction) is 0, i.e. provisioning restarts at the first (idempotent) command;
    * times as `parse_iso`: None when not a believable RFC 3339 time (no deadline then);
    * the message is kept, capped to MESSAGE_LIMIT, only for in-flight and failed nodes.
    """
    out: dict[str, NodeProgress] = {}
    for row in _list(_mapping(status).get("nodes")):
        if not isinstance(row, Mapping):
            continue
        name = row.get("name")
        if not isinstance(name, str) or not NODE_NAME_RE.fullmatch(name) or name in out:
            continue
        phase = _phase(row.get("phase", "Unknown"))
        message = row.get("message")
        keep_message = (phase in IN_FLIGHT or phase == Phase.FAILED) and isinstance(message, str)
        out[name] = NodeProgress(
            phase=phase,
            target=_version(row.get("target")),
            previous_version=_version(row.get("previousVersion")),
            step=_clamped_int(row.get("step"), MAX_STEP),
            since=parse_iso(row.get("lastTransitionTime"), now),
            start=parse_iso(row.get("startTime"), now),
            message=cap(message, MESSAGE_LIMIT) if keep_message else "",
            attempts=_clamped_int(row.get("attempts"), MAX_ATTEMPTS),
            kind=_kind(row.get("maintenance")),
            revision=Revision.from_dict(row["targetRevision"])
            if isinstance(row.get("targetRevision"), Mapping)
            else None,
            boot_id=_text(row.get("bootId"), BOOT_ID_LIMIT),
        )
    return out


def history_entry(r: RolloutState, result: str, now: float, message: str = "") -> dict[str, Any]:
    """One status.history entry; versions and the message (often an error) are capped."""
    return {
        "fromVersion": cap_token(r.from_version or "", VERSION_LIMIT),
        "toVersion": cap_token(r.to_version or "", VERSION_LIMIT),
        "startTime": iso(r.start or now),
        "endTime": iso(now),
        "result": cap_token(result, NAME_LIMIT),
        "message": cap(message, MESSAGE_LIMIT),
        **_history_extras(r),
    }


def _history_extras(r: RolloutState) -> dict[str, Any]:
    """What a history row adds for provision.ansible and hooks, only when they were used."""
    out: dict[str, Any] = {}
    if r.maintenance:
        out["maintenance"] = r.maintenance
    if r.provision_revision:
        out["provisionRevision"] = cap_token(r.provision_revision, TOKEN_LIMIT)
    hooks = [
        f"{kind} {h.phase}"
        for kind, h in (("beforeRollout", r.before_hook), ("afterRollout", r.after_hook))
        if h is not None
    ]
    if hooks:
        out["hooks"] = ", ".join(hooks)
    return out


_HISTORY_TEXT = {
    "fromVersion": (cap_token, VERSION_LIMIT),
    "toVersion": (cap_token, VERSION_LIMIT),
    "result": (cap_token, NAME_LIMIT),
    "message": (cap, MESSAGE_LIMIT),
    "provisionRevision": (cap_token, TOKEN_LIMIT),
    "hooks": (cap_token, NAME_LIMIT * 2),
    "maintenance": (cap_token, NAME_LIMIT),
}


def _history_row(entry: object, now: float | None) -> dict[str, Any] | None:
    if not isinstance(entry, Mapping):
        return None
    row: dict[str, Any] = {}
    for key, (capper, limit) in _HISTORY_TEXT.items():
        value = entry.get(key)
        if isinstance(value, str):
            row[key] = capper(value, limit)
    for key in ("startTime", "endTime"):
        ts = iso(parse_iso(entry.get(key), now))
        if ts is not None:
            row[key] = ts
    attempts = entry.get("attempts")
    if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts > 1:
        row["attempts"] = min(attempts, MAX_ATTEMPTS)
    return row or None


def history_attempts(row: Mapping[str, Any]) -> int:
    """How often the rollout of a history row was tried; rows written before the count, or
    after one try, have no attempts field and count as 1."""
    n = row.get("attempts")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def history_from_status(status: object, now: float | None = None) -> list[dict[str, Any]]:
    """status.history, sanitised, for the reconciler to append to and write back.

    Never raises. Entries that are not objects are dropped; of the known fields only strings
    are kept (versions and result capped as tokens, the message to MESSAGE_LIMIT); times are
    kept, in the operator's own format, only if `parse_iso` believes them; unknown fields and
    entries left empty are dropped. At most the newest HISTORY_LIMIT entries, newest last.
    """
    rows = (_history_row(e, now) for e in _list(_mapping(status).get("history")))
    return [r for r in rows if r is not None][-HISTORY_LIMIT:]


_CONDITION_STATUSES = frozenset({"True", "False", "Unknown"})
_CONDITION_LIMIT = 16


def conditions_from_status(status: object, now: float | None = None) -> list[dict[str, Any]]:
    """status.conditions, sanitised; `summarize` only reads them for lastTransitionTime.

    Never raises. An entry counts only if it is an object with a string type and a status of
    "True", "False" or "Unknown"; the first entry of each type wins, at most 16. reason and
    type are capped as tokens, the message to MESSAGE_LIMIT; lastTransitionTime is kept only if
    `parse_iso` believes it, observedGeneration only if it is an integer (clamped to int64).
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for c in _list(_mapping(status).get("conditions")):
        if len(out) >= _CONDITION_LIMIT:
            break
        if not isinstance(c, Mapping):
            continue
        ctype, cstatus = c.get("type"), c.get("status")
        if not isinstance(ctype, str) or not ctype or not isinstance(cstatus, str):
            continue
        if cstatus not in _CONDITION_STATUSES:
            continue
        ctype = cap_token(ctype, NAME_LIMIT)
        if ctype in seen:
            continue
        seen.add(ctype)
        reason, message = c.get("reason"), c.get("message")
        row: dict[str, Any] = {
            "type": ctype,
            "status": cstatus,
            "reason": cap_token(reason, REASON_LIMIT) if isinstance(reason, str) else "",
            "message": cap(message, MESSAGE_LIMIT) if isinstance(message, str) else "",
        }
        ltt = iso(parse_iso(c.get("lastTransitionTime"), now))
        if ltt is not None:
            row["lastTransitionTime"] = ltt
        gen = c.get("observedGeneration")
        if isinstance(gen, int) and not isinstance(gen, bool):
            row["observedGeneration"] = _clamped_int(gen, MAX_GENERATION)
        out.append(row)
    return out


def append_history(
    history: Sequence[Mapping[str, Any]], entry: Mapping[str, Any], now: float | None = None
) -> list[dict[str, Any]]:
    """history + entry, newest last, at most HISTORY_LIMIT entries, every one sanitised as in
    `history_from_status` (``history`` may still be what was read from status unchecked).

    A retry (vmops.dev/retry) goes on with the same rollout: same from, to and start. Its end
    replaces the newest row of that rollout and counts the attempts there, so retrying a version
    many times keeps one row instead of pushing older rollouts out of the bounded history.
    """
    rows = history_from_status({"history": list(history)}, now)
    new = _history_row(entry, now)
    if new is None:
        return rows
    if rows and new.get("startTime") and all(rows[-1].get(k) == new.get(k) for k in _SAME_ROLLOUT):
        new["attempts"] = min(history_attempts(rows[-1]) + history_attempts(new), MAX_ATTEMPTS)
        rows[-1] = new
        return rows
    return [*rows, new][-HISTORY_LIMIT:]


# What identifies one rollout in status.history: a retry keeps all three.
_SAME_ROLLOUT = ("fromVersion", "toVersion", "startTime")

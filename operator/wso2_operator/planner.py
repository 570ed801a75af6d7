"""The rollout planner: pure decisions, no I/O.

Given the spec, what was observed (versions, health, per-LB server state) and the persisted
progress, it says which nodes to start, which in-flight nodes to retarget, and which LB states
to re-assert. Everything that could take a node out of rotation goes through `plan()`, so its
invariants (property-tested in tests/unit/test_planner_properties.py) are the operator's:

* never more than maxUnavailable nodes out of rotation, counting nodes that are already down,
  unhealthy, in MAINT/DRAIN, failed or in flight; nodes already out are updated first;
* a node leaves the in-flight set only after every LB confirmed it UP (see `node_step`), so the
  next node cannot start before that;
* nodes already at the target version are not touched;
* a spec change (new version, pause) never abandons a node out of rotation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from .model import (
    IN_FLIGHT,
    RETARGETABLE,
    ClusterSpec,
    NodeProgress,
    Phase,
    RolloutState,
)
from .observation import (  # noqa: F401 - re-exported: the planner's vocabulary
    DOWN,
    DRAIN,
    ERROR,
    MAINT,
    MISSING,
    NOLB,
    UNREACHABLE,
    UP,
    NodeObservation,
)
from .ownership import Reassert, audit_claims, held_by_someone_else


class Blocked(StrEnum):
    PAUSED = "Paused"
    HELD = "RolloutFailed"  # a version failed under Pause: wait for a spec change or a retry
    ROLLED_BACK = "RolledBack"
    LB_UNREACHABLE = "LoadBalancerUnreachable"
    BUDGET = "NodesUnavailable"  # other nodes are down and use up maxUnavailable
    UNKNOWN_VERSION = "VersionUnknown"
    LB_ERROR = "LoadBalancerError"  # an LB answers, but not as an admin socket for the backend
    HELD_OUT = "NodeHeldOut"  # a node someone else took out blocks the rest of the rollout
    CANARY = "StepPaused"  # a canary step (spec.update.steps) holds: see canary.py


@dataclass(frozen=True)
class Begin:
    node: str
    target: str
    phase: Phase  # DRAINING, or WAITING_HEALTHY to put back a node that is current but out
    previous_version: str | None


@dataclass(frozen=True)
class Retarget:
    node: str
    target: str


@dataclass(frozen=True)
class Plan:
    target: str
    rolling_back: bool = False
    begin: tuple[Begin, ...] = ()
    retarget: tuple[Retarget, ...] = ()
    reassert: tuple[Reassert, ...] = ()
    in_flight: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()
    blocked: Blocked | None = None
    blocked_message: str = ""
    complete: bool = False
    # Out of rotation by someone else's hand: left alone and reported (see ownership.py).
    held_out: tuple[str, ...] = ()
    # Failed nodes that status says are out but serve, with no slot to take them out.
    refused: tuple[str, ...] = ()


def effective_target(spec: ClusterSpec, rollout: RolloutState) -> tuple[str, bool, bool]:
    """(target version, rolling back?, held?) for this spec and rollout cursor."""
    failed_here = rollout.failed_version is not None and rollout.failed_version == spec.version
    if (
        failed_here
        and spec.failure_policy == "Rollback"
        and rollout.from_version
        and not rollout.rollback_failed
    ):
        return rollout.from_version, True, False
    return spec.version, False, failed_here


def plan(
    spec: ClusterSpec,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    rollout: RolloutState,
    owned: Collection[str] = (),
    hand_back: Collection[str] = (),
    room: int | None = None,
) -> Plan:
    """What to do next. ``owned``: nodes whose out-of-rotation claim this process proved or made
    (see ownership.py); ``hand_back``: nodes an admin handed back to the operator; ``room``:
    how many more nodes a canary step lets begin (None: no limit; see canary.py)."""
    target, rolling_back, held = effective_target(spec, rollout)
    names = spec.node_names
    prog = {n: progress.get(n, NodeProgress()) for n in names}
    obs = {n: observed.get(n, NodeObservation()) for n in names}
    audit = audit_claims(spec, observed, progress, owned)
    held_out = tuple(
        n for n in held_by_someone_else(spec, observed, progress) if n not in hand_back
    )
    # Sets for the membership tests below: tuples would make a 1,000-node plan quadratic.
    held_out_set, refused_set, hand_back = set(held_out), set(audit.refused), set(hand_back)

    in_flight = [n for n in names if prog[n].phase in IN_FLIGHT]
    unavailable = {
        n
        for n in names
        if prog[n].phase in IN_FLIGHT or prog[n].phase == Phase.FAILED or not obs[n].available
    }

    retarget = tuple(
        Retarget(n, target)
        for n in in_flight
        if prog[n].target != target
        and (prog[n].phase in RETARGETABLE or prog[n].phase == Phase.DRAINING)
    )
    base = {
        "target": target,
        "rolling_back": rolling_back,
        "retarget": retarget,
        "reassert": audit.reassert,
        "in_flight": tuple(in_flight),
        "unavailable": tuple(n for n in names if n in unavailable),
        "held_out": held_out,
        "refused": audit.refused,
    }

    complete = (
        not in_flight
        and all(prog[n].phase != Phase.FAILED for n in names)
        and all(obs[n].version == target and obs[n].available for n in names)
    )
    if complete:
        return Plan(**base, complete=True, blocked=Blocked.ROLLED_BACK if rolling_back else None)

    unreachable = sorted({lb for n in names for lb, s in obs[n].lb.items() if s == UNREACHABLE})
    lb_errors = sorted({lb for n in names for lb, s in obs[n].lb.items() if s == ERROR})
    if spec.paused:
        return Plan(**base, blocked=Blocked.PAUSED, blocked_message="spec.update.paused is true")
    if held:
        failed = [n for n in names if prog[n].phase == Phase.FAILED]
        return Plan(
            **base,
            blocked=Blocked.HELD,
            blocked_message=(
                f"version {spec.version} failed"
                + (f" on {', '.join(failed)}" if failed else "")
                + "; change spec.version or annotate vmops.dev/retry to try again"
            ),
        )
    if lb_errors:
        return Plan(
            **base,
            blocked=Blocked.LB_ERROR,
            blocked_message=(
                f"load balancer(s) {', '.join(lb_errors)} answer, but not as an admin socket "
                f"for backend {spec.backend}"
            ),
        )
    if unreachable and not spec.tolerate_unreachable:
        return Plan(
            **base,
            blocked=Blocked.LB_UNREACHABLE,
            blocked_message=f"load balancer(s) {', '.join(unreachable)} unreachable",
        )

    def wants_update(n: str) -> bool:
        if prog[n].phase in IN_FLIGHT or n in held_out_set or n in refused_set:
            return False
        if prog[n].phase == Phase.FAILED:
            return True
        return obs[n].version is not None and obs[n].version != target

    def wants_reenable(n: str) -> bool:
        # Current but out by an admin's hand, and the admin handed it back.
        return (
            n in hand_back
            and prog[n].phase not in IN_FLIGHT
            and prog[n].phase != Phase.FAILED
            and obs[n].version == target
            and obs[n].admin_out
        )

    order = list(reversed(names)) if rolling_back else list(names)
    # Nodes already out of rotation go first: updating them costs no extra availability.
    # (sorted() is stable, so within each group the order stays.)
    candidates = sorted(
        (n for n in order if wants_update(n) or wants_reenable(n)),
        key=lambda n: n not in unavailable,
    )
    begin: list[Begin] = []
    out = set(unavailable)
    flying = len(in_flight)
    for n in candidates:
        if flying >= spec.max_unavailable:
            break
        if room is not None and len(begin) >= room and not wants_reenable(n):
            break
        if n not in out and len(out) + 1 > spec.max_unavailable:
            break
        begin.append(
            Begin(
                node=n,
                target=target,
                phase=Phase.WAITING_HEALTHY if wants_reenable(n) else Phase.DRAINING,
                previous_version=obs[n].version,
            )
        )
        out.add(n)
        flying += 1

    blocked: Blocked | None = None
    message = ""
    started = {b.node for b in begin}
    waiting = [n for n in candidates if n not in started]
    if waiting and not in_flight and not begin and room == 0:
        blocked = Blocked.CANARY
        message = "a canary step holds"
    elif waiting and not in_flight and not begin:
        blocked = Blocked.BUDGET
        down = [n for n in names if n in unavailable]
        message = (
            f"{', '.join(down)} out of rotation or unhealthy, which uses maxUnavailable="
            f"{spec.max_unavailable}; waiting before touching {waiting[0]}"
        )
        if held_out:
            message += (
                f" ({', '.join(held_out)} taken out by someone else: hand back with the "
                "vmops.dev/hand-back annotation)"
            )
    elif not candidates and not in_flight:
        unknown = [n for n in names if obs[n].version is None]
        if held_out:
            blocked = Blocked.HELD_OUT
            message = (
                f"{', '.join(held_out)} taken out of rotation by someone else (MAINT/DRAIN not set "
                "by the operator): left alone; hand back with the vmops.dev/hand-back annotation"
            )
        elif unknown:
            blocked = Blocked.UNKNOWN_VERSION
            message = f"cannot read the version of {', '.join(unknown)}"
    return Plan(**base, begin=tuple(begin), blocked=blocked, blocked_message=message)


class StepKind(StrEnum):
    DRAIN = "Drain"
    PROVISION = "Provision"
    VERIFY = "Verify"
    WAIT_HEALTHY = "WaitHealthy"
    ENABLE = "Enable"
    SOAK = "Soak"
    FAIL = "Fail"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    index: int = 0  # provision command index
    reason: str = ""
    message: str = ""


def node_step(node: str, p: NodeProgress, spec: ClusterSpec, now: float) -> Step | None:
    """The next action for one in-flight node, or None when it is not in flight."""
    if p.phase not in IN_FLIGHT:
        return None
    if p.start is not None and now - p.start > spec.progress_deadline and p.phase != Phase.SOAKING:
        return Step(
            StepKind.FAIL,
            reason="ProgressDeadlineExceeded",
            message=(
                f"{node}: update took longer than progressDeadlineSeconds="
                f"{spec.progress_deadline:g} (in {p.phase})"
            ),
        )
    if p.phase == Phase.DRAINING:
        return Step(StepKind.DRAIN)
    if p.phase == Phase.PROVISIONING:
        if p.step >= spec.provision_step_count:
            return Step(StepKind.VERIFY)
        return Step(StepKind.PROVISION, index=p.step)
    if p.phase == Phase.VERIFYING:
        return Step(StepKind.VERIFY)
    if p.phase == Phase.WAITING_HEALTHY:
        return Step(StepKind.WAIT_HEALTHY)
    if p.phase == Phase.ENABLING:
        return Step(StepKind.ENABLE)
    return Step(StepKind.SOAK)


def step_deadline(p: NodeProgress, spec: ClusterSpec, now: float) -> float | None:
    """Seconds the node's next step may run before progressDeadlineSeconds (None: no limit).

    A soak is exempt, as between steps: a node that reached it is already back in rotation.
    """
    if p.start is None or p.phase == Phase.SOAKING:
        return None
    return max(0.0, p.start + spec.progress_deadline - now)


def display_phase(p: NodeProgress, o: NodeObservation, target: str) -> Phase:
    """The phase shown for a node that is not in flight."""
    if p.phase in IN_FLIGHT or p.phase == Phase.FAILED:
        return p.phase
    if o.version is None:
        return Phase.UNKNOWN
    return Phase.CURRENT if o.version == target else Phase.OUTDATED

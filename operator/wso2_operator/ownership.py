"""Who took a node out of rotation, and what status may claim about it: pure decisions, no I/O.

Status is the resume cursor, but it can lie: a backup restored, a hand edit, a second operator,
an HAProxy reload that put a drained node back. Before the planner trusts a claim that a node
is out of rotation (in flight or failed), it is checked against what the LBs show:

* A claim this process has *proved* (it began the node, finished its drain, or saw it out on
  every reachable LB during this phase) is re-asserted at once when an LB shows the node back
  in rotation: it already counts against maxUnavailable, and its sessions were drained before.
* An unproved claim on a node that serves must earn a slot in maxUnavailable like any new
  update, and it is never put straight into MAINT: an in-flight node goes back to Draining
  (the drain waits for its sessions), a failed one is only set to DRAIN. Without a slot the
  claim is dropped (in flight) or refused and reported (failed).

A node out of rotation (MAINT/DRAIN on an LB) that status does not claim was taken out by
someone else: an admin's maintenance. It is left alone and reported until handed back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from .model import IN_FLIGHT, ClusterSpec, NodeProgress, Phase
from .observation import DRAIN, ERROR, MAINT, MISSING, UNREACHABLE, NodeObservation

# LB states that say nothing about the node: the LB did not answer, or not usably.
UNKNOWN_STATES = frozenset({UNREACHABLE, MISSING, ERROR})

OUT_STATES = frozenset({MAINT, DRAIN})
# Phases in which the node must not take load-balanced traffic.
CLAIMS_OUT = frozenset({Phase.PROVISIONING, Phase.VERIFYING, Phase.WAITING_HEALTHY, Phase.FAILED})
# Phases in which a proved node must be in MAINT (its drain already finished).
CLAIMS_MAINT = frozenset({Phase.PROVISIONING, Phase.VERIFYING})


@dataclass(frozen=True)
class Reassert:
    node: str
    lbs: tuple[str, ...]  # LBs on which the node must be taken out again
    state: str = MAINT  # MAINT for a proved claim, DRAIN for an unproved one that earned a slot


@dataclass(frozen=True)
class Audit:
    reassert: tuple[Reassert, ...] = ()
    redrain: tuple[str, ...] = ()  # unproved in-flight claims on serving nodes: drain again
    discard: tuple[str, ...] = ()  # unproved in-flight claims without a budget slot: forget
    refused: tuple[str, ...] = ()  # unproved failed claims without a slot: report, leave serving


def serving_lbs(o: NodeObservation) -> tuple[str, ...]:
    """Reachable LBs on which the node is not out on purpose (UP, DOWN, NOLB...)."""
    return tuple(lb for lb, s in o.lb.items() if s not in OUT_STATES and s not in UNKNOWN_STATES)


def proved_out(o: NodeObservation) -> bool:
    """Out (MAINT/DRAIN) on every reachable LB, and at least one LB answered."""
    states = [s for s in o.lb.values() if s not in UNKNOWN_STATES]
    return bool(states) and all(s in OUT_STATES for s in states)


def held_by_someone_else(
    spec: ClusterSpec,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
) -> tuple[str, ...]:
    """Nodes in MAINT/DRAIN on some LB that status does not claim: an admin's maintenance."""
    out = []
    for n in spec.node_names:
        p = progress.get(n, NodeProgress())
        if p.phase in IN_FLIGHT or p.phase == Phase.FAILED:
            continue
        if observed.get(n, NodeObservation()).admin_out:
            out.append(n)
    return tuple(out)


def audit_claims(
    spec: ClusterSpec,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    owned: Collection[str],
) -> Audit:
    """Check every out-of-rotation claim in ``progress`` against the LBs (see module doc).

    ``owned``: nodes whose claim this process proved or made.
    """
    names = spec.node_names
    prog = {n: progress.get(n, NodeProgress()) for n in names}
    obs = {n: observed.get(n, NodeObservation()) for n in names}

    def unproved_serving(n: str) -> bool:
        p = prog[n]
        if n in owned or not serving_lbs(obs[n]):
            return False
        return p.phase in CLAIMS_OUT or p.phase == Phase.DRAINING

    # Everything that is out, or that this process may keep out, before any unproved claim.
    counted = {
        n
        for n in names
        if not obs[n].available
        or ((prog[n].phase in IN_FLIGHT or prog[n].phase == Phase.FAILED) and n in owned)
    }
    reassert: list[Reassert] = []
    redrain: list[str] = []
    discard: list[str] = []
    refused: list[str] = []
    for n in names:
        p, o = prog[n], obs[n]
        if not unproved_serving(n):
            if n in owned and p.phase in CLAIMS_OUT:
                allowed = {MAINT} if p.phase in CLAIMS_MAINT else OUT_STATES
                lbs = tuple(
                    lb for lb, s in o.lb.items() if s not in allowed and s not in UNKNOWN_STATES
                )
                if lbs:
                    reassert.append(Reassert(n, lbs, MAINT))
            continue
        # The claim must earn a slot, as a new update would.
        if len(counted | {n}) <= spec.max_unavailable:
            counted.add(n)
            if p.phase == Phase.FAILED:
                reassert.append(Reassert(n, serving_lbs(o), DRAIN))
            elif p.phase != Phase.DRAINING:
                redrain.append(n)
        elif p.phase == Phase.FAILED:
            refused.append(n)
        else:
            discard.append(n)
    return Audit(tuple(reassert), tuple(redrain), tuple(discard), tuple(refused))


def apply_audit(
    spec: ClusterSpec,
    observed: Mapping[str, NodeObservation],
    progress: Mapping[str, NodeProgress],
    audit: Audit,
    now: float,
) -> dict[str, NodeProgress]:
    """``progress`` with the audit's corrections: re-drained claims go back to Draining (their
    update keeps its start, so completed provision commands are not run again), discarded ones
    are forgotten. Each corrected node's message says why."""
    out = dict(progress)
    for n in audit.redrain:
        p = out[n]
        lbs = ", ".join(serving_lbs(observed.get(n, NodeObservation())))
        out[n] = p.to(
            Phase.DRAINING,
            now,
            f"{n}: status said {p.phase}, but the node serves on {lbs}; draining it again first",
            step=0,
        )
    for n in audit.discard:
        p = out[n]
        out[n] = NodeProgress(
            message=(
                f"{n}: status said {p.phase}, but the node serves and taking it out would exceed "
                f"maxUnavailable={spec.max_unavailable}; that progress is dropped"
            )
        )
    return out


__all__ = [
    "CLAIMS_OUT",
    "Audit",
    "Reassert",
    "apply_audit",
    "audit_claims",
    "held_by_someone_else",
    "proved_out",
    "serving_lbs",
]

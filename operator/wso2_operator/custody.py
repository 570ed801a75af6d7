"""Custody of nodes: which out-of-rotation states the operator holds, and reporting the rest.

The reconciler keeps one `Custody` per cluster. It remembers which claims this process proved
or made (ownership.py decides with that), applies the audit of status's claims to progress,
reports what the operator refuses to touch (an admin's MAINT, a claim without a budget slot, a
node removed from the spec while out) once per node as a warning Event, and reads the hand-back
annotation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from .kube import event
from .model import IN_FLIGHT, NODE_NAME_RE, ClusterSpec, NodeProgress, Phase
from .observation import DRAIN, ERROR, MAINT, UNREACHABLE, NodeObservation
from .ownership import apply_audit, audit_claims, proved_out
from .status import SetupProblem

# Names the nodes an admin took out by hand and now hands back to the operator; acted on once
# per distinct value (recorded in status.rollout.handBackToken).
HAND_BACK_ANNOTATION = "vmops.dev/hand-back"
DEPARTED_LIMIT = 32  # removed nodes watched until back in rotation; bounded like all of status


def departed_from_status(status: Mapping[str, Any]) -> list[str]:
    names = status.get("departedNodes")
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and NODE_NAME_RE.fullmatch(n)][:DEPARTED_LIMIT]


def hand_back_nodes(annotation: object, spec: ClusterSpec) -> frozenset[str]:
    """The spec's nodes named in a hand-back annotation (other words, e.g. a timestamp that makes
    the value new, are ignored)."""
    if not isinstance(annotation, str):
        return frozenset()
    return frozenset(w for w in annotation.replace(",", " ").split() if w in spec.node_names)


class Custody:
    def __init__(self, body: Mapping[str, Any], cluster: str, departed: list[str]) -> None:
        self.body = body
        self.cluster = cluster
        # Nodes whose out-of-rotation claim this process proved or made (see ownership.py).
        self.owned: set[str] = set()
        self.departed = departed
        self._reported: dict[str, set[str]] = {}  # Event reason -> nodes already reported
        self._problem: tuple[str, str] | None = None
        # Whether the last pause or resume was announced; from status at start, so a restarted
        # operator does not announce a pause it (or its predecessor) already showed.
        status = body.get("status") or {}
        self._paused = isinstance(status, Mapping) and status.get("phase") == "Paused"

    def audit(
        self,
        spec: ClusterSpec,
        observed: Mapping[str, NodeObservation],
        progress: Mapping[str, NodeProgress],
    ) -> dict[str, NodeProgress]:
        """Status's out-of-rotation claims checked against the LBs, before planning on them."""
        for n in spec.node_names:
            ph = progress.get(n, NodeProgress()).phase
            if ph not in IN_FLIGHT and ph != Phase.FAILED:
                self.owned.discard(n)
            elif proved_out(observed.get(n, NodeObservation())):
                self.owned.add(n)
        audit = audit_claims(spec, observed, progress, self.owned)
        out = apply_audit(spec, observed, progress, audit, time.time())
        for n in audit.redrain:
            event(self.body, "ClaimRedrained", out[n].message, warning=True)
        for n in audit.discard:
            event(self.body, "ClaimDiscarded", out[n].message, warning=True)
        self._report_once(
            "ClaimRefused",
            audit.refused,
            lambda n: (
                f"{n}: status says Failed, but the node serves and taking it out would exceed "
                f"maxUnavailable={spec.max_unavailable}; left in rotation"
            ),
        )
        # Every claim left in flight earned its slot in the audit. A failed node set to DRAIN
        # becomes ours only once the LBs show it out (above, next pass): until then the planner
        # audits it again and asks for DRAIN again, never for MAINT.
        now = time.time()
        for n in spec.node_names:
            p = out.get(n, NodeProgress())
            if p.phase in IN_FLIGHT:
                self.owned.add(n)
                if p.start is None:
                    # A claim without a start (edited away, or unreadable) would never meet
                    # progressDeadlineSeconds: its deadline counts from now.
                    out[n] = replace(p, start=now)
        return out

    def report_held(self, held_out: Iterable[str], observed: Mapping[str, NodeObservation]) -> None:
        def message(n: str) -> str:
            lbs = observed.get(n, NodeObservation()).lb
            out = ", ".join(f"{lb}={s}" for lb, s in lbs.items() if s in (MAINT, DRAIN))
            return (
                f"{n} is out of rotation ({out}) and the operator did not take it out: left alone "
                f"and not updated. Hand it back with: kubectl annotate w2c {self.cluster} "
                f"{HAND_BACK_ANNOTATION}='{n} <any new word>' --overwrite"
            )

        self._report_once("NodeHeldOut", held_out, message)

    def report_unknown_versions(self, observed: Mapping[str, NodeObservation]) -> None:
        """A node that answered with something that is not a version (or not in time)."""
        problems = {n: o.version_problem for n, o in observed.items() if o.version_problem}
        self._report_once(
            "VersionUnknown",
            problems,
            lambda n: f"{n}: version unknown ({problems[n]}); the node is not touched",
        )

    def report_blocked(self, reason: str | None, message: str) -> None:
        """An LB that cannot be told (unreachable, or answering garbage) holds the rollout: a
        warning Event when that starts, besides the condition."""
        self._report_once(str(reason), [reason] if reason else [], lambda _: message)

    def report_problem(self, problem: SetupProblem | None) -> None:
        """A problem that stops the cluster (Secret, SSH keys, an LB answering garbage): a
        warning Event when it appears or changes, besides the condition."""
        key = (problem.reason, problem.message) if problem is not None else None
        if problem is not None and key != self._problem:
            event(self.body, problem.reason, problem.message, warning=True)
        self._problem = key

    def report_paused(self, paused: bool, status: Mapping[str, Any], version: str) -> None:
        """One Event when spec.update.paused turns true (Paused) and one when it turns false
        again (Resumed), not one per pass."""
        if paused == self._paused:
            return
        self._paused = paused
        at = f"{status.get('updated', '?')} nodes at {version}"
        if paused:
            event(
                self.body,
                "Paused",
                f"spec.update.paused is true: no new node is started; a node in flight is "
                f"finished and put back first ({at})",
            )
        else:
            event(self.body, "Resumed", f"spec.update.paused is false: the rollout goes on ({at})")

    def _report_once(
        self, reason: str, nodes: Iterable[str], message: Callable[[str], str]
    ) -> None:
        """A warning Event per node when it enters a condition, not on every pass."""
        now = set(nodes)
        for n in sorted(now - self._reported.get(reason, set())):
            event(self.body, reason, message(n), warning=True)
        self._reported[reason] = now

    def note_departed(self, spec: ClusterSpec, progress: dict[str, NodeProgress]) -> None:
        """A node removed from the spec while status had it out stays out on the LBs: say so, and
        keep watching it until it is back in rotation or gone from the backend."""
        for n, p in list(progress.items()):
            if n in spec.node_names:
                continue
            del progress[n]
            self.owned.discard(n)
            if (p.phase in IN_FLIGHT or p.phase == Phase.FAILED) and n not in self.departed:
                self.departed.append(n)
                event(
                    self.body,
                    "NodeRemovedWhileOut",
                    f"{n} was removed from spec.nodes while {p.phase}: the operator no longer "
                    "touches it, and it stays out of rotation on the LBs until someone puts it "
                    "back (or removes it from the backend)",
                    warning=True,
                )
        self.departed[:] = [n for n in self.departed if n not in spec.node_names][:DEPARTED_LIMIT]

    def release_departed(self, lb_states: Mapping[str, Mapping[str, str]]) -> None:
        """Forget removed nodes that no LB holds out any more (or that no LB can tell about)."""
        out = (MAINT, DRAIN, UNREACHABLE, ERROR)
        self.departed[:] = [
            n for n in self.departed if any(s in out for s in lb_states.get(n, {}).values())
        ]


__all__ = [
    "HAND_BACK_ANNOTATION",
    "Custody",
    "departed_from_status",
    "hand_back_nodes",
]

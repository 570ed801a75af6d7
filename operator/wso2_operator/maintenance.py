"""Maintenance rollouts: a restart, a config revision or an OS patch that keeps the version.

The reconciler's mixin that starts such a rollout when spec.configRevision, spec.restartedAt or
spec.patchedAt changes (see revision.py for the tokens and planner.py for the nodes it moves) and
reports a node whose recorded revision changed by hand (drift); and the words its Events and
history use.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import metrics
from .kube import event
from .model import IN_FLIGHT, ClusterSpec, NodeProgress, Phase, RolloutState
from .observation import NodeObservation
from .revision import Kind, Revision, change_label
from .status import append_history, history_entry

if TYPE_CHECKING:
    from .reconciler import ClusterReconciler

_DONE = {
    "Restart": "all nodes restarted on {v}",
    "ConfigRevision": "all nodes run {v} with configRevision {c}",
    "OSPatch": "all nodes patched and rebooted, on {v}",
}


def describe(kind: Kind, target: str, previous: str | None = None) -> str:
    """A node update as an Event or node message says it."""
    if kind == Kind.RESTART:
        return f"restart on {target}"
    if kind == Kind.REBOOT:
        return f"OS patch and reboot on {target}"
    if previous is not None and previous == target:
        return f"provisioning {target} again"
    return f"updating {previous} -> {target}" if previous else f"update to {target}"


def maintenance_done(label: str | None, target: str, revision: Revision | None = None) -> str:
    """The history message of a rollout that succeeded."""
    if label is None:
        return f"all nodes run {target}"
    return _DONE[label].format(v=target, c=(revision.config if revision else "") or "-")


def next_rollout(r: RolloutState, **fields: Any) -> RolloutState:
    """A new rollout cursor; the steering tokens already acted on carry over, so an old
    annotation is not taken for a new request."""
    return RolloutState(
        retry_token=r.retry_token,
        promote_token=r.promote_token,
        promote_full_token=r.promote_full_token,
        abort_token=r.abort_token,
        **fields,
    )


class MaintenanceRollouts:
    """Mixin: see the module docstring."""

    def _left_alone(self: ClusterReconciler, n: str, p: NodeProgress) -> bool:
        """Not being acted on by the operator: a change seen on it was made by someone else."""
        return p.phase not in IN_FLIGHT and p.phase != Phase.FAILED and n not in self.tasks

    def _detect_revision_drift(
        self: ClusterReconciler, spec: ClusterSpec, previous: Mapping[str, NodeObservation]
    ) -> None:
        """A node's recorded configRevision (or restart/patch token) changed while the operator
        was not acting on it: someone changed the node by hand. The planner rolls it again."""
        for n in spec.node_names:
            p = self.progress.get(n, NodeProgress())
            before = previous.get(n, NodeObservation()).revision
            now_rev = self.observed.get(n, NodeObservation()).revision
            if not self._left_alone(n, p) or before is None or now_rev is None:
                continue
            stale = now_rev.stale(spec.revision)
            # Drift only from a node that had what the spec asks: not a request still pending.
            if now_rev == before or not stale or not before.covers(spec.revision):
                continue
            shown = ", ".join(f"{c} {getattr(now_rev, c) or '(none)'}" for c in stale)
            wanted = ", ".join(f"{c} {getattr(spec.revision, c)}" for c in stale)
            msg = (
                f"DriftDetected: {n} records {shown} (changed outside the operator); it will be "
                f"brought to {wanted}"
            )
            self.progress[n] = p.to(Phase.OUTDATED, time.time(), msg)
            event(self.body, "DriftDetected", msg, warning=True)

    def _start_maintenance(self: ClusterReconciler, spec: ClusterSpec, now: float) -> None:
        r = self.rollout
        label = change_label(r.to_revision, spec.revision)
        version_rollout_running = not r.finished and r.to_version is not None and not r.maintenance
        if label is None or version_rollout_running:
            # A token was cleared (nothing to do), or an upgrade under way carries the new
            # tokens along: its nodes are checked against them before it completes.
            self.rollout = replace(r, to_revision=spec.revision)
            return
        if not r.finished and r.to_version is not None:
            self.history = append_history(
                self.history,
                history_entry(r, "Superseded", now, f"{label} requested"),
            )
        self.rollout = next_rollout(
            r,
            from_version=spec.version,
            to_version=spec.version,
            to_revision=spec.revision,
            maintenance=label,
            start=now,
            hand_back_token=r.hand_back_token,
        )
        self.analysis.reset()
        metrics.rollout_started(self.namespace, self.name)
        event(self.body, "MaintenanceStarted", f"{label} of every node on {spec.version}")

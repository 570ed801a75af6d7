"""Maintenance rollouts: a restart, a config revision or an OS patch that keeps the version.

The reconciler's mixin that starts such a rollout when spec.configRevision, spec.restartedAt or
spec.patchedAt changes (see revision.py for the tokens and planner.py for the nodes it moves),
and the words its Events and history use.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from . import metrics
from .kube import event
from .model import ClusterSpec, RolloutState
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
        return f"provisioning {target} again (configRevision)"
    return f"updating {previous} -> {target}" if previous else f"update to {target}"


def maintenance_done(label: str | None, target: str, revision: Revision | None = None) -> str:
    """The history message of a rollout that succeeded."""
    if label is None:
        return f"all nodes run {target}"
    return _DONE[label].format(v=target, c=(revision.config if revision else "") or "-")


class MaintenanceRollouts:
    """Mixin: see the module docstring."""

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
        self.rollout = RolloutState(
            from_version=spec.version,
            to_version=spec.version,
            to_revision=spec.revision,
            maintenance=label,
            start=now,
            retry_token=r.retry_token,
            promote_token=r.promote_token,
            promote_full_token=r.promote_full_token,
            abort_token=r.abort_token,
            hand_back_token=r.hand_back_token,
        )
        self.analysis.reset()
        metrics.rollout_started(self.namespace, self.name)
        event(self.body, "MaintenanceStarted", f"{label} of every node on {spec.version}")

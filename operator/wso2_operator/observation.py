"""What one observation pass saw of a node: version, health and its state on every LB."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .revision import Revision

# Normalised per-LB server states (see adapters.normalize_lb_state).
UP, DOWN, DRAIN, MAINT, NOLB = "UP", "DOWN", "DRAIN", "MAINT", "NOLB"
UNREACHABLE, MISSING = "Unreachable", "Missing"
# The LB answered, but not as a usable admin socket for this backend (garbage, not level admin,
# no such backend). Unlike Unreachable it is never tolerated: it will not heal by waiting.
ERROR = "Error"


@dataclass(frozen=True)
class NodeObservation:
    version: str | None = None  # None: the version probe did not answer
    healthy: bool | None = None  # None: not checked
    lb: Mapping[str, str] = field(default_factory=dict)  # LB name -> normalised state
    # Why the version is None when the node did answer (output that is not a version).
    version_problem: str | None = None
    # The configRevision/restartedAt/patchedAt tokens the node recorded (revision.py); None when
    # not read (the spec asks for none) or unreadable.
    revision: Revision | None = None

    def reachable_lb_states(self) -> list[str]:
        return [s for s in self.lb.values() if s != UNREACHABLE]

    @property
    def in_rotation(self) -> bool:
        states = self.reachable_lb_states()
        return bool(states) and all(s == UP for s in states)

    @property
    def admin_out(self) -> bool:
        """Taken out on purpose (DRAIN/MAINT) on at least one LB."""
        return any(s in (DRAIN, MAINT) for s in self.lb.values())

    @property
    def available(self) -> bool:
        return self.in_rotation and self.healthy is not False

"""How often a quiet cluster re-reads its nodes' versions over SSH.

An idle pass observes every node's health (HTTP) and state on every LB, and each node's version
(and recorded revision) with an SSH command. Health and LB state are what keep a held node out
after an HAProxy reload and count nodes that went down, so they are read on every pass. A
version or revision changes only when someone changes the node by hand, which the operator then
reports as drift; on a quiet cluster both are re-read every `every`-th pass, so such a change is
seen at most that many passes later. At 50 idle clusters that halves the SSH commands and takes
a share of the operator's idle CPU off.

Any sign of change makes the pass read everything: a pass woken by an edit of the object, a
rollout or node task under way, a problem in the last pass, a new generation, a node that was
not healthy or whose version was not known. Pure: the reconciler says whether the pass is quiet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .observation import NodeObservation


@dataclass
class ProbeCadence:
    every: int = 2  # quiet passes per version read; 1 reads on every pass
    _skipped: int | None = None  # quiet passes since the last read; None: never read

    def reusable(
        self, *, quiet: bool, previous: Mapping[str, NodeObservation]
    ) -> dict[str, NodeObservation]:
        """The previous observations whose version and revision this pass may take over
        instead of asking the node; empty when this pass reads every node."""
        if not quiet or self._skipped is None or self._skipped + 1 >= self.every:
            self._skipped = 0
            return {}
        self._skipped += 1
        return {
            n: o
            for n, o in previous.items()
            if o.version is not None and o.version_problem is None and o.healthy is True
        }

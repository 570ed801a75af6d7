"""The canary step cursor: pure decisions, no I/O.

spec.update.steps is an ordered list of node counts and pauses (see model.CanaryStep; "step"
alone names a node's update steps in planner.py, hence "canary step" here). `advance` takes the
cursor kept in status.rollout and what is true now, moves past every step that is satisfied, and
says how many more nodes may begin toward the target (``room``) and whether a pause holds.
Its invariants are property-tested in tests/unit/test_canary_properties.py:

* at a node step for N nodes, ``room`` never lets more than N nodes run (or move to) the target;
* at a pause, ``room`` is 0; an untimed pause ends only by promotion, a timed one not before its
  end nor before the analysis passed (``analysis_ready``);
* the cursor only moves forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .model import CanaryStep


@dataclass(frozen=True)
class CanaryCursor:
    """Where the rollout is in spec.update.steps; kept in status.rollout."""

    index: int = 0
    pause_start: float | None = None
    promoted_full: bool = False


@dataclass(frozen=True)
class CanaryGate:
    cursor: CanaryCursor
    room: int | None  # more nodes that may begin toward the target now; None: no limit
    holding: bool = False  # a pause holds: nothing new begins
    pause_end: float | None = None
    message: str = ""
    passed: tuple[int, ...] = ()  # the steps this call moved past (for Events)
    promote_used: bool = False  # a promotion ended a pause or a node step
    pause_started: bool = False  # a pause began in this call (analysis counts restart)


def step_label(index: int, steps: Sequence[CanaryStep]) -> str:
    return f"step {index + 1}/{len(steps) + 1}"


def advance(
    steps: Sequence[CanaryStep],
    cursor: CanaryCursor,
    *,
    total: int,
    at_target: int,
    settled: int,
    now: float,
    promote: bool = False,
    analysis_ready: bool = True,
) -> CanaryGate:
    """Move the cursor past satisfied steps and say what the current one allows.

    ``at_target``: nodes that run the target version or are in flight toward it; ``settled``:
    those of them that finished (soaked, and passed analysis when it is on) and serve.
    ``promote``: a new vmops.dev/promote ends the current step (a pause, or a node step).
    ``analysis_ready``: the nodes at the target passed their windows since this pause began.
    """
    i = max(0, cursor.index)
    pause_start = cursor.pause_start
    passed: list[int] = []
    promote_left = promote
    started = False
    while i < len(steps):
        s = steps[i]
        if s.pause:
            if cursor.promoted_full or promote_left:
                promote_left = False
                passed.append(i)
                i, pause_start = i + 1, None
                continue
            if pause_start is None:
                pause_start, started = now, True
            end = pause_start + s.duration if s.duration is not None else None
            if end is not None and now >= end and analysis_ready:
                passed.append(i)
                i, pause_start = i + 1, None
                continue
            if end is None:
                msg = f"{step_label(i, steps)}: paused until promoted (annotate vmops.dev/promote)"
            elif now < end:
                msg = f"{step_label(i, steps)}: paused for {s.duration:g}s"
            else:
                msg = f"{step_label(i, steps)}: pause over; waiting for the analysis to pass"
            return CanaryGate(
                cursor=replace(cursor, index=i, pause_start=pause_start),
                room=0,
                holding=True,
                pause_end=end,
                message=msg,
                passed=tuple(passed),
                promote_used=promote and not promote_left,
                pause_started=started,
            )
        want = s.node_count(total)
        # A stored pause start belongs to a pause; never to a later one (steps can be edited).
        pause_start = None
        if settled >= want or promote_left:
            promote_left = False
            passed.append(i)
            i += 1
            continue
        return CanaryGate(
            cursor=replace(cursor, index=i, pause_start=None),
            room=max(0, want - at_target),
            message=(
                f"{step_label(i, steps)}: updating until {want} of {total} nodes run the new "
                "version"
            ),
            passed=tuple(passed),
            promote_used=promote and not promote_left,
        )
    return CanaryGate(
        cursor=replace(cursor, index=len(steps), pause_start=None),
        room=None,
        message=f"{step_label(len(steps), steps)}: updating every node" if steps else "",
        passed=tuple(passed),
        promote_used=promote and not promote_left,
    )

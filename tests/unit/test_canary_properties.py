"""Property and golden-sequence tests of the canary step cursor (canary.advance)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from wso2_operator.canary import CanaryCursor, CanaryGate, advance
from wso2_operator.model import CanaryStep, parse_canary_steps

# ----------------------------------------------------------------------------- strategies

NODE_STEPS = st.one_of(
    st.integers(1, 12).map(lambda n: CanaryStep(nodes=n)),
    st.integers(1, 100).map(lambda p: CanaryStep(nodes=f"{p}%")),
)
PAUSES = st.one_of(
    st.just(CanaryStep(pause=True)),
    st.floats(0, 600, allow_nan=False).map(lambda d: CanaryStep(pause=True, duration=d)),
)
STEPS = st.lists(st.one_of(NODE_STEPS, PAUSES), max_size=7)
TIMES = st.floats(0, 10_000, allow_nan=False)


@dataclass(frozen=True)
class World:
    steps: tuple[CanaryStep, ...]
    cursor: CanaryCursor
    total: int
    at_target: int
    settled: int
    now: float
    promote: bool
    analysis_ready: bool


@st.composite
def worlds(draw, *, consistent: bool = True) -> World:
    """A cursor as advance() leaves it: pause_start is set only while it stands at a pause
    (``consistent``); otherwise any pause_start with any index, as a tampered status gives."""
    steps = tuple(draw(STEPS))
    total = draw(st.integers(1, 10))
    at_target = draw(st.integers(0, total))
    settled = draw(st.integers(0, at_target))
    now = draw(TIMES)
    index = draw(st.integers(-2, len(steps) + 2))
    at_pause = 0 <= index < len(steps) and steps[index].pause
    pause_start = None
    if at_pause or not consistent:
        pause_start = draw(st.none() | st.floats(0, now, allow_nan=False))
    cursor = CanaryCursor(index=index, pause_start=pause_start, promoted_full=draw(st.booleans()))
    return World(
        steps=steps,
        cursor=cursor,
        total=total,
        at_target=at_target,
        settled=settled,
        now=now,
        promote=draw(st.booleans()),
        analysis_ready=draw(st.booleans()),
    )


def run(w: World) -> CanaryGate:
    return advance(
        w.steps,
        w.cursor,
        total=w.total,
        at_target=w.at_target,
        settled=w.settled,
        now=w.now,
        promote=w.promote,
        analysis_ready=w.analysis_ready,
    )


def start_index(w: World) -> int:
    return min(max(0, w.cursor.index), len(w.steps))


def own_merit(w: World, i: int) -> bool:
    """Whether step i is over without a promotion (promote-full counts for pauses)."""
    s = w.steps[i]
    if not s.pause:
        return w.settled >= s.node_count(w.total)
    if w.cursor.promoted_full:
        return True
    if s.duration is None:
        return False
    # The pause's clock starts when the cursor first stands on it.
    began = w.cursor.pause_start if i == start_index(w) else None
    began = w.now if began is None else began
    return w.now >= began + s.duration and w.analysis_ready


# ----------------------------------------------------------------------------- properties


@settings(max_examples=600)
@given(worlds())
def test_gate_of_the_current_step(w: World) -> None:
    g = run(w)
    i = g.cursor.index
    assert start_index(w) <= i <= len(w.steps)  # the cursor only moves forward
    assert g.passed == tuple(range(start_index(w), i))  # no step is skipped silently
    if i == len(w.steps):  # past the last step: every node may go
        assert g.room is None
        assert not g.holding
        assert g.cursor.pause_start is None
        return
    s = w.steps[i]
    if s.pause:
        assert g.room == 0
        assert g.holding
        assert g.cursor.pause_start is not None
        assert g.cursor.pause_start <= w.now
        want_end = None if s.duration is None else g.cursor.pause_start + s.duration
        assert g.pause_end == want_end
        assert "paused" in g.message or "pause over" in g.message
        # Started in this call exactly when the cursor did not already stand on it with a clock.
        assert g.pause_started == (i != start_index(w) or w.cursor.pause_start is None)
    else:
        want = s.node_count(w.total)
        assert 1 <= want <= w.total
        assert not g.holding
        assert g.room is not None and g.room >= 0
        if w.at_target <= want:
            assert w.at_target + g.room <= want  # never more than N nodes at the target
        assert g.room == max(0, want - w.at_target)
        assert w.settled < want  # a satisfied node step would have been passed
        assert g.cursor.pause_start is None
        assert not g.pause_started


@settings(max_examples=600)
@given(worlds())
def test_a_promotion_ends_at_most_one_step(w: World) -> None:
    """Every step passed is over on its own merit, except at most one ended by a promotion;
    an untimed pause never ends without promote or promote-full; a timed one never before its
    end nor while the analysis has not passed (unless promoted)."""
    g = run(w)
    promoted = [i for i in g.passed if not own_merit(w, i)]
    assert len(promoted) <= (1 if w.promote else 0)
    if promoted:
        assert g.promote_used
    if not w.promote:
        assert not g.promote_used
        for i in g.passed:
            s = w.steps[i]
            if s.pause and s.duration is None:
                assert w.cursor.promoted_full
            if s.pause and s.duration is not None and not w.cursor.promoted_full:
                assert w.analysis_ready
                began = w.cursor.pause_start if i == start_index(w) else None
                assert w.now >= (w.now if began is None else began) + s.duration


@settings(max_examples=400)
@given(worlds())
def test_promote_full_skips_pauses_but_not_node_steps(w: World) -> None:
    w = replace(w, cursor=CanaryCursor(w.cursor.index, None, True), promote=False)
    g = run(w)
    first_unsatisfied = next(
        (
            i
            for i in range(start_index(w), len(w.steps))
            if not w.steps[i].pause and w.settled < w.steps[i].node_count(w.total)
        ),
        len(w.steps),
    )
    assert g.cursor.index == first_unsatisfied
    assert not g.holding
    assert g.cursor.promoted_full


@settings(max_examples=300)
@given(
    steps=STEPS,
    total=st.integers(1, 8),
    script=st.lists(
        st.tuples(
            st.floats(0, 120, allow_nan=False),  # time to the next call
            st.integers(0, 3),  # nodes that begin or finish since the last call
            st.booleans(),  # promote
            st.booleans(),  # analysis ready
        ),
        max_size=40,
    ),
)
def test_a_simulated_rollout_respects_every_step(steps, total, script) -> None:
    """Feed advance() its own cursor over time while nodes move as room allows: the cursor
    never goes back, no node step lets more than N nodes move, and a pause without promotion
    lasts at least its duration from the call that began it."""
    cursor = CanaryCursor()
    now = 0.0
    at_target = settled = 0
    began: dict[int, float] = {}
    for dt, moves, promote, ready in script:
        now += dt
        g = advance(
            steps,
            cursor,
            total=total,
            at_target=at_target,
            settled=settled,
            now=now,
            promote=promote,
            analysis_ready=ready,
        )
        assert g.cursor.index >= cursor.index
        if g.pause_started:
            began[g.cursor.index] = now
        for i in g.passed:
            s = steps[i]
            if s.pause and not (promote and g.promote_used):
                assert s.duration is not None  # untimed: only a promotion ends it
                assert ready
                assert now >= began.get(i, now) + s.duration
        if g.room is not None and g.cursor.index < len(steps):
            want = steps[g.cursor.index].node_count(total)
            assert at_target + g.room <= max(want, at_target)
        # Nodes begin as the gate allows; in-flight ones finish.
        room = total - at_target if g.room is None else g.room
        begin = min(moves, room, total - at_target)
        settled = min(at_target, settled + moves)
        at_target += begin
        cursor = g.cursor


# ----------------------------------------------------------------------------- examples


def trace(steps, calls, total=3):
    """Run advance() over (now, at_target, settled, promote, ready) calls, feeding the cursor
    back; the sequence of (index, room, holding)."""
    cursor = CanaryCursor()
    out = []
    for now, at_target, settled, promote, ready in calls:
        g = advance(
            steps,
            cursor,
            total=total,
            at_target=at_target,
            settled=settled,
            now=now,
            promote=promote,
            analysis_ready=ready,
        )
        out.append((g.cursor.index, g.room, g.holding))
        cursor = g.cursor
    return out, cursor


def test_golden_one_node_then_timed_pause() -> None:
    steps = parse_canary_steps([{"nodes": 1}, {"pause": {"durationSeconds": 60}}])
    assert steps == (CanaryStep(nodes=1), CanaryStep(pause=True, duration=60.0))
    calls = [
        (0, 0, 0, False, True),  # start: one node may begin
        (5, 1, 0, False, True),  # node1 in flight: nothing more
        (20, 1, 0, False, True),
        (30, 1, 1, False, True),  # node1 settled: step 1 done, the pause begins at t=30
        (60, 1, 1, False, True),
        (89.9, 1, 1, False, True),  # not before 30 + 60
        (90, 1, 1, False, False),  # over, but the analysis has not passed
        (95, 1, 1, False, True),  # analysis passed: the last step, every node
        (100, 2, 1, False, True),
        (130, 3, 3, False, True),
    ]
    seq, cursor = trace(steps, calls)
    assert seq == [
        (0, 1, False),
        (0, 0, False),
        (0, 0, False),
        (1, 0, True),
        (1, 0, True),
        (1, 0, True),
        (1, 0, True),
        (2, None, False),
        (2, None, False),
        (2, None, False),
    ]
    assert cursor == CanaryCursor(index=2, pause_start=None)


def test_golden_pause_details() -> None:
    steps = parse_canary_steps([{"nodes": 1}, {"pause": {"durationSeconds": 60}}])
    g = advance(steps, CanaryCursor(), total=3, at_target=1, settled=1, now=30.0)
    assert (g.passed, g.pause_started, g.pause_end) == ((0,), True, 90.0)
    assert g.message == "step 2/3: paused for 60s"
    g2 = advance(steps, g.cursor, total=3, at_target=1, settled=1, now=45.0)
    assert (g2.passed, g2.pause_started, g2.pause_end) == ((), False, 90.0)
    g3 = advance(steps, g.cursor, total=3, at_target=1, settled=1, now=91.0, analysis_ready=False)
    assert g3.holding and "waiting for the analysis" in g3.message
    g4 = advance(steps, g.cursor, total=3, at_target=1, settled=1, now=91.0)
    assert (g4.passed, g4.room, g4.message) == ((1,), None, "step 3/3: updating every node")


def test_golden_untimed_pause_needs_a_promotion() -> None:
    steps = parse_canary_steps([{"nodes": "34%"}, {"pause": {}}, {"nodes": 2}])
    calls = [
        (0, 0, 0, False, True),  # 34% of 3 rounds up to 2 nodes
        (1, 2, 0, False, True),
        (2, 2, 2, False, True),  # settled: the untimed pause holds
        (10_000, 2, 2, False, True),  # still holds, however long
        (10_001, 2, 2, True, True),  # promoted: step 3 (2 nodes) is already met -> the end
        (10_002, 3, 2, False, True),
    ]
    seq, _ = trace(steps, calls)
    assert seq == [
        (0, 2, False),
        (0, 0, False),
        (1, 0, True),
        (1, 0, True),
        (3, None, False),
        (3, None, False),
    ]
    g = advance(steps, CanaryCursor(1, 2.0), total=3, at_target=2, settled=2, now=5.0)
    assert g.message == "step 2/4: paused until promoted (annotate vmops.dev/promote)"
    assert g.pause_end is None


def test_golden_promote_ends_a_node_step_and_promote_full_skips_pauses() -> None:
    steps = parse_canary_steps([{"nodes": 1}, {"pause": {}}, {"nodes": 2}, {"pause": {}}])
    g = advance(steps, CanaryCursor(), total=3, at_target=1, settled=0, now=0, promote=True)
    assert (g.cursor.index, g.room, g.holding, g.promote_used) == (1, 0, True, True)
    full = CanaryCursor(index=1, pause_start=0.0, promoted_full=True)
    g = advance(steps, full, total=3, at_target=1, settled=1, now=1)
    assert (g.cursor.index, g.room, g.holding) == (2, 1, False)  # the node step still counts
    g = advance(steps, g.cursor, total=3, at_target=2, settled=2, now=2)
    assert (g.cursor.index, g.room, g.holding, g.passed) == (4, None, False, (2, 3))


def test_no_steps_means_no_limit() -> None:
    g = advance((), CanaryCursor(), total=3, at_target=0, settled=0, now=0)
    assert (g.cursor.index, g.room, g.holding, g.message) == (0, None, False, "")


def test_a_pause_reached_in_this_call_starts_its_clock_now() -> None:
    """A cursor on a node step with a pause_start left from an earlier pause (steps edited
    while paused: [pause 60s] became [nodes 1, pause 60s]) must not let the 60 s pause end
    the moment it is reached."""
    steps = parse_canary_steps([{"nodes": 1}, {"pause": {"durationSeconds": 60}}])
    stale = CanaryCursor(index=0, pause_start=100.0)
    g = advance(steps, stale, total=3, at_target=1, settled=1, now=200.0)
    assert g.cursor.index == 1 and g.holding
    assert g.pause_end == 260.0


@settings(max_examples=300)
@given(worlds(consistent=False))
def test_any_cursor_is_safe_for_node_counts(w: World) -> None:
    """Whatever the stored cursor says, no node step lets more than N nodes move and past the
    last step the room is unlimited."""
    g = run(w)
    i = g.cursor.index
    assert min(max(0, w.cursor.index), len(w.steps)) <= i <= len(w.steps)
    if i == len(w.steps):
        assert g.room is None
    elif w.steps[i].pause:
        assert (g.room, g.holding) == (0, True)
    elif w.at_target <= (want := w.steps[i].node_count(w.total)):
        assert w.at_target + (g.room or 0) <= want

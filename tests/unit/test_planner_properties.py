"""Property tests of the pure planner: the operator's safety invariants."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wso2_operator.model import (
    IN_FLIGHT,
    ClusterSpec,
    NodeProgress,
    NodeSpec,
    Phase,
    RolloutState,
)
from wso2_operator.ownership import CLAIMS_OUT, apply_audit, audit_claims
from wso2_operator.planner import (
    DOWN,
    DRAIN,
    ERROR,
    MAINT,
    UNREACHABLE,
    UP,
    Blocked,
    NodeObservation,
    plan,
)

OLD, NEW = "1.0.0", "2.0.0"
LBS = ("lb1", "lb2")


def make_spec(n: int, max_unavailable: int, **kw) -> ClusterSpec:
    return ClusterSpec(
        version=NEW,
        nodes=tuple(NodeSpec(f"node{i + 1}", f"10.0.0.{i + 1}") for i in range(n)),
        ssh_user="root",
        secret_name="s",
        backend="PRD_wso2ei",
        provision_commands=("a", "b"),
        version_command="v",
        max_unavailable=max_unavailable,
        **kw,
    )


# Skewed towards healthy, idle nodes: that is where the budget decisions are interesting.
LB_STATES = st.sampled_from([UP] * 6 + [DOWN, DRAIN, MAINT])


@st.composite
def worlds(draw, lb_states=LB_STATES):
    n = draw(st.integers(1, 7))
    max_u = draw(st.integers(1, max(1, n - 1)))
    paused = draw(st.booleans())
    tolerate = draw(st.booleans())
    policy = draw(st.sampled_from(["Pause", "Rollback"]))
    spec = make_spec(n, max_u, paused=paused, tolerate_unreachable=tolerate, failure_policy=policy)
    observed = {}
    progress = {}
    for name in spec.node_names:
        lb = {lb_name: draw(lb_states) for lb_name in LBS}
        if draw(st.integers(0, 20)) == 0:
            lb["lb2"] = UNREACHABLE
        observed[name] = NodeObservation(
            version=draw(st.sampled_from([OLD, NEW, NEW, OLD, None])),
            healthy=draw(st.sampled_from([True, True, True, False, None])),
            lb=lb,
        )
        phase = draw(st.sampled_from([Phase.UNKNOWN, Phase.CURRENT, Phase.OUTDATED] * 4))
        if draw(st.integers(0, 5)) == 0:
            phase = draw(st.sampled_from(sorted(IN_FLIGHT)))
        if draw(st.integers(0, 10)) == 0:
            phase = Phase.FAILED
        progress[name] = NodeProgress(phase=phase, target=draw(st.sampled_from([OLD, NEW])))
    failed = draw(st.sampled_from([None, None, NEW, "9.9.9"]))
    rollout = RolloutState(from_version=OLD, to_version=NEW, failed_version=failed)
    return spec, observed, progress, rollout


@st.composite
def audited_worlds(draw, lb_states=LB_STATES):
    """A world as the reconciler plans on it: status claims checked against the LBs first.

    ``owned`` is what this process proved or made; the rest of status is unproved (restored,
    hand-edited, written by another operator)."""
    spec, observed, progress, rollout = draw(worlds(lb_states))
    owned = set(draw(st.sets(st.sampled_from(spec.node_names))))
    owned = {
        n for n in owned if progress[n].phase in IN_FLIGHT or progress[n].phase == Phase.FAILED
    }
    audit = audit_claims(spec, observed, progress, owned)
    corrected = apply_audit(spec, observed, progress, audit, 0.0)
    # As the reconciler does: what survived the audit is this process's claim from now on.
    owned_after = (
        owned
        | {n for n in spec.node_names if corrected[n].phase in IN_FLIGHT}
        | {r.node for r in audit.reassert}
    )
    hand_back = set(draw(st.sets(st.sampled_from(spec.node_names))))
    return spec, observed, progress, rollout, (owned, owned_after), audit, corrected, hand_back


def unavailable_before(spec, observed, progress):
    return {
        n
        for n in spec.node_names
        if progress[n].phase in IN_FLIGHT
        or progress[n].phase == Phase.FAILED
        or not observed[n].available
    }


@settings(max_examples=500, deadline=None)
@given(worlds())
def test_never_more_than_max_unavailable_out(world):
    spec, observed, progress, rollout = world
    assert_within_budget(spec, observed, progress, plan(spec, observed, progress, rollout))


def assert_within_budget(spec, observed, progress, p) -> None:
    before = unavailable_before(spec, observed, progress)
    after = before | {b.node for b in p.begin}
    # Starting a node that is still serving is only allowed within the budget...
    if any(b.node not in before for b in p.begin):
        assert len(after) <= spec.max_unavailable
    # ...and starting nodes that are already out never grows the out-of-rotation set.
    assert len(after) <= max(spec.max_unavailable, len(before))
    in_flight_after = {n for n in spec.node_names if progress[n].phase in IN_FLIGHT} | {
        b.node for b in p.begin
    }
    if p.begin:
        assert len(in_flight_after) <= spec.max_unavailable


@settings(max_examples=500, deadline=None)
@given(worlds())
def test_nodes_already_out_are_updated_first(world):
    spec, observed, progress, rollout = world
    p = plan(spec, observed, progress, rollout)
    before = unavailable_before(spec, observed, progress)
    begun = {b.node for b in p.begin}
    if begun - before:
        # A serving node was started: no already-out node that needs work was left waiting.
        for n in before - begun:
            needs = (progress[n].phase == Phase.FAILED and n not in p.refused) or (
                progress[n].phase not in IN_FLIGHT
                and n not in p.held_out
                and observed[n].version is not None
                and observed[n].version != p.target
            )
            assert not needs, (n, p)


@settings(max_examples=500, deadline=None)
@given(worlds())
def test_nodes_at_target_are_not_touched(world):
    spec, observed, progress, rollout = world
    p = plan(spec, observed, progress, rollout)
    for b in p.begin:
        o = observed[b.node]
        if o.version == p.target and progress[b.node].phase != Phase.FAILED:
            # A current node is never picked: an admin's MAINT is left alone until handed back.
            raise AssertionError(f"{b.node} is at {p.target} and was begun without a hand-back")
        assert progress[b.node].phase not in IN_FLIGHT


@settings(max_examples=500, deadline=None)
@given(worlds())
def test_pause_hold_and_unreachable_lb_start_nothing(world):
    spec, observed, progress, rollout = world
    p = plan(spec, observed, progress, rollout)
    if spec.paused:
        assert not p.begin
    if rollout.failed_version == spec.version and spec.failure_policy == "Pause":
        assert not p.begin
    unreachable = any(s == UNREACHABLE for o in observed.values() for s in o.lb.values())
    if unreachable and not spec.tolerate_unreachable:
        assert not p.begin


@settings(max_examples=500, deadline=None)
@given(worlds())
def test_no_in_flight_node_is_abandoned(world):
    spec, observed, progress, rollout = world
    p = plan(spec, observed, progress, rollout)
    in_flight = {n for n in spec.node_names if progress[n].phase in IN_FLIGHT}
    # Whatever the spec says now (pause, new version), every node in flight keeps being driven.
    assert set(p.in_flight) == in_flight
    for r in p.retarget:
        # A retarget only happens while the node is still out of rotation, before re-enable.
        assert progress[r.node].phase in {
            Phase.DRAINING,
            Phase.PROVISIONING,
            Phase.VERIFYING,
            Phase.WAITING_HEALTHY,
        }


@settings(max_examples=500, deadline=None)
@given(worlds())
def test_one_at_a_time_waits_for_every_lb_to_confirm(world):
    spec, observed, progress, rollout = world
    if spec.max_unavailable != 1:
        return
    p = plan(spec, observed, progress, rollout)
    unconfirmed = [n for n in spec.node_names if not observed[n].available]
    if unconfirmed and p.begin:
        # With maxUnavailable=1 the only node that may start is the one already out.
        assert {b.node for b in p.begin} <= set(unconfirmed) | {
            n for n in spec.node_names if progress[n].phase == Phase.FAILED
        }
        assert len(p.begin) == 1


@settings(max_examples=500, deadline=None)
@given(worlds(), st.data())
def test_proved_claims_are_reasserted_out_of_rotation(world, data):
    spec, observed, progress, rollout = world
    owned = data.draw(st.sets(st.sampled_from(spec.node_names)))
    p = plan(spec, observed, progress, rollout, owned)
    reasserted = {r.node: set(r.lbs) for r in p.reassert if r.state == MAINT}
    for n in owned:
        if progress[n].phase in (Phase.PROVISIONING, Phase.VERIFYING):
            wrong = {lb for lb, s in observed[n].lb.items() if s in (UP, DOWN, DRAIN)}
        elif progress[n].phase == Phase.FAILED:
            # A failed node left in DRAIN (onDrainTimeout: Fail) stays in DRAIN.
            wrong = {lb for lb, s in observed[n].lb.items() if s in (UP, DOWN)}
        else:
            continue
        assert wrong <= reasserted.get(n, set())


@settings(max_examples=1000, deadline=None)
@given(audited_worlds())
def test_never_more_than_max_unavailable_out_whatever_status_claims(world):
    """The budget holds when status lies: stale, restored or hand-edited claims, an admin's
    MAINT, LB reloads. Counts every node that is or will be out after this pass."""
    spec, observed, progress, rollout, (owned, owned_after), _audit, corrected, hand_back = world
    p = plan(spec, observed, corrected, rollout, owned_after, hand_back)
    before = {n for n in spec.node_names if not observed[n].available} | {
        n for n in owned if progress[n].phase in IN_FLIGHT or progress[n].phase == Phase.FAILED
    }
    # Claims that keep (or take) a node out; Enabling and Soaking put a node back in.
    kept = {
        n
        for n in spec.node_names
        if corrected[n].phase in CLAIMS_OUT | {Phase.DRAINING} and n not in p.refused
    }
    after = before | kept | {b.node for b in p.begin} | {r.node for r in p.reassert}
    if after - before:
        assert len(after) <= spec.max_unavailable, (after, before, p)
    assert len(after) <= max(spec.max_unavailable, len(before))


@settings(max_examples=500, deadline=None)
@given(audited_worlds())
def test_unproved_claims_are_never_put_straight_into_maint(world):
    _spec, _observed, progress, _rollout, (owned, _), audit, corrected, _hand_back = world
    for r in audit.reassert:
        if r.state == MAINT:
            assert r.node in owned
    for n in audit.redrain:
        assert corrected[n].phase == Phase.DRAINING  # its sessions are drained first
        assert corrected[n].start == progress[n].start  # completed commands are not run again


@settings(max_examples=500, deadline=None)
@given(audited_worlds())
def test_an_admins_maint_is_left_alone_until_handed_back(world):
    spec, observed, _progress, rollout, (_, owned), _audit, corrected, hand_back = world
    p = plan(spec, observed, corrected, rollout, owned, hand_back)
    for n in spec.node_names:
        unclaimed = corrected[n].phase not in IN_FLIGHT and corrected[n].phase != Phase.FAILED
        if unclaimed and observed[n].admin_out:
            begun = n in {b.node for b in p.begin}
            assert not begun or n in hand_back
            assert n in p.held_out or n in hand_back
            assert n not in {r.node for r in p.reassert}


@settings(max_examples=300, deadline=None)
@given(worlds(lb_states=st.sampled_from([UP] * 6 + [DOWN, DRAIN, MAINT, ERROR])))
def test_an_lb_answering_garbage_starts_nothing_even_when_tolerated(world):
    spec, observed, progress, rollout = world
    p = plan(spec, observed, progress, rollout)
    if any(s == ERROR for o in observed.values() for s in o.lb.values()):
        assert not p.begin
        assert p.complete or p.blocked is not None


def test_rollback_targets_previous_version_in_reverse_order():
    spec = make_spec(3, 1, failure_policy="Rollback")
    observed = {
        "node1": NodeObservation(NEW, True, {"lb1": UP, "lb2": UP}),
        "node2": NodeObservation(NEW, True, {"lb1": UP, "lb2": UP}),
        "node3": NodeObservation(NEW, False, {"lb1": MAINT, "lb2": MAINT}),
    }
    progress = {
        "node1": NodeProgress(Phase.CURRENT),
        "node2": NodeProgress(Phase.CURRENT),
        "node3": NodeProgress(Phase.FAILED, target=NEW),
    }
    rollout = RolloutState(from_version=OLD, to_version=NEW, failed_version=NEW)
    p = plan(spec, observed, progress, rollout)
    assert p.rolling_back and p.target == OLD
    assert [b.node for b in p.begin] == ["node3"]  # the failed node is already out: first
    progress["node3"] = NodeProgress(Phase.CURRENT)
    observed["node3"] = NodeObservation(OLD, True, {"lb1": UP, "lb2": UP})
    p = plan(spec, observed, progress, rollout)
    assert [b.node for b in p.begin] == ["node2"]  # then in reverse order


def test_budget_block_names_the_down_node():
    spec = make_spec(3, 1)
    observed = {
        "node1": NodeObservation(NEW, False, {"lb1": DOWN, "lb2": DOWN}),
        "node2": NodeObservation(OLD, True, {"lb1": UP, "lb2": UP}),
        "node3": NodeObservation(OLD, True, {"lb1": UP, "lb2": UP}),
    }
    progress = {n: NodeProgress() for n in observed}
    p = plan(spec, observed, progress, RolloutState())
    assert not p.begin
    assert p.blocked == Blocked.BUDGET
    assert "node1" in p.blocked_message


def test_complete_when_all_current_and_serving():
    spec = make_spec(2, 1)
    observed = {n: NodeObservation(NEW, True, {"lb1": UP, "lb2": UP}) for n in spec.node_names}
    p = plan(spec, observed, {}, RolloutState())
    assert p.complete and not p.begin and p.blocked is None

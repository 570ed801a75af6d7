"""Property tests of the pure maintenance parts: revisions (revision.py), the planner with mixed
maintenance kinds, the reboot's decisions (reboot.py) and their status round trip."""

from __future__ import annotations

import subprocess
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_planner_properties import (
    NEW,
    OLD,
    assert_within_budget,
    make_spec,
    worlds,
)
from wso2_operator.hooks import after_hook_due
from wso2_operator.model import (
    IN_FLIGHT,
    CanaryStep,
    ClusterSpec,
    HookSpec,
    NodeProgress,
    Phase,
    RolloutState,
)
from wso2_operator.observation import NodeObservation
from wso2_operator.planner import Plan, StepKind, effective_target, node_step, plan
from wso2_operator.progressive import AnalysisState, gate
from wso2_operator.reboot import Move, Probe, next_move, parse_probe
from wso2_operator.revision import (
    Kind,
    Revision,
    applied,
    change_label,
    kind_for,
    parse_read,
    read_command,
    record_command,
)
from wso2_operator.status import progress_from_status, rollout_dict, rollout_from_status

TOKENS = st.sampled_from(["", "a", "b", "2026-12-01T00:00:00Z"])
REVISIONS = st.builds(Revision, config=TOKENS, restart=TOKENS, patch=TOKENS)


@st.composite
def maintenance_worlds(draw):
    """A planner world whose nodes also differ in their recorded revision: some need an
    upgrade, some a config roll, a reboot or a restart, some nothing; some are unknown."""
    spec, observed, progress, rollout = draw(worlds())
    desired = draw(REVISIONS)
    spec = replace(spec, revision=desired)
    for n in spec.node_names:
        rev = draw(st.one_of(st.none(), REVISIONS, st.just(desired)))
        observed[n] = replace(observed[n], revision=rev)
        if progress[n].phase in IN_FLIGHT:
            progress[n] = replace(progress[n], kind=draw(st.sampled_from(list(Kind))))
    return spec, observed, progress, rollout


@settings(max_examples=500, deadline=None)
@given(maintenance_worlds())
def test_never_more_than_max_unavailable_out_with_mixed_maintenance(world):
    spec, observed, progress, rollout = world
    assert_within_budget(spec, observed, progress, plan(spec, observed, progress, rollout))


@settings(max_examples=500, deadline=None)
@given(maintenance_worlds())
def test_a_begun_node_gets_the_kind_it_needs_and_current_nodes_are_left_alone(world):
    spec, observed, progress, rollout = world
    p = plan(spec, observed, progress, rollout)
    target, _, _ = effective_target(spec, rollout)
    for b in p.begin:
        o = observed[b.node]
        if b.phase == Phase.WAITING_HEALTHY or progress[b.node].phase == Phase.FAILED:
            continue  # a hand-back re-enable, or a failed node tried again
        assert b.kind == kind_for(target, spec.revision, o.version, o.revision)
        assert b.kind is not None and b.revision == spec.revision
    if p.complete:
        for n in spec.node_names:
            assert (
                kind_for(target, spec.revision, observed[n].version, observed[n].revision) is None
            )


@settings(max_examples=300, deadline=None)
@given(REVISIONS, REVISIONS, st.sampled_from([OLD, NEW, None]))
def test_kind_for_and_applied_reach_the_desired_revision(desired, seen, version):
    """Applying what kind_for asks for, again and again, reaches the desired revision in at
    most three updates; an unknown version or revision never asks for anything but an upgrade
    (a known, different version)."""
    rev, v = seen, version
    for _ in range(3):
        kind = kind_for(NEW, desired, v, rev)
        if kind is None:
            break
        done = applied(kind, desired)
        rev = Revision(
            **{c: getattr(done, c) or getattr(rev, c) for c in ("config", "restart", "patch")}
        )
        v = NEW
    if version is None:
        assert kind_for(NEW, desired, None, seen) is None
    if version is not None:
        assert kind_for(NEW, desired, v, rev) is None
        assert rev.covers(desired)
    assert kind_for(NEW, desired, NEW, None) is None


def test_kinds_in_order_of_thoroughness():
    desired = Revision(config="c2", restart="r2", patch="p2")
    assert kind_for(NEW, desired, OLD, desired) == Kind.PROVISION
    assert kind_for(NEW, desired, NEW, Revision(restart="r2", patch="p2")) == Kind.PROVISION
    assert kind_for(NEW, desired, NEW, Revision(config="c2", restart="r2")) == Kind.REBOOT
    assert kind_for(NEW, desired, NEW, Revision(config="c2", patch="p2")) == Kind.RESTART
    assert kind_for(NEW, Revision(), NEW, Revision(config="x")) is None  # empty asks nothing
    assert applied(Kind.REBOOT, desired) == Revision(patch="p2", restart="r2")
    assert applied(Kind.RESTART, desired) == Revision(restart="r2")


@settings(max_examples=50, deadline=None)
@given(REVISIONS)
def test_record_then_read_round_trips_through_a_real_shell(tmp_path_factory, rev):
    home = tmp_path_factory.mktemp("home")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    subprocess.run(["sh", "-c", record_command(rev)], check=True, env=env)
    out = subprocess.run(["sh", "-c", read_command()], check=True, env=env, capture_output=True)
    assert parse_read(out.stdout.decode()) == rev


@given(st.text(max_size=200))
def test_parse_read_is_total(text):
    got = parse_read(text)
    assert got is None or isinstance(got, Revision)


def test_change_label_names_what_changed():
    assert change_label(None, Revision(restart="t")) == "Restart"
    assert change_label(Revision(restart="t"), Revision(restart="t", patch="p")) == "OSPatch"
    assert change_label(Revision(), Revision(config="c", restart="t")) == "ConfigRevision"
    assert change_label(Revision(config="c"), Revision()) is None  # a cleared token: no rollout


BOOT_IDS = st.sampled_from([None, "b1", "b2"])


@settings(max_examples=300, deadline=None)
@given(BOOT_IDS, BOOT_IDS, st.booleans(), st.floats(0, 20), st.floats(1, 10))
def test_reboot_is_asked_at_most_once_and_only_with_the_boot_id_recorded(
    before, seen, asked, elapsed, limit
):
    move = next_move(before, Probe(seen, asked), elapsed, limit)
    if move == Move.ASK:
        # Asked only on a node that answers with the recorded boot id, not asked before.
        assert before is not None and seen == before and not asked
    if move == Move.DONE:
        assert seen is not None and before is not None and seen != before
    if asked and seen == before:
        assert move in (Move.WAIT, Move.TIMEOUT)
    if before is None and seen is not None:
        assert move == Move.RECORD
    if seen is None:
        assert move in (Move.WAIT, Move.TIMEOUT)


def test_parse_probe():
    assert parse_probe("abc\nasked\n") == Probe("abc", True)
    assert parse_probe("abc\nnot-asked\n") == Probe("abc", False)
    assert parse_probe("\nnot-asked\n") == Probe(None)
    assert parse_probe("garbage") == Probe(None)


def test_reboot_steps_follow_the_patch_commands():
    spec = make_spec(3, 1)
    spec = replace(spec, maintenance=replace(spec.maintenance, patch_commands=("p1",)))
    p = NodeProgress(phase=Phase.PROVISIONING, target=NEW, kind=Kind.REBOOT, step=0)
    assert node_step("node1", p, spec, 0).kind == StepKind.PROVISION
    assert node_step("node1", replace(p, step=1), spec, 0).kind == StepKind.REBOOT
    assert node_step("node1", replace(p, phase=Phase.REBOOTING), spec, 0).kind == StepKind.REBOOT
    restart = NodeProgress(phase=Phase.PROVISIONING, target=NEW, kind=Kind.RESTART, step=2)
    assert node_step("node1", restart, spec, 0).kind == StepKind.VERIFY  # stop, start: done


def test_a_failed_maintenance_rollout_holds_whatever_the_policy():
    spec = replace(make_spec(3, 1), failure_policy="Rollback", version=NEW)
    r = RolloutState(from_version=NEW, to_version=NEW, failed_version=NEW, maintenance="Restart")
    assert effective_target(spec, r) == (NEW, False, True)


def test_status_round_trip_of_the_maintenance_fields():
    rev = Revision(config="c", restart="2026-12-01T00:00:00Z", patch="p")
    r = RolloutState(from_version=NEW, to_version=NEW, to_revision=rev, maintenance="OSPatch")
    assert rollout_from_status({"rollout": rollout_dict(r)}) == r
    row = {
        "name": "node1",
        "phase": "Rebooting",
        "maintenance": "Reboot",
        "targetRevision": rev.as_dict(),
        "bootId": "b1",
    }
    p = progress_from_status({"nodes": [row]})["node1"]
    assert (p.phase, p.kind, p.revision, p.boot_id) == (Phase.REBOOTING, Kind.REBOOT, rev, "b1")
    hostile = {**row, "maintenance": "Nuke", "targetRevision": {"config": "a b;rm -rf"}}
    p = progress_from_status({"nodes": [hostile]})["node1"]
    assert p.kind == Kind.PROVISION and p.revision == Revision()


def test_spec_parsing_defaults():
    spec = ClusterSpec.from_dict(
        {"version": NEW, "nodes": [], "restartedAt": "t1", "configRevision": "bad token!"}
    )
    assert spec.revision == Revision(restart="t1")
    assert spec.maintenance.restart_commands == ("wso2ctl stop", "wso2ctl start")
    assert spec.step_count(Kind.REBOOT) == 0


def test_canary_steps_count_nodes_on_the_new_revision():
    """A rolling restart under spec.update.steps [{nodes: 1}, {pause: {}}]: one node may begin;
    once it is restarted and serving the pause holds the other two."""
    steps = (CanaryStep(nodes=1), CanaryStep(pause=True))
    spec = replace(make_spec(3, 1), canary_steps=steps, revision=Revision(restart="t2"))
    r = RolloutState(from_version=NEW, to_version=NEW, to_revision=spec.revision)
    up = {"lb1": "UP", "lb2": "UP"}
    old = NodeObservation(version=NEW, healthy=True, lb=up, revision=Revision(restart="t1"))
    observed = {n: old for n in spec.node_names}
    first = gate(spec, r, observed, {}, AnalysisState(), NEW, 0.0, False)
    assert first.room == 1 and not first.holding
    observed["node1"] = replace(old, revision=Revision(restart="t2"))
    second = gate(spec, r, observed, {}, AnalysisState(), NEW, 0.0, False)
    assert second.holding and second.room == 0
    p = plan(spec, observed, {}, r, room=second.room)
    assert not p.begin and not p.complete


def test_after_rollout_hook_runs_after_a_maintenance_rollout():
    spec = replace(make_spec(3, 1), after_rollout=HookSpec(host="node1", commands=("true",)))
    done = Plan(target=NEW, complete=True)
    upgrade_of_nothing = RolloutState(from_version=NEW, to_version=NEW)
    assert not after_hook_due(spec, upgrade_of_nothing, done)
    restart = replace(upgrade_of_nothing, maintenance="Restart")
    assert after_hook_due(spec, restart, done)

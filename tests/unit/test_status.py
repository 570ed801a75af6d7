"""The pure status writer: conditions, phase and counts from spec, observation and plan.

These are what `kubectl wait --for=condition=Ready`, ArgoCD's health check and the printer
columns read, so each case pins a condition's status and reason, not just "something is there".
"""

from __future__ import annotations

from hypothesis import given, settings

from tests.unit.test_planner_properties import LBS, NEW, OLD, make_spec, worlds
from wso2_operator.__main__ import peering_scope
from wso2_operator.model import NodeProgress, Phase, RolloutState
from wso2_operator.planner import MAINT, UP, NodeObservation, plan
from wso2_operator.status import (
    SetupProblem,
    progress_from_status,
    rollout_from_status,
    summarize,
)

NOW = 1_800_000_000.0


def status_of(spec, observed, progress, rollout=None, problem=None, previous=()):
    rollout = rollout or RolloutState(from_version=OLD, to_version=spec.version, start=NOW - 60)
    p = plan(spec, observed, progress, rollout)
    return summarize(
        spec=spec,
        generation=3,
        observed=observed,
        progress=progress,
        rollout=rollout,
        plan=p,
        previous_conditions=list(previous),
        problem=problem,
        now=NOW,
    )


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def serving(version):
    return NodeObservation(version=version, healthy=True, lb={lb: UP for lb in LBS})


def test_all_current_is_ready():
    spec = make_spec(3, 1)
    observed = {n: serving(NEW) for n in spec.node_names}
    progress = {n: NodeProgress(phase=Phase.CURRENT, target=NEW) for n in spec.node_names}
    st = status_of(spec, observed, progress)
    assert conds(st) == {
        "Ready": ("True", "AllNodesReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert st["phase"] == "Ready"
    assert (st["updated"], st["ready"], st["currentVersion"]) == ("3/3", "3/3", NEW)
    assert all(c["observedGeneration"] == 3 for c in st["conditions"])
    assert st["observedGeneration"] == 3


def test_node_in_flight_is_progressing_and_not_ready():
    spec = make_spec(3, 1)
    observed = {n: serving(OLD) for n in spec.node_names}
    observed["node1"] = NodeObservation(version=OLD, healthy=True, lb={lb: MAINT for lb in LBS})
    progress = {n: NodeProgress(phase=Phase.OUTDATED, target=NEW) for n in spec.node_names}
    progress["node1"] = NodeProgress(phase=Phase.PROVISIONING, target=NEW, message="x")
    st = status_of(spec, observed, progress)
    c = conds(st)
    assert c["Ready"] == ("False", "RolloutInProgress")
    assert c["Progressing"] == ("True", "NodeUpdating")
    assert c["Degraded"][0] == "False"
    assert st["phase"] == "Progressing"
    assert "node1 Provisioning" in next(
        x["message"] for x in st["conditions"] if x["type"] == "Progressing"
    )
    assert (st["updated"], st["ready"], st["currentVersion"]) == ("0/3", "2/3", OLD)


def test_failed_node_is_degraded_with_the_reason_from_its_message():
    spec = make_spec(3, 1)
    observed = {n: serving(OLD) for n in spec.node_names}
    observed["node2"] = NodeObservation(version=NEW, healthy=False, lb={lb: MAINT for lb in LBS})
    progress = {n: NodeProgress(phase=Phase.OUTDATED, target=NEW) for n in spec.node_names}
    progress["node2"] = NodeProgress(
        phase=Phase.FAILED, target=NEW, message="HealthCheckFailed: node2: not healthy within 5s"
    )
    rollout = RolloutState(from_version=OLD, to_version=NEW, failed_version=NEW)
    st = status_of(spec, observed, progress, rollout)
    c = conds(st)
    assert c["Degraded"] == ("True", "HealthCheckFailed")
    assert c["Ready"] == ("False", "HealthCheckFailed")
    assert st["phase"] == "Degraded"
    row = next(r for r in st["nodes"] if r["name"] == "node2")
    assert row["phase"] == "Failed" and "node2" in row["message"]


def test_setup_problem_names_itself_in_every_condition_that_matters():
    spec = make_spec(2, 1)
    problem = SetupProblem("SecretNotFound", "Secret ns/s (spec.ssh.secretRef) not found")
    st = status_of(spec, {}, {}, problem=problem)
    c = conds(st)
    assert c["Ready"] == ("False", "SecretNotFound")
    assert c["Degraded"] == ("True", "SecretNotFound")
    assert st["phase"] == "Degraded"


def test_paused_is_shown_as_paused():
    spec = make_spec(3, 1, paused=True)
    observed = {n: serving(OLD) for n in spec.node_names}
    progress = {n: NodeProgress(phase=Phase.OUTDATED, target=NEW) for n in spec.node_names}
    st = status_of(spec, observed, progress)
    assert conds(st)["Ready"] == ("False", "Paused")
    assert st["phase"] == "Paused"


def test_transition_time_is_kept_while_a_condition_does_not_change():
    spec = make_spec(2, 1)
    observed = {n: serving(NEW) for n in spec.node_names}
    progress = {n: NodeProgress(phase=Phase.CURRENT, target=NEW) for n in spec.node_names}
    first = status_of(spec, observed, progress)
    earlier = [{**c, "lastTransitionTime": "2020-01-01T00:00:00Z"} for c in first["conditions"]]
    again = status_of(spec, observed, progress, previous=earlier)
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {"2020-01-01T00:00:00Z"}


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_status_is_consistent_and_round_trips(world):
    """Whatever the world: exactly one of each condition, Ready=True only when nothing is
    degraded or moving, and what status stores reads back to the same progress and rollout."""
    spec, observed, progress, rollout = world
    st = status_of(spec, observed, progress, rollout)
    c = conds(st)
    assert sorted(c) == ["Degraded", "Progressing", "Ready"]
    if c["Ready"][0] == "True":
        assert c["Degraded"][0] == "False" and c["Progressing"][0] == "False"
        assert st["phase"] in ("Ready", "Paused")
    if c["Degraded"][0] == "True":
        assert c["Ready"][0] == "False"
    assert [r["name"] for r in st["nodes"]] == list(spec.node_names)
    assert rollout_from_status(st) == rollout
    back = progress_from_status(st)
    for n in spec.node_names:
        assert back[n].phase == st["nodes"][spec.node_names.index(n)]["phase"]


def test_peering_scope_follows_kopfs_namespace_flags():
    assert peering_scope(["-A", "--peering=x"]) == "cluster"
    assert peering_scope(["--all-namespaces"]) == "cluster"
    assert peering_scope(["--standalone"]) == "cluster"  # kopf's default is cluster-wide too
    assert peering_scope(["-n", "a", "--namespace=b", "--verbose"]) == "a,b"

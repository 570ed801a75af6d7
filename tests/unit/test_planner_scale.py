"""The planner on big clusters: batches of maxUnavailable, and work that grows linearly.

Complexity is asserted by counting operations, not by timing: node names count every equality
test and hash taken of them (the planner's work is comparing and looking up names; a list
``index`` or a membership test on a tuple inside a loop shows up as n² comparisons).
bench/planner_scale.py has the wall times.
"""

from __future__ import annotations

from wso2_operator.model import ClusterSpec, NodeProgress, NodeSpec, Phase, RolloutState
from wso2_operator.planner import DRAIN, MAINT, UP, NodeObservation, plan

OLD, NEW = "1.0.0", "2.0.0"


class CountingName(str):
    ops = 0

    def __eq__(self, other: object) -> bool:
        CountingName.ops += 1
        return str.__eq__(self, other)

    def __hash__(self) -> int:
        CountingName.ops += 1
        return str.__hash__(self)


def world(
    n: int, percent: int, *, out_every: int = 0, name: type[str] = CountingName
) -> tuple[ClusterSpec, dict[str, NodeObservation], dict[str, NodeProgress]]:
    """n nodes at OLD; maxUnavailable ``percent`` % of n; every ``out_every``-th node held in
    MAINT by an admin and every (out_every+1)-th in flight, so that every branch that walks
    the node list has something to find. ``name=str`` for timing (no counting)."""
    names = [name(f"node{i:04d}") for i in range(n)]
    spec = ClusterSpec(
        version=NEW,
        nodes=tuple(NodeSpec(name, f"10.{i // 250}.{i % 250}.1") for i, name in enumerate(names)),
        ssh_user="root",
        secret_name="s",
        backend="PRD_wso2ei",
        provision_commands=("a", "b"),
        version_command="v",
        max_unavailable=max(1, n * percent // 100),
    )
    observed: dict[str, NodeObservation] = {}
    progress: dict[str, NodeProgress] = {}
    for i, name in enumerate(names):
        lb = {"lb1": UP, "lb2": UP}
        phase = Phase.OUTDATED
        if out_every and i % out_every == 0:
            lb = {"lb1": MAINT, "lb2": DRAIN}
        elif out_every and i % (out_every + 1) == 0:
            phase = Phase.PROVISIONING
        observed[name] = NodeObservation(version=OLD, healthy=True, lb=lb)
        progress[name] = NodeProgress(phase=phase, target=NEW)
    return spec, observed, progress


def name_ops(n: int, percent: int, out_every: int = 0) -> int:
    spec, observed, progress = world(n, percent, out_every=out_every)
    CountingName.ops = 0
    plan(spec, observed, progress, RolloutState(from_version=OLD, to_version=NEW))
    return CountingName.ops


def test_forty_nodes_at_25_percent_start_in_batches_of_ten() -> None:
    spec, observed, progress = world(40, 25)
    rollout = RolloutState(from_version=OLD, to_version=NEW)
    first = plan(spec, observed, progress, rollout)
    assert [b.node for b in first.begin] == list(spec.node_names[:10])
    # While that batch is in flight, nothing else begins: the budget is used up.
    for b in first.begin:
        progress[b.node] = NodeProgress(phase=Phase.DRAINING, target=NEW)
    assert plan(spec, observed, progress, rollout).begin == ()
    # Once it is back (current, UP everywhere), the next ten.
    for b in first.begin:
        progress[b.node] = NodeProgress(phase=Phase.CURRENT, target=NEW)
        observed[b.node] = NodeObservation(version=NEW, healthy=True, lb={"lb1": UP, "lb2": UP})
    second = plan(spec, observed, progress, rollout)
    assert [b.node for b in second.begin] == list(spec.node_names[10:20])


def test_planner_work_grows_linearly_with_the_cluster() -> None:
    for out_every in (0, 7):
        small, big = name_ops(100, 25, out_every), name_ops(1000, 25, out_every)
        # Linear is 10x; n log n (a sort) about 15x; anything quadratic is 100x.
        assert big <= 15 * small, (out_every, small, big)

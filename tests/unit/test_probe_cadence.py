"""A quiet cluster re-reads versions every `every`-th pass, and any sign of change reads them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wso2_operator.observation import UP, NodeObservation
from wso2_operator.probe_cadence import ProbeCadence

HEALTHY = NodeObservation(version="1.0.0", healthy=True, lb={"lb1": UP})
PREVIOUS = {
    "node1": HEALTHY,
    "node2": NodeObservation(version="1.0.0", healthy=False, lb={"lb1": UP}),
    "node3": NodeObservation(version=None, healthy=True, lb={"lb1": UP}),
    "node4": NodeObservation(version=None, healthy=True, version_problem="VersionUnparsable"),
    "node5": NodeObservation(version="1.0.0", healthy=None),
}


def test_only_healthy_nodes_with_a_known_version_are_reused() -> None:
    c = ProbeCadence(every=2)
    assert c.reusable(quiet=True, previous=PREVIOUS) == {}  # nothing read yet: read
    assert c.reusable(quiet=True, previous=PREVIOUS) == {"node1": HEALTHY}
    # The next quiet pass reads every node again.
    assert c.reusable(quiet=True, previous=PREVIOUS) == {}
    assert c.reusable(quiet=True, previous=PREVIOUS) == {"node1": HEALTHY}


def test_a_pass_that_is_not_quiet_reads_everything_and_restarts_the_count() -> None:
    c = ProbeCadence(every=3)
    assert c.reusable(quiet=False, previous=PREVIOUS) == {}
    assert c.reusable(quiet=True, previous=PREVIOUS) == {"node1": HEALTHY}
    assert c.reusable(quiet=False, previous=PREVIOUS) == {}  # e.g. the object was edited
    assert c.reusable(quiet=True, previous=PREVIOUS) == {"node1": HEALTHY}
    assert c.reusable(quiet=True, previous=PREVIOUS) == {"node1": HEALTHY}
    assert c.reusable(quiet=True, previous=PREVIOUS) == {}


def test_every_one_reads_on_every_pass() -> None:
    c = ProbeCadence(every=1)
    assert all(c.reusable(quiet=True, previous=PREVIOUS) == {} for _ in range(5))


@given(every=st.integers(min_value=1, max_value=6), quiet=st.lists(st.booleans(), max_size=60))
def test_versions_are_never_older_than_every_passes(every: int, quiet: list[bool]) -> None:
    c = ProbeCadence(every=every)
    since_read = 0  # passes since the versions were last read
    reads = 0
    for q in quiet:
        reused = c.reusable(quiet=q, previous={"n": HEALTHY})
        if not q:
            assert reused == {}  # any sign of change: read
        if reused:
            since_read += 1
            assert since_read < every
        else:
            since_read = 0
            reads += 1
    if all(quiet):
        # A quiet cluster reads once every `every` passes, no more (the point of it).
        assert reads == -(-len(quiet) // every)

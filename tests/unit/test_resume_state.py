"""What the reconciler takes from an object when it starts or resumes: pure state, no I/O.

The kube adapter is never called here (loading state is pure); it stands in as a placeholder.
"""

from __future__ import annotations

from typing import Any

from wso2_operator.reconciler import HAND_BACK_ANNOTATION, RETRY_ANNOTATION, ClusterReconciler
from wso2_operator.status_writer import StatusWriter

SPEC = {
    "version": "2.0.0",
    "nodes": [{"name": "node1", "host": "10.0.0.1"}],
    "ssh": {"user": "root", "secretRef": {"name": "s"}},
    "loadBalancers": {"backend": "b", "hosts": [{"name": "lb1", "address": "10.0.0.9:9999"}]},
    "provision": {"commands": ["x"], "versionCommand": "v"},
}


def reconciler(status: dict[str, Any], annotations: dict[str, str]) -> ClusterReconciler:
    body = {
        "metadata": {"name": "c", "namespace": "n", "annotations": annotations,
                     "resourceVersion": "7", "generation": 1},
        "spec": SPEC,
        "status": status,
    }  # fmt: skip
    return ClusterReconciler(namespace="n", name="c", body=body, kube=object())  # type: ignore[arg-type]


def test_a_wiped_status_does_not_turn_an_old_retry_into_a_new_one():
    r = reconciler({}, {RETRY_ANNOTATION: "1700000000", HAND_BACK_ANNOTATION: "node1 1"})
    assert r.rollout.retry_token == "1700000000"
    assert r.retry_token() == r.rollout.retry_token  # seen as already acted on
    assert r.hand_back(r.spec()) == frozenset()


def test_a_recorded_rollout_keeps_new_requests_new():
    status = {"rollout": {"toVersion": "2.0.0", "failedVersion": "2.0.0", "retryToken": "1"}}
    r = reconciler(status, {RETRY_ANNOTATION: "2", HAND_BACK_ANNOTATION: "node1 2"})
    assert r.rollout.retry_token == "1" and r.retry_token() == "2"
    assert r.hand_back(r.spec()) == frozenset({"node1"})


def test_hand_back_names_only_nodes_of_the_spec():
    r = reconciler({"rollout": {"toVersion": "2.0.0"}}, {HAND_BACK_ANNOTATION: "node1,nodeX 3"})
    assert r.hand_back(r.spec()) == frozenset({"node1"})


def test_departed_nodes_are_read_back_bounded_and_valid():
    status = {"rollout": {"toVersion": "2.0.0"}, "departedNodes": ["node9", "", 5, "bad name"]}
    assert reconciler(status, {}).custody.departed == ["node9"]
    many = {"rollout": {}, "departedNodes": [f"n{i}" for i in range(500)]}
    assert len(reconciler(many, {}).custody.departed) == 32


def test_the_writer_starts_from_the_objects_resource_version_and_heartbeat():
    status = {"writer": "other/1/abc#41", "lastObservedTime": "2026-11-30T10:00:00Z"}
    r = reconciler(status, {})
    assert isinstance(r.writer, StatusWriter)
    assert r.writer.resource_version == "7"
    assert r.writer.known == "other/1/abc#41"
    assert r.writer.other is None  # another writer's old status is resumed, not feared
    # What a conflict would find: the same stamp (only metadata changed), a wiped status, our
    # own stamp, or a stamp of another identity written since.
    assert not r.writer._foreign("other/1/abc#41")
    assert not r.writer._foreign(None) and not r.writer._foreign("")
    assert not r.writer._foreign(f"{r.writer.identity}#7")
    assert r.writer._foreign("other/1/abc#42")

"""What a user reads after a failure: the Degraded message, the failed command, the history row
of a retried rollout, and the Events' names and times (issue 14)."""

from __future__ import annotations

import dataclasses
import re

from tests.unit.test_planner_properties import LBS, NEW, OLD, make_spec
from tests.unit.test_status import NOW, serving, status_of
from wso2_operator.events import event_body, micro_time
from wso2_operator.lifecycle import liveness_address
from wso2_operator.model import NodeProgress, Phase, RolloutState
from wso2_operator.planner import MAINT, NodeObservation
from wso2_operator.status import (
    HISTORY_LIMIT,
    append_history,
    history_attempts,
    history_entry,
    history_from_status,
)
from wso2_operator.steps import shown_command
from wso2_operator.textcap import strip_reason

FAILED = (
    "ProvisionFailed: node2: provision command 2/3 (`wso2ctl install`) failed: exited 1: "
    "wso2ctl: installing 2.0.0 on node2 failed: package checksum mismatch (simulated)"
)


def failed_status(message: str) -> dict:
    spec = make_spec(3, 1)
    observed = {n: serving(OLD) for n in spec.node_names}
    observed["node2"] = NodeObservation(version=OLD, healthy=False, lb={lb: MAINT for lb in LBS})
    progress = {n: NodeProgress(phase=Phase.OUTDATED, target=NEW) for n in spec.node_names}
    progress["node2"] = NodeProgress(phase=Phase.FAILED, target=NEW, message=message)
    rollout = RolloutState(from_version=OLD, to_version=NEW, failed_version=NEW)
    return status_of(spec, observed, progress, rollout)


def test_degraded_message_does_not_repeat_the_reason():
    st = failed_status(FAILED)
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ProvisionFailed"
    assert degraded["message"] == FAILED.removeprefix("ProvisionFailed: ")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["message"] == degraded["message"]
    # The node row keeps its reason: it has no reason field of its own, and status is read back
    # from it after a restart.
    row = next(r for r in st["nodes"] if r["name"] == "node2")
    assert row["message"].startswith("ProvisionFailed: node2: ")


def test_strip_reason_only_strips_that_reason_as_a_prefix():
    assert strip_reason("ProvisionFailed", FAILED).startswith("node2: provision command 2/3")
    assert strip_reason("DrainTimeout", FAILED) == FAILED
    assert strip_reason("", "x: y") == "x: y"
    assert strip_reason("Paused", "Paused") == "Paused"


def test_shown_command_is_the_spec_line_in_backticks_and_bounded():
    assert shown_command("wso2ctl install") == "`wso2ctl install`"
    assert shown_command('  sudo /opt/wso2/bin/install-ei.sh "$TARGET_VERSION"  ') == (
        '`sudo /opt/wso2/bin/install-ei.sh "$TARGET_VERSION"`'
    )
    assert shown_command("set -e\ncurl -fsS x | sh\n") == "`set -e ...`"
    long = shown_command("x" * 500)
    assert len(long) == 80 + 2 and long.endswith("...`")
    assert shown_command("echo \x1b[31mred") == "`echo ?[31mred`"


def _rollout(start: float) -> RolloutState:
    return RolloutState(from_version=OLD, to_version=NEW, start=start)


def test_retries_of_one_rollout_share_one_history_row_with_a_count():
    r = _rollout(NOW - 600)
    history = append_history([], history_entry(r, "Failed", NOW - 500, "first"), NOW)
    assert "attempts" not in history[-1] and history_attempts(history[-1]) == 1
    history = append_history(history, history_entry(r, "Failed", NOW - 400, "second"), NOW)
    history = append_history(history, history_entry(r, "Succeeded", NOW - 300, "third"), NOW)
    assert len(history) == 1
    row = history[0]
    assert (row["result"], row["message"], row["attempts"]) == ("Succeeded", "third", 3)
    assert row["startTime"] == history_entry(r, "x", NOW)["startTime"]
    assert row["endTime"] == history_entry(r, "x", NOW - 300)["endTime"]


def test_a_new_rollout_of_the_same_versions_gets_its_own_row():
    history = append_history([], history_entry(_rollout(NOW - 600), "Failed", NOW - 500), NOW)
    history = append_history(history, history_entry(_rollout(NOW - 60), "Failed", NOW - 50), NOW)
    assert len(history) == 2 and all(history_attempts(h) == 1 for h in history)


def test_history_written_without_a_count_is_read_and_counted_on():
    """Status written before the count (no attempts field) still counts as one attempt each."""
    r = _rollout(NOW - 600)
    old = {k: v for k, v in history_entry(r, "Failed", NOW - 500, "old").items()}
    assert "attempts" not in old
    hostile = [{**old, "attempts": "7"}, {**old, "attempts": True}, {**old, "attempts": -3}]
    assert [history_attempts(h) for h in history_from_status({"history": hostile})] == [1, 1, 1]
    history = append_history([old], history_entry(r, "Succeeded", NOW - 100), NOW)
    assert len(history) == 1 and history[0]["attempts"] == 2


def test_many_retries_keep_older_rollouts_in_the_bounded_history():
    history: list[dict] = []
    for i in range(HISTORY_LIMIT - 1):
        history = append_history(history, history_entry(_rollout(NOW - 9000 + i), "Ok", NOW), NOW)
    stuck = _rollout(NOW - 100)
    for _ in range(25):
        history = append_history(history, history_entry(stuck, "Failed", NOW), NOW)
    assert len(history) == HISTORY_LIMIT
    assert history[0]["startTime"] == history_entry(_rollout(NOW - 9000), "x", NOW)["startTime"]
    assert history[-1]["attempts"] == 25


def test_events_are_named_in_time_order_with_microsecond_times():
    obj = {
        "apiVersion": "vmops.dev/v1alpha1",
        "kind": "WSO2Cluster",
        "metadata": {"name": "wso2ei", "namespace": "team-a", "uid": "u-1"},
    }
    first = event_body(obj, "NodeProvisioning", "a", False, 1_800_000_000_123_456_789)
    second = event_body(obj, "NodeVerifying", "b", True, 1_800_000_000_123_999_000)
    assert first["metadata"]["name"] < second["metadata"]["name"]
    assert re.fullmatch(r"wso2ei\.[0-9a-f]{16}", first["metadata"]["name"])
    assert first["eventTime"] == "2027-01-15T08:00:00.123456Z"
    assert first["lastTimestamp"] == "2027-01-15T08:00:00Z"
    assert (first["type"], second["type"]) == ("Normal", "Warning")
    assert first["involvedObject"] == {
        "apiVersion": "vmops.dev/v1alpha1",
        "kind": "WSO2Cluster",
        "name": "wso2ei",
        "namespace": "team-a",
        "uid": "u-1",
    }
    assert micro_time(0) == "1970-01-01T00:00:00.000000Z"


def test_event_message_fits_the_apiservers_byte_limit():
    obj = {"metadata": {"name": "w", "namespace": "n"}}
    body = event_body(obj, "R", "\U0001f600" * 1024, False, 1)
    assert len(body["message"].encode()) <= 1024 and body["message"]


def test_liveness_address_reads_both_flag_forms():
    assert liveness_address(["-A", "--liveness=http://127.0.0.1:8080/healthz"]) == (
        "127.0.0.1",
        8080,
    )
    assert liveness_address(["--liveness", "http://0.0.0.0:9/healthz", "-A"]) == ("0.0.0.0", 9)
    assert liveness_address(["-A", "--standalone"]) is None


def test_retry_keeps_the_rollout_start_so_it_merges():
    """The reconciler's retry keeps RolloutState.start (see _track_rollout): what makes the key."""
    r = _rollout(NOW - 600)
    retried = dataclasses.replace(r, failed_version=None, finished=False, retry_token="2")
    a = history_entry(r, "Failed", NOW - 500)
    b = history_entry(retried, "Succeeded", NOW - 100)
    assert len(append_history([a], b, NOW)) == 1

"""Status read back from a hostile or foreign writer, and status that must not outgrow etcd.

Status is the operator's whole resume state, and it can be edited by hand
(`kubectl edit --subresource=status`), restored from a backup, or written by an older or newer
operator. Each case here once crashed the daemon (a crash loop) or resumed the wrong step.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import pytest

from tests.unit.test_planner_properties import NEW, OLD, make_spec
from tests.unit.test_status import NOW, serving, status_of
from wso2_operator.analysis import NodeAnalysis, Verdict, Window, WindowVerdict
from wso2_operator.model import (
    ClusterSpec,
    HookRun,
    LBHostSpec,
    NodeProgress,
    NodeSpec,
    Phase,
    RolloutState,
)
from wso2_operator.planner import MAINT, NodeObservation, StepKind, node_step, plan
from wso2_operator.progressive import MAX_WINDOW_COUNT, WINDOWS_LIMIT, AnalysisState
from wso2_operator.revision import Kind, Revision
from wso2_operator.status import (
    HISTORY_LIMIT,
    MAX_ATTEMPTS,
    MAX_GENERATION,
    MAX_LBS,
    MAX_NODES,
    MAX_STEP,
    STATUS_SIZE_BOUND,
    TOKEN_LIMIT,
    SetupProblem,
    append_history,
    condition,
    conditions_from_status,
    history_entry,
    history_from_status,
    iso,
    node_message_limit,
    parse_iso,
    progress_from_status,
    rollout_dict,
    rollout_from_status,
    stored_token,
    summarize,
)
from wso2_operator.textcap import (
    LB_STATE_LIMIT,
    MESSAGE_LIMIT,
    NAME_LIMIT,
    REASON_LIMIT,
    VERSION_LIMIT,
    cap,
    cap_token,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "status"
BASE = "2026-11-30T10:00:00Z"
BASE_TS = dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC).timestamp()
# A clock for the fixtures (captured 2026-11-25): their times are all in the past of it.
FIXTURE_NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
EMOJI = "\U0001f600"  # 12 bytes in json.dumps: the costliest character per character


def fixture_status(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())["status"]


def row(**fields) -> dict:
    return {"nodes": [{"name": "node1", "phase": "Provisioning", "target": NEW, **fields}]}


# ------------------------------------------------------------------ parse_iso


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE, BASE_TS),
        ("2026-11-30T10:00:00.123456Z", BASE_TS + 0.123456),
        ("2026-11-30T10:00:00.5z", BASE_TS + 0.5),
        ("2026-11-30t10:00:00Z", BASE_TS),
        ("2026-11-30T12:00:00+02:00", BASE_TS),
        ("2026-11-30T04:30:00-05:30", BASE_TS),
        ("2026-11-30T10:00:00-00:00", BASE_TS),
        ("2026-11-30T09:59:60Z", BASE_TS),  # a leap second is the next second
        ("2026-11-30T10:00:00.1234567890123456789Z", BASE_TS + 0.123456789),
    ],
)
def test_parse_iso_accepts_every_rfc3339_form(text, expected):
    assert parse_iso(text, now=BASE_TS) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-30 10:00:00Z",  # RFC 3339 allows it only by mutual agreement; the CRD does not
        "2026-11-30T10:00:00",  # no offset
        "2026-11-30",
        "2026-02-30T10:00:00Z",
        "2026-11-30T24:00:00Z",
        "2026-11-30T10:00:61Z",
        "2026-11-30T10:00:00+24:00",
        "2026-11-30T10:00:00Z\n",
        "\uff12\uff10\uff12\uff16-11-30T10:00:00Z",  # full-width digits match \d, not RFC 3339
        "1999-12-31T23:59:59Z",  # before 2000: a reset clock or a hand edit
        "2026-12-02T10:00:00Z",  # more than a day after now
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z",
        BASE[:-1] + "." + "9" * 10_000 + "Z",
        "",
        "abc",
    ],
)
def test_parse_iso_returns_none_for_anything_else(text):
    assert parse_iso(text, now=BASE_TS) is None


@pytest.mark.parametrize("value", [None, 1_800_000_000, 1.5, True, ["x"], {"a": 1}, b"2026"])
def test_parse_iso_of_a_non_string_is_none(value):
    assert parse_iso(value, now=BASE_TS) is None


def test_iso_of_an_impossible_time_is_none():
    assert [iso(math.nan), iso(math.inf), iso(1e300), iso(None)] == [None] * 4
    assert iso(BASE_TS + 0.9) == BASE


def test_a_fixture_with_times_in_other_rfc3339_forms_resumes_the_same_node():
    """A status restored by a tool that writes fractions and offsets resumes exactly as the
    operator's own format does (it used to crash-loop on the first fraction)."""
    original = fixture_status("progressing")
    edited = copy.deepcopy(original)
    n1 = edited["nodes"][0]
    n1["startTime"] = "2026-11-25T15:26:44.000+02:00"
    n1["lastTransitionTime"] = n1["lastTransitionTime"].replace("Z", ".000000z").replace("T", "t")
    edited["rollout"]["startTime"] = "2026-11-25T08:26:44-05:00"
    assert progress_from_status(edited, FIXTURE_NOW) == progress_from_status(original, FIXTURE_NOW)
    assert rollout_from_status(edited, FIXTURE_NOW) == rollout_from_status(original, FIXTURE_NOW)
    p = progress_from_status(edited, FIXTURE_NOW)["node1"]
    assert (p.phase, p.step, p.target, p.start) == (
        Phase.PROVISIONING,
        0,
        NEW,
        dt.datetime(2026, 11, 25, 13, 26, 44, tzinfo=dt.UTC).timestamp(),
    )


def test_times_far_in_the_future_or_before_2000_are_not_believed():
    st = row(startTime="2099-01-01T00:00:00Z", lastTransitionTime="1970-01-01T00:00:00Z")
    p = progress_from_status(st, BASE_TS)["node1"]
    assert (p.start, p.since) == (None, None)
    # A start in 2099 would have switched progressDeadlineSeconds off for good.
    assert node_step("node1", p, make_spec(3, 1), BASE_TS).kind == StepKind.PROVISION


# ------------------------------------------------------------------ progress_from_status


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-1, 0),
        (-(10**30), 0),
        ("abc", 0),
        ("1", 0),
        (True, 0),
        (None, 0),
        (math.nan, 0),
        (math.inf, 0),
        (1.5, 0),
        (1.0, 1),
        (10**30, MAX_STEP),
        ([1], 0),
        (1, 1),
    ],
)
def test_step_is_a_clamped_integer(value, expected):
    assert progress_from_status(row(step=value))["node1"].step == expected


def test_a_negative_step_never_runs_the_last_provision_command():
    spec = make_spec(3, 1)  # provision_commands = ("a", "b")
    p = progress_from_status(row(step=-1))["node1"]
    step = node_step("node1", p, spec, NOW)
    assert (step.kind, step.index) == (StepKind.PROVISION, 0)
    assert spec.provision_commands[step.index] == "a"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-5, 0), ("3", 0), (False, 0), (math.nan, 0), (10**100, MAX_ATTEMPTS), (7, 7)],
)
def test_attempts_are_a_clamped_integer(value, expected):
    assert progress_from_status(row(attempts=value))["node1"].attempts == expected


def test_rows_without_a_usable_name_are_skipped():
    st = {
        "nodes": [
            {"phase": "Provisioning", "step": 1},
            {"name": None},
            {"name": 7, "phase": "Draining"},
            {"name": "", "phase": "Draining"},
            {"name": "-node", "phase": "Draining"},
            {"name": "n" * 64, "phase": "Draining"},
            "node9",
            ["node8"],
            None,
            {"name": "node2", "phase": "Soaking"},
            {"name": "node2", "phase": "Draining"},
            {"name": "node3", "phase": "Maintenance", "message": "x"},
            {"name": "node4", "phase": ["Draining"], "message": "x"},
        ]
    }
    out = progress_from_status(st)
    assert {n: p.phase for n, p in out.items()} == {
        "node2": Phase.SOAKING,
        "node3": Phase.UNKNOWN,  # an unknown phase is not in flight: nothing is resumed
        "node4": Phase.UNKNOWN,
    }
    assert out["node3"].message == out["node4"].message == ""


@pytest.mark.parametrize(
    "status",
    [None, [], "x", 3, {"nodes": {"node1": {}}}, {"nodes": "node1"}, {"nodes": 5}, {"nodes": None}],
)
def test_a_status_or_nodes_of_the_wrong_type_is_no_progress(status):
    assert progress_from_status(status) == {}


@pytest.mark.parametrize(
    "value",
    ["1.0.0; rm -rf /", "$(id)", "", " 1.0", "v" * 65, 1, 2.0, True, ["1.0.0"], {"v": 1}],
)
def test_versions_that_the_crd_would_not_accept_are_none(value):
    st = row(target=value, previousVersion=value)
    st["rollout"] = {"fromVersion": value, "toVersion": value, "failedVersion": value}
    p = progress_from_status(st)["node1"]
    r = rollout_from_status(st)
    assert (p.target, p.previous_version) == (None, None)
    assert (r.from_version, r.to_version, r.failed_version) == (None, None, None)


def test_a_message_is_kept_only_as_capped_text():
    assert progress_from_status(row(message={"a": 1}))["node1"].message == ""
    long = progress_from_status(row(message="x" * 100_000))["node1"].message
    assert len(long) == MESSAGE_LIMIT and long.endswith("chars]")


# ------------------------------------------------------------------ rollout_from_status


@pytest.mark.parametrize("value", ["false", "true", "False", 1, 0, None, [], {}])
def test_flags_count_only_as_real_booleans(value):
    r = rollout_from_status(
        {"rollout": {"rollingBack": value, "finished": value, "rollbackFailed": value}}
    )
    assert (r.rolling_back, r.finished, r.rollback_failed) == (False, False, False)


@pytest.mark.parametrize("value", [None, "x", 3, [{"toVersion": NEW}]])
def test_a_rollout_of_the_wrong_type_is_the_empty_cursor(value):
    assert rollout_from_status({"rollout": value}) == RolloutState()


def test_annotation_tokens_read_back_as_the_operator_stores_them():
    long = "r" * (TOKEN_LIMIT + 1)
    assert rollout_from_status({"rollout": {"retryToken": 5}}).retry_token is None
    assert rollout_from_status({"rollout": {"retryToken": "1"}}).retry_token == "1"
    stored = rollout_dict(RolloutState(retry_token=long, hand_back_token=long))
    digest = stored["retryToken"]
    assert digest.startswith("sha256:") and len(digest) == 71
    assert stored["handBackToken"] == digest
    back = rollout_from_status({"rollout": {"retryToken": long, "handBackToken": long}})
    assert back.retry_token == back.hand_back_token == digest
    assert stored_token(long) == digest  # what a reconciler compares the annotation with
    # The hand-back token survives a restart: a hand-back is acted on once, not at every start.
    once = RolloutState(hand_back_token="node2")
    assert rollout_from_status({"rollout": rollout_dict(once)}) == once


# ------------------------------------------------------------------ history and conditions


def test_history_is_a_capped_list_of_dicts():
    good = fixture_status("rolled-back")["history"]
    hostile = [
        "x",
        None,
        {},
        {"fromVersion": 1, "toVersion": ["2"], "junk": "y"},
        {"message": "m" * 50_000, "result": EMOJI * 100, "startTime": "soon", "endTime": 3},
        *good,
    ]
    out = history_from_status({"history": hostile * 3}, FIXTURE_NOW)
    assert len(out) == HISTORY_LIMIT
    assert out[-3:] == good  # the operator's own entries survive unchanged
    for e in out:
        assert set(e) <= {"fromVersion", "toVersion", "startTime", "endTime", "result", "message"}
        assert all(isinstance(v, str) for v in e.values())
        assert len(e.get("message", "")) <= MESSAGE_LIMIT
        assert len(e.get("result", "")) <= NAME_LIMIT
    capped = next(e for e in out if e.get("message", "").startswith("m"))
    # The bad times are gone, the rest is capped.
    assert capped == {"message": cap("m" * 50_000), "result": cap_token(EMOJI * 100)}


@pytest.mark.parametrize("value", [None, "x", {"a": 1}, 3])
def test_history_of_the_wrong_type_is_empty(value):
    assert history_from_status({"history": value}) == []


def test_append_history_cleans_what_it_was_given_and_keeps_the_limit():
    r = RolloutState(from_version=OLD, to_version=NEW, start=NOW - 60)
    raw = ["junk", *[history_entry(r, "Succeeded", NOW) for _ in range(HISTORY_LIMIT)]]
    new = history_entry(r, "Failed", NOW, "E" * 10_000)
    out = append_history(raw, new, NOW)
    assert len(out) == HISTORY_LIMIT and out[-1]["result"] == "Failed"
    assert len(out[-1]["message"]) == MESSAGE_LIMIT
    assert "junk" not in out


def test_conditions_are_sanitised():
    st = {
        "conditions": [
            "Ready",
            {"type": "Ready", "status": True},  # a bool, not the string "True"
            {"type": "Ready", "status": ["True"]},
            {"type": 3, "status": "True"},
            {
                "type": "Ready",
                "status": "True",
                "lastTransitionTime": "2026-11-30T12:00:00.5+02:00",
                "reason": "Why" * 100,
                "message": "\x1b[2J" + "m" * 5000,
                "observedGeneration": "3",
            },
            {"type": "Ready", "status": "False"},
            {"type": "Degraded", "status": "Unknown", "lastTransitionTime": "yesterday"},
        ]
    }
    out = conditions_from_status(st, BASE_TS)
    assert [(c["type"], c["status"]) for c in out] == [("Ready", "True"), ("Degraded", "Unknown")]
    ready, degraded = out
    assert ready["lastTransitionTime"] == BASE
    assert len(ready["reason"]) == REASON_LIMIT and len(ready["message"]) == MESSAGE_LIMIT
    assert "\x1b" not in ready["message"] and "observedGeneration" not in ready
    assert "lastTransitionTime" not in degraded
    assert conditions_from_status({"conditions": {"type": "Ready"}}) == []


def test_a_previous_condition_without_a_usable_time_gets_a_fresh_one():
    previous = [
        "junk",
        {"type": "Ready", "status": "True"},  # no lastTransitionTime: used to KeyError
        {"type": "Degraded", "status": "False", "lastTransitionTime": 5},
    ]
    ready = condition("Ready", True, "AllNodesReady", "ok", 1, previous, NOW)
    degraded = condition("Degraded", False, "AsExpected", "ok", 1, previous, NOW)
    assert ready["lastTransitionTime"] == degraded["lastTransitionTime"] == iso(NOW)


# ------------------------------------------------------------------ caps on what is written


def test_every_string_from_outside_is_capped_in_status():
    spec = make_spec(3, 1)
    garbage = "\x1b[31m" + EMOJI * 5000
    observed = {n: serving(OLD) for n in spec.node_names}
    observed["node1"] = NodeObservation(
        version=garbage,
        healthy=True,
        lb={"lb1": MAINT, "L" * 500: "S" * 500, **{f"x{i}": MAINT for i in range(40)}},
    )
    progress = {
        "node1": NodeProgress(
            phase=Phase.PROVISIONING,
            target=NEW,
            previous_version=garbage,
            message="TransientError: " + garbage,
            attempts=10**9,
        )
    }
    rollout = RolloutState(from_version=garbage, to_version=NEW, failed_version=garbage)
    st = status_of(spec, observed, progress, rollout, SetupProblem("Bad" * 200, garbage))
    node1 = st["nodes"][0]
    assert node1["version"] == cap_token(garbage, VERSION_LIMIT)
    assert node1["previousVersion"] == cap_token(garbage, VERSION_LIMIT)
    assert node1["message"] == cap("TransientError: " + garbage, MESSAGE_LIMIT)
    assert node1["attempts"] == MAX_ATTEMPTS
    assert len(node1["loadBalancers"]) == MAX_LBS
    assert all(len(k) <= NAME_LIMIT for k in node1["loadBalancers"])
    assert all(len(v) <= LB_STATE_LIMIT for v in node1["loadBalancers"].values())
    for c in st["conditions"]:
        assert len(c["message"]) <= MESSAGE_LIMIT and len(c["reason"]) <= REASON_LIMIT
        assert "\x1b" not in c["message"]
    r = st["rollout"]
    assert len(r["fromVersion"]) <= VERSION_LIMIT and len(r["failedVersion"]) <= VERSION_LIMIT
    assert len(st["currentVersion"] or "") <= VERSION_LIMIT
    # The capped versions are not versions: read back, they give no rollback target.
    assert rollout_from_status(st).from_version is None


def test_history_entry_caps_an_error_message():
    r = RolloutState(from_version="v" * 300, to_version=NEW)
    e = history_entry(r, "Failed", NOW, "boom\r" * 10_000)
    assert len(e["message"]) == MESSAGE_LIMIT and "\r" not in e["message"]
    assert len(e["fromVersion"]) == VERSION_LIMIT


def test_node_messages_shrink_with_the_node_count():
    assert node_message_limit(1) == node_message_limit(39) == MESSAGE_LIMIT
    assert node_message_limit(MAX_NODES) == 400
    assert node_message_limit(10**6) == 128
    spec = make_spec(MAX_NODES, 1)
    progress = {n: NodeProgress(phase=Phase.FAILED, message="F" * 5000) for n in spec.node_names}
    st = status_of(spec, {}, progress)
    assert {len(r["message"]) for r in st["nodes"]} == {400}


def _name(prefix: str, i: int) -> str:
    return f"{prefix}{i:03d}".ljust(63, "x")  # the longest name spec.nodes/hosts admit


def worst_case_status(node_count: int, lb_count: int, over: int = 1) -> dict:
    """Every field at its cap: 63-character names, versions and LB states at their caps, node,
    condition and history messages exactly at their caps in the costliest character. With
    ``over`` > 1, every text that can come from outside is that many times too long."""
    version = "9" * VERSION_LIMIT * over
    # configRevision/restartedAt/patchedAt at the CRD's maxLength (a longer one is not a token).
    tokens = Revision(config="c" * 40, restart="r" * 40, patch="p" * 40)
    spec = ClusterSpec(
        revision=tokens,
        version=version,
        nodes=tuple(NodeSpec(_name("n", i), "h") for i in range(node_count)),
        ssh_user="root",
        secret_name="s",
        lb_hosts=tuple(LBHostSpec(_name("l", j) * over) for j in range(lb_count)),
        provision_commands=("a",),
        max_unavailable=max(1, node_count - 1),
    )
    lbs = {h.name: "S" * LB_STATE_LIMIT * over for h in spec.lb_hosts}
    observed = {
        n: NodeObservation(
            version="7" * VERSION_LIMIT * over, healthy=True, lb=lbs, revision=tokens
        )
        for n in spec.node_names
    }
    progress = {
        n: NodeProgress(
            phase=Phase.WAITING_HEALTHY,  # the longest phase name
            target="8" * VERSION_LIMIT * over,
            previous_version="6" * VERSION_LIMIT * over,
            step=MAX_STEP,
            since=NOW,
            start=NOW,
            message=EMOJI * node_message_limit(node_count) * over,
            attempts=MAX_ATTEMPTS,
            kind=Kind.PROVISION,  # the longest kind name
            revision=tokens,
            boot_id="b" * 64 * over,
        )
        for n in spec.node_names
    }
    rollout = RolloutState(
        from_version="5" * VERSION_LIMIT * over,
        to_version=version,
        start=NOW,
        rolling_back=True,
        failed_version="4" * VERSION_LIMIT * over,
        retry_token=EMOJI * TOKEN_LIMIT,  # the longest tokens stored as they are
        hand_back_token=EMOJI * TOKEN_LIMIT,
        finished=True,
        rollback_failed=True,
        step_index=MAX_STEP,
        pause_start=NOW,
        promoted_full=True,
        aborted=True,
        promote_token=EMOJI * TOKEN_LIMIT,
        promote_full_token=EMOJI * TOKEN_LIMIT,
        abort_token=EMOJI * TOKEN_LIMIT,
        # provision.ansible's revision and both hooks (hooks.py), their messages at the cap.
        provision_revision=EMOJI * TOKEN_LIMIT * over,
        before_hook=HookRun("Failed", EMOJI * MESSAGE_LIMIT * over, NOW, NOW),
        after_hook=HookRun("Failed", EMOJI * MESSAGE_LIMIT * over, NOW, NOW),
        to_revision=tokens,
        maintenance="ConfigRevision",  # the longest label
    )
    st = summarize(
        spec=spec,
        generation=MAX_GENERATION,
        observed=observed,
        progress=progress,
        rollout=rollout,
        plan=plan(spec, observed, progress, rollout),
        previous_conditions=[],
        problem=SetupProblem("R" * REASON_LIMIT * over, EMOJI * MESSAGE_LIMIT * over),
        now=NOW,
    )
    # Not every condition quotes the problem; make all three as large as a condition can be.
    st["conditions"] = [
        condition(
            t,
            None,
            "R" * REASON_LIMIT * over,
            EMOJI * MESSAGE_LIMIT * over,
            MAX_GENERATION,
            [],
            NOW,
        )
        for t in ("Ready", "Progressing", "Degraded")
    ]
    history: list[dict] = []
    for i in range(HISTORY_LIMIT + 1):
        # Distinct rollouts (a retry of one would share its row), each retried: every row also
        # carries an attempt count.
        each = dataclasses.replace(rollout, start=NOW - 10_000 + i)
        for _ in range(2):
            entry = history_entry(each, "R" * NAME_LIMIT * over, NOW, EMOJI * MESSAGE_LIMIT * over)
            history = append_history(history, entry, NOW)
    assert all(row["attempts"] == 2 for row in history)
    # What reconciler.persist() and the status writer add, at the CRD's limits.
    st["history"] = history
    st["departedNodes"] = [_name("d", i) for i in range(32)]
    st["writer"] = "w" * 128
    # Canary steps and analysis (canary_driver._canary_status), every field at its cap.
    st["rollout"].update(
        stepCount=21,
        stepMessage=cap(EMOJI * 512 * over, 512),
        pauseEndTime=st["rollout"]["startTime"],
    )
    analysis = AnalysisState(
        message=EMOJI * MESSAGE_LIMIT * over, phase="Inconclusive", metric="R" * NAME_LIMIT * over
    )
    for i in range(MAX_NODES):
        analysis.nodes[_name("n", i)] = NodeAnalysis(
            good=MAX_WINDOW_COUNT,
            bad=MAX_WINDOW_COUNT,
            inconclusive=MAX_WINDOW_COUNT,
            verdict=Verdict.INCONCLUSIVE,
        )
    for i in range(WINDOWS_LIMIT + 1):
        w = Window(
            node=_name("n", i),
            end=NOW,
            seconds=3599.9,
            requests=2**62,
            errors=2**62,
            baseline_requests=2**62,
            baseline_errors=1,
            response_ms=1e11,
            baseline_response_ms=1e11,
            verdict=WindowVerdict.INCONCLUSIVE,
            reason="R" * NAME_LIMIT * over,
        )
        analysis.record(w, analysis.verdict(w.node))
    st["analysis"] = analysis.to_status()
    return st


def test_worst_case_status_fits():
    """The CRD admits at most 100 nodes (spec.nodes maxItems) and 16 LBs (hosts maxItems).
    Measured (maintenance fields included): 1,037,755 bytes for 100 nodes and 16 LBs
    (json.dumps, as the Kubernetes client sends it), 580,539 as UTF-8; below the 1 MiB bound,
    itself well below the apiserver's 1.5 MiB request limit."""
    st = worst_case_status(MAX_NODES, MAX_LBS)
    assert len(st["nodes"]) == MAX_NODES
    assert all(len(r["loadBalancers"]) == MAX_LBS for r in st["nodes"])
    assert len(st["history"]) == HISTORY_LIMIT
    size = len(json.dumps(st))
    assert size == 1_037_755  # the figure documented in status.py; update both together
    assert size <= STATUS_SIZE_BOUND
    assert len(json.dumps(st, ensure_ascii=False).encode()) <= STATUS_SIZE_BOUND
    # At its caps, status still reads back as the resume state it was written from.
    back = progress_from_status(st, NOW)
    assert set(back) == {_name("n", i) for i in range(MAX_NODES)}
    assert {(p.phase, p.step, p.attempts, p.start) for p in back.values()} == {
        (Phase.WAITING_HEALTHY, MAX_STEP, MAX_ATTEMPTS, NOW)
    }
    assert rollout_from_status(st, NOW).retry_token == EMOJI * TOKEN_LIMIT


@pytest.mark.parametrize("nodes", [1, 3, 39, 40, 41, 64, 99, MAX_NODES])
def test_text_beyond_the_caps_adds_nothing(nodes):
    """Ten times too much text from outside gives no larger status than text at the caps."""
    at_caps = len(json.dumps(worst_case_status(nodes, MAX_LBS)))
    assert len(json.dumps(worst_case_status(nodes, MAX_LBS, over=10))) <= at_caps
    assert at_caps <= STATUS_SIZE_BOUND


# ------------------------------------------------------------------ textcap


def test_cap_marks_what_it_cut():
    assert cap("a" * 30, 25) == "a" * 12 + "\u2026 [+18 chars]"
    assert cap_token("a" * 30, 25) == "a" * 10 + "... [+20 chars]"
    assert cap("short") == "short"
    assert cap("x" * 10, 5) == "xxxxx"  # no room for a marker: a plain cut


def test_cap_cleans_controls_and_surrogates():
    assert cap("a\r\nb\tc\x1b[0m\x00\u202e") == "a\ufffd\nb\tc\ufffd[0m\ufffd\ufffd"
    # A pair split in two code points is joined; a lone half is replaced.
    assert cap("\ud83d\ude00|\ud800|\udc00") == EMOJI + "|\ufffd|\ufffd"
    assert cap(EMOJI * 30, 25) == EMOJI * 12 + "\u2026 [+18 chars]"
    cap("\udcff" * 5).encode("utf-8")  # encodable: no lone surrogate left


def test_cap_takes_anything():
    assert cap(None) == "" and cap(3) == "3" and cap(["a"]) == "['a']"
    assert cap(10**5000) == "<unprintable int>"  # str() refuses ints over 4300 digits

    class Broken:
        def __str__(self):
            raise RuntimeError("no")

    assert cap(Broken()) == "<unprintable Broken>"


def test_cap_token_keeps_versions_and_reasons_and_nothing_json_escapes():
    for ok in ("6.6.0-update42", "1.0.0+build.5", "RolloutFailed", "no check"):
        assert cap_token(ok) == ok
    assert cap_token('a"b\\c<d>e&f\u00e9\n') == "a?b?c?d?e?f??"

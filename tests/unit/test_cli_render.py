"""`kubectl w2c` without I/O: rendering of real status shapes, decisions, argument parsing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from wso2_operator import cli_render as r
from wso2_operator.cli import CliError, parse_args, parse_duration
from wso2_operator.status import parse_iso

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "status"
# A fixed clock a minute after the fixtures' last writes.
NOW = parse_iso("2026-11-25T13:28:00Z")
assert NOW is not None


def fx(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


ALL = sorted(p.stem for p in FIXTURES.glob("*.json"))


# --- get ---------------------------------------------------------------------------------------


def test_get_of_a_timed_canary_pause() -> None:
    out = r.render_get(fx("handmade-step-paused-timed"), NOW)
    lines = out.splitlines()
    assert "Phase:       Paused (StepPaused)" in lines
    assert "Step:        2/3: paused until 2026-11-25T13:28:05Z (ends in 5s)" in lines
    assert "Paused:      at a step (StepPaused); promote to go on" in lines
    assert "Rollout:     1.0.0 -> 2.0.0 (in progress), started 1m16s ago" in lines
    assert lines[lines.index("") + 1].split() == [
        "NODE", "VERSION", "PHASE", "LB1", "LB2", "HEALTHY", "ANALYSIS(G/B/I)", "SINCE", "MESSAGE",
    ]  # fmt: skip
    assert lines[lines.index("") + 2].split()[:8] == [
        "node1", "2.0.0", "Current", "UP", "UP", "yes", "Running", "2/0/0",
    ]  # fmt: skip
    assert "\x1b" not in out


def test_get_of_a_provisioning_node_shows_the_command_step_and_no_analysis_column() -> None:
    out = r.render_get(fx("progressing"), NOW)
    assert "ANALYSIS" not in out and "Analysis:" not in out and "Step:        -" in out
    row = next(line for line in out.splitlines() if line.startswith("node1 "))
    assert row.split()[:6] == ["node1", "1.0.0", "Provisioning", "1/3", "MAINT", "MAINT"]
    assert "Message:     0/3 at 2.0.0; node1 Provisioning" in out  # Progressing's message


def test_get_shows_each_nodes_revision_only_when_the_cluster_has_one() -> None:
    obj = fx("progressing")
    assert "REVISION" not in r.render_get(obj, NOW)
    obj["status"]["nodes"][0]["revision"] = {"config": "cfg-2", "restart": "2026-11-30T21:00:00Z"}
    lines = r.render_get(obj, NOW).splitlines()
    assert lines[lines.index("") + 1].split()[:3] == ["NODE", "VERSION", "REVISION"]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("node")}
    assert rows["node1"][2:4] == ["config=cfg-2", "restart=2026-11-30T21:00:00Z"]
    assert rows["node2"][2] == "-"


def test_a_restarting_node_counts_its_restart_commands() -> None:
    obj = fx("progressing")
    obj["status"]["nodes"][0]["maintenance"] = "Restart"
    row = next(line for line in r.render_get(obj, NOW).splitlines() if line.startswith("node1 "))
    assert row.split()[2:4] == ["Provisioning", "1/2"]  # wso2ctl stop, wso2ctl start


def test_get_says_when_status_is_stale_or_missing() -> None:
    stale = fx("stale-generation")
    assert "(the operator has not acted on the latest spec yet)" in r.render_get(stale, NOW)
    new = r.render_get(fx("new-no-status"), NOW)
    assert "Phase:       Unknown" in new and "no status yet" in new


def test_colour_only_when_asked_and_only_known_words() -> None:
    obj = fx("handmade-analysis-failed-pause")
    out = r.render_get(obj, NOW, r.Style(colour=True))
    assert "Phase:       \x1b[31mDegraded\x1b[0m" in out
    assert "\x1b[33mMAINT\x1b[0m" in out and "\x1b[32mUP\x1b[0m" in out
    # Padding is computed on the plain text: stripping the codes gives the plain rendering.
    plain = out
    for code in ("\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[36m", "\x1b[1m", "\x1b[0m", "\x1b[2m"):
        plain = plain.replace(code, "")
    assert plain == r.render_get(obj, NOW)


@pytest.mark.parametrize(
    ("isatty", "env", "want"),
    [
        (True, {}, True),
        (False, {}, False),
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": ""}, True),  # no-color.org: set *and* non-empty
        (True, {"TERM": "dumb"}, False),
    ],
)
def test_use_colour(isatty: bool, env: dict[str, str], want: bool) -> None:
    assert r.use_colour(isatty, env) is want


def test_text_from_status_cannot_drive_the_terminal() -> None:
    obj = fx("progressing")
    obj["status"]["nodes"][0]["message"] = "ok\x1b[2J\x1b]0;pwned\x07\nsecond line"
    obj["status"]["conditions"][1]["message"] = "\r\x1b[31mfake"
    for out in (r.render_get(obj, NOW, r.Style(colour=True)), r.render_line(obj, NOW)):
        assert "\x1b[2J" not in out and "\x1b]" not in out and "\r" not in out
        assert "\x1b[31mfake" not in out
    assert "\n" not in r.render_line(obj, NOW)


@pytest.mark.parametrize("name", ALL)
def test_every_reader_is_total_on_every_fixture_and_on_garbage(name: str) -> None:
    obj = fx(name)
    for o in (obj, _mangled(obj)):
        r.render_get(o, NOW)
        r.render_line(o, NOW)
        r.render_list([o], True, NOW)
        r.render_history(o, NOW)
        for want in r.WAIT_FOR:
            r.wait_verdict(o, want)
        r.argocd_tracking(o)
        for ann in r.TOKEN_FIELDS:
            r.steering_note(o, ann)


def _mangled(obj: dict[str, Any]) -> dict[str, Any]:
    """Every status value of the wrong type."""
    o = copy.deepcopy(obj)
    st = o.get("status") or {}
    for k in list(st):
        st[k] = {"x": 1} if isinstance(st[k], list | str) else [1, "x"]
    o["status"] = st
    o["metadata"]["annotations"] = ["not", "a", "map"]
    return o


# --- the one-line view of -w -------------------------------------------------------------------


def test_line_of_a_rollout_in_progress() -> None:
    assert r.render_line(fx("progressing"), NOW) == (
        "wso2ei Progressing RolloutInProgress desired=2.0.0 updated=0/3 ready=2/3 "
        "node1=Provisioning:1/3[MAINT,MAINT] node2=Outdated[UP,UP] node3=Outdated[UP,UP] "
        "| 0/3 at 2.0.0; node1 Provisioning"
    )


def test_line_ignores_what_it_does_not_show() -> None:
    a = fx("handmade-step-paused-timed")
    b = copy.deepcopy(a)
    b["status"]["lastObservedTime"] = "2026-11-25T13:27:59Z"
    b["metadata"]["resourceVersion"] = "999"
    assert r.render_line(a, NOW) == r.render_line(b, NOW)
    b["status"]["nodes"][1]["phase"] = "Draining"
    assert r.render_line(a, NOW) != r.render_line(b, NOW)


def test_line_of_ready_has_no_message_and_of_stale_says_so() -> None:
    assert "|" not in r.render_line(fx("ready"), NOW)
    assert r.render_line(fx("stale-generation"), NOW).endswith("(stale)")


# --- list and history --------------------------------------------------------------------------


def test_list_with_and_without_namespaces() -> None:
    objs = [fx("ready"), fx("handmade-step-paused-indefinite")]
    one = r.render_list(objs, False, NOW).splitlines()
    assert one[0].split() == [
        "NAME", "DESIRED", "CURRENT", "UPDATED", "READY", "PHASE", "REASON", "STEP", "AGE",
    ]  # fmt: skip
    assert one[1].split() == ["wso2ei", "1.0.0", "1.0.0", "3/3", "3/3", "Ready", "AllNodesReady",
                              "-", "1m43s"]  # fmt: skip
    assert one[2].split()[5:8] == ["Paused", "StepPaused", "4/5"]
    many = r.render_list(objs, True, NOW).splitlines()
    assert many[0].startswith("NAMESPACE ") and many[1].startswith("capture ")


def test_history_numbers_revisions_and_shows_the_current_rollout() -> None:
    rows = [line.split() for line in r.render_history(fx("rolling-back"), NOW).splitlines()]
    assert [row[:4] for row in rows] == [
        ["REVISION", "FROM", "TO", "RESULT"],
        ["1", "1.0.0", "2.0.0", "Failed"],
        ["2", "1.0.0", "2.0.0", "Succeeded"],
        ["*", "2.0.0", "3.0.0", "RollingBack"],
    ]
    assert rows[1][5] == "34s"  # 13:26:44 -> 13:27:18
    assert r.render_history(fx("new-no-status"), NOW) == "wso2ei: no rollouts in status.history yet"


# --- undo --------------------------------------------------------------------------------------


def test_undo_goes_to_the_last_version_that_succeeded() -> None:
    assert r.undo_target(fx("rolled-back"), None) == (
        "2.0.0",
        "revision 2, the last that succeeded",
    )


def test_undo_without_a_success_goes_to_where_the_rollout_started() -> None:
    # progressing: no history, a rollout 1.0.0 -> 2.0.0 in flight.
    assert r.undo_target(fx("progressing"), None) == (
        "1.0.0",
        "what the current rollout started from",
    )


def test_undo_to_a_revision_and_its_refusals() -> None:
    obj = fx("rolled-back")
    assert r.undo_target(obj, 1) == ("2.0.0", "revision 1 (Failed)")
    with pytest.raises(r.UndoError, match=r"no revision 4 \(revisions: 1..3"):
        r.undo_target(obj, 4)
    with pytest.raises(r.UndoError, match=r"already 3\.0\.0"):
        r.undo_target(obj, 3)
    with pytest.raises(r.UndoError, match=r"names no earlier version than 1\.0\.0"):
        r.undo_target(fx("ready"), None)
    with pytest.raises(r.UndoError, match="revisions: none"):
        r.undo_target(fx("new-no-status"), 1)


@pytest.mark.parametrize(
    ("where", "key", "found"),
    [
        ("annotations", "argocd.argoproj.io/tracking-id", True),
        ("labels", "app.kubernetes.io/instance", True),
        ("labels", "argocd.argoproj.io/instance", True),
        ("annotations", "app.kubernetes.io/instance", False),  # the label, not an annotation
        ("labels", "app.kubernetes.io/name", False),
    ],
)
def test_argocd_tracking(where: str, key: str, found: bool) -> None:
    obj = fx("ready")
    obj["metadata"][where] = {key: "apps"}
    got = r.argocd_tracking(obj)
    assert (got is not None) is found
    if found:
        assert got == f"{where[:-1]} {key}=apps"


# --- steering ----------------------------------------------------------------------------------


def test_new_token_is_the_time_and_differs_from_what_is_there() -> None:
    t = "2026-11-25T13:28:00Z"
    assert r.new_token(NOW, None, None) == t
    assert r.new_token(NOW, t, None) == f"{t}-2"
    assert r.new_token(NOW, f"{t}-2", t) == f"{t}-3"


def test_steering_notes_follow_argo_cd_action_discovery() -> None:
    held = fx("handmade-step-paused-indefinite")
    assert r.steering_note(held, r.PROMOTE_ANNOTATION) is None
    assert r.steering_note(held, r.ABORT_ANNOTATION) is None
    assert "no failed version" in (r.steering_note(held, r.RETRY_ANNOTATION) or "")
    ready = fx("ready")
    assert "NothingToPromote" in (r.steering_note(ready, r.PROMOTE_ANNOTATION) or "")
    assert "NothingToAbort" in (r.steering_note(ready, r.ABORT_ANNOTATION) or "")
    assert r.steering_note(fx("degraded"), r.RETRY_ANNOTATION) is None
    held["status"]["rollout"]["promotedFull"] = True
    assert "already" in (r.steering_note(held, r.PROMOTE_FULL_ANNOTATION) or "")


# --- wait --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ready", "paused", "degraded"),
    [
        ("ready", "met", "pending", "pending"),
        ("progressing", "pending", "pending", "pending"),
        ("paused", "pending", "met", "pending"),
        ("handmade-step-paused-indefinite", "pending", "met", "pending"),
        ("degraded", "failed", "failed", "met"),
        ("handmade-analysis-failed-pause", "failed", "failed", "met"),
        ("rolling-back", "failed", "failed", "met"),
        ("stale-generation", "pending", "pending", "pending"),
        ("new-no-status", "pending", "pending", "pending"),
    ],
)
def test_wait_verdicts(name: str, ready: str, paused: str, degraded: str) -> None:
    obj = fx(name)
    got = [r.wait_verdict(obj, w).state for w in ("ready", "paused", "degraded")]
    assert got == [ready, paused, degraded]


def test_a_pending_retry_is_not_a_failure() -> None:
    obj = fx("degraded")
    obj["metadata"].setdefault("annotations", {})[r.RETRY_ANNOTATION] = "again"
    assert r.wait_verdict(obj, "ready").state == "pending"
    obj["status"]["rollout"]["retryToken"] = "again"  # acted on, and failed again
    assert r.wait_verdict(obj, "ready").state == "failed"


def test_a_new_version_after_a_failure_is_not_a_failure() -> None:
    obj = fx("degraded")
    obj["spec"]["version"] = "2.0.1"
    obj["metadata"]["generation"] = obj["status"]["observedGeneration"] = 7
    for c in obj["status"]["conditions"]:
        c["observedGeneration"] = 7
    assert r.wait_verdict(obj, "ready").state == "pending"


# --- arguments ---------------------------------------------------------------------------------


def test_flags_go_before_or_after_the_verb() -> None:
    a = parse_args(["-n", "prod", "--context", "c1", "get", "wso2ei", "-w"])
    b = parse_args(["get", "wso2ei", "-w", "--context=c1", "--namespace", "prod"])
    for args in (a, b):
        assert (args.verb, args.name, args.watch) == ("get", "wso2ei", True)
        assert (args.namespace, args.context, args.kubeconfig) == ("prod", "c1", None)
    assert parse_args(["list", "-A"]).all_namespaces is True
    assert parse_args(["list"]).namespace is None


def test_verb_options() -> None:
    assert parse_args(["promote", "x", "--full"]).full is True
    assert parse_args(["promote", "x"]).full is False
    assert parse_args(["undo", "x", "--to-revision", "2"]).to_revision == 2
    w = parse_args(["wait", "x"])
    assert (w.want, w.timeout) == ("ready", 600.0)
    w = parse_args(["wait", "x", "--for", "degraded", "--timeout", "1m30s"])
    assert (w.want, w.timeout) == ("degraded", 90.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: VERB"),
        (["get"], "required: NAME"),
        (["frobnicate", "x"], "invalid choice: 'frobnicate'"),
        (["get", "x", "-A"], "-A applies to list only"),
        (["undo", "x", "--to-revision", "0"], "revision number >= 1"),
        (["wait", "x", "--for", "happy"], "invalid choice: 'happy'"),
        (["get", "x", "-o", "wide"], "invalid choice: 'wide'"),
    ],
)
def test_usage_errors_are_cli_errors(argv: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message) as e:
        parse_args(argv)
    assert e.value.code == r.EXIT_ERROR and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), ("2h", 7200)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "m", "-1s", "1m1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(Exception, match="invalid duration"):
        parse_duration(text)


def test_ago() -> None:
    assert [r.ago(s) for s in (None, -3, 0, 59, 61, 600, 3700, 90000)] == [
        "-", "0s", "0s", "59s", "1m1s", "10m", "1h1m", "1d1h",
    ]  # fmt: skip


def test_readme_shows_what_the_plugin_prints() -> None:
    """README's `kubectl w2c` examples of get, the -w line and history are these renderings."""
    readme = (FIXTURES.parents[2] / "README.md").read_text()
    at = parse_iso("2026-11-25T13:27:50Z")

    def in_wso2(name: str) -> dict[str, Any]:
        obj = fx(name)
        obj["metadata"]["namespace"] = "wso2"
        return obj

    get = r.render_get(in_wso2("handmade-step-paused-timed"), at)
    assert f"$ kubectl w2c get wso2ei -n wso2\n{get}\n```" in readme
    assert f"Z {r.render_line(in_wso2('progressing'), at)}\n```" in readme
    assert (
        f"$ kubectl w2c history wso2ei\n{r.render_history(in_wso2('rolled-back'), at)}\n```"
        in readme
    )

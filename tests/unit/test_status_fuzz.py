"""Fuzzing the status readers and the text caps.

The readers get arbitrary JSON-like values and mutations of the real status objects in
tests/fixtures/status/; whatever they get, they must not raise and must return values within
their documented clamps. The writer's output must read back to what it was given.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_planner_properties import worlds
from tests.unit.test_status import NOW, status_of
from wso2_operator.model import IN_FLIGHT, NodeProgress, Phase, RolloutState
from wso2_operator.planner import display_phase, effective_target
from wso2_operator.status import (
    _HISTORY_TEXT,
    EARLIEST_TIME,
    FUTURE_SLACK,
    HISTORY_LIMIT,
    MAX_ATTEMPTS,
    MAX_GENERATION,
    MAX_STEP,
    NODE_NAME_RE,
    TOKEN_LIMIT,
    VERSION_RE,
    conditions_from_status,
    history_from_status,
    node_message_limit,
    parse_iso,
    progress_from_status,
    rollout_from_status,
)
from wso2_operator.textcap import (
    MESSAGE_LIMIT,
    NAME_LIMIT,
    REASON_LIMIT,
    VERSION_LIMIT,
    cap,
    cap_token,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "status"
FIXTURE_STATUSES = [
    json.loads(p.read_text()).get("status") or {} for p in sorted(FIXTURES.glob("*.json"))
]
# After every fixture's times, and NOW (2027) after that: a reader's clock for each case.
FIXTURE_NOW = 1_796_083_200.0  # 2026-12-01T00:00:00Z

KNOWN_KEYS = [
    "nodes",
    "rollout",
    "history",
    "conditions",
    "name",
    "phase",
    "step",
    "attempts",
    "target",
    "previousVersion",
    "message",
    "lastTransitionTime",
    "startTime",
    "endTime",
    "fromVersion",
    "toVersion",
    "failedVersion",
    "retryToken",
    "handBackToken",
    "rollingBack",
    "finished",
    "rollbackFailed",
    "type",
    "status",
    "reason",
    "observedGeneration",
    "result",
]
# Text with everything in it: controls, surrogates, bidi overrides, emoji.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=80)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
    | st.sampled_from([p.value for p in Phase] + ["True", "False", "Unknown", "1.0.0", "-1"])
    | st.sampled_from(
        ["2026-11-30T10:00:00Z", "2026-11-30T10:00:00.5+02:00", "2099-01-01T00:00:00Z"]
    )
)
KEYS = st.sampled_from(KNOWN_KEYS) | ANY_TEXT
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=12,
)
# Status-shaped: the known keys, each with a value that is often valid and otherwise anything.
TIME_TEXT = st.sampled_from(
    [
        "2026-11-30T10:00:00Z",
        "2026-11-30T10:00:00.5+02:00",
        "2026-11-30t10:00:00.123z",
        "2099-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "2026-11-30 10:00:00Z",
    ]
)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return valid | valid | JSON


VERSION_VALUES = field(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,70}", fullmatch=True))
TIME_VALUES = field(TIME_TEXT)
NODE_ROW = st.fixed_dictionaries(
    {"name": field(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,66}", fullmatch=True))},
    optional={
        "phase": field(st.sampled_from([p.value for p in Phase])),
        "step": field(st.integers(-5, MAX_STEP + 5)),
        "attempts": field(st.integers(-5, MAX_ATTEMPTS + 5)),
        "target": VERSION_VALUES,
        "previousVersion": VERSION_VALUES,
        "lastTransitionTime": TIME_VALUES,
        "startTime": TIME_VALUES,
        "message": field(ANY_TEXT),
    },
)
ROLLOUT = st.fixed_dictionaries(
    {},
    optional={
        "fromVersion": VERSION_VALUES,
        "toVersion": VERSION_VALUES,
        "failedVersion": VERSION_VALUES,
        "startTime": TIME_VALUES,
        "rollingBack": field(st.booleans()),
        "finished": field(st.booleans()),
        "rollbackFailed": field(st.booleans()),
        "retryToken": field(st.text(max_size=300)),
        "handBackToken": field(st.text(max_size=300)),
    },
)
HISTORY_ROW = st.fixed_dictionaries(
    {},
    optional={
        "fromVersion": VERSION_VALUES,
        "toVersion": VERSION_VALUES,
        "startTime": TIME_VALUES,
        "endTime": TIME_VALUES,
        "result": field(st.sampled_from(["Succeeded", "Failed", "RolledBack", "Superseded"])),
        "message": field(ANY_TEXT),
    },
)
CONDITION_ROW = st.fixed_dictionaries(
    {
        "type": field(st.sampled_from(["Ready", "Progressing", "Degraded"])),
        "status": field(st.sampled_from(["True", "False", "Unknown"])),
    },
    optional={
        "reason": field(ANY_TEXT),
        "message": field(ANY_TEXT),
        "lastTransitionTime": TIME_VALUES,
        "observedGeneration": field(st.integers(-5, 2**64)),
    },
)


def rows(row: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    listed = st.lists(row | row | JSON, max_size=12)
    return listed | listed | JSON


STATUSES = st.fixed_dictionaries(
    {
        "nodes": rows(NODE_ROW),
        "rollout": ROLLOUT | ROLLOUT | JSON,
        "history": rows(HISTORY_ROW),
        "conditions": rows(CONDITION_ROW),
    },
    optional={"junk": JSON},
)
CLEAN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


@st.composite
def mutated_fixtures(draw) -> dict[str, Any]:
    """A real status with a few values replaced, deleted or wrapped in a list."""
    status = copy.deepcopy(draw(st.sampled_from(FIXTURE_STATUSES)))
    for _ in range(draw(st.integers(1, 6))):
        node: Any = status
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, dict | list) and child and draw(st.booleans()):
                node = child
                continue
            action = draw(st.sampled_from(["replace", "delete", "wrap"]))
            if action == "replace":
                node[key] = draw(JSON)
            elif action == "delete":
                del node[key]
            else:
                node[key] = [child]
            break
    return status


def check_time(ts: float | None, now: float) -> None:
    assert ts is None or (type(ts) is float and EARLIEST_TIME <= ts <= now + FUTURE_SLACK)


def check_version(v: str | None) -> None:
    assert v is None or (type(v) is str and VERSION_RE.fullmatch(v))


def check_progress(out: object, now: float) -> None:
    assert type(out) is dict
    for name, p in out.items():
        assert type(name) is str and NODE_NAME_RE.fullmatch(name)
        assert type(p) is NodeProgress and type(p.phase) is Phase
        check_version(p.target)
        check_version(p.previous_version)
        assert type(p.step) is int and 0 <= p.step <= MAX_STEP
        assert type(p.attempts) is int and 0 <= p.attempts <= MAX_ATTEMPTS
        check_time(p.since, now)
        check_time(p.start, now)
        check_text(p.message, MESSAGE_LIMIT)
        if p.phase not in IN_FLIGHT and p.phase != Phase.FAILED:
            assert p.message == ""


def check_rollout(r: object, now: float) -> None:
    assert type(r) is RolloutState
    for v in (r.from_version, r.to_version, r.failed_version):
        check_version(v)
    check_time(r.start, now)
    for flag in (r.rolling_back, r.finished, r.rollback_failed):
        assert type(flag) is bool
    for token in (r.retry_token, r.hand_back_token):
        assert token is None or (type(token) is str and len(token) <= TOKEN_LIMIT)


def check_text(value: object, limit: int) -> None:
    assert type(value) is str and len(value) <= limit and not CLEAN.search(value)


def check_history(h: object, now: float) -> None:
    assert type(h) is list and len(h) <= HISTORY_LIMIT
    for e in h:
        assert type(e) is dict and e
        # Every field status.py keeps (hypothesis found `attempts` missing from this list).
        assert set(e) <= {*_HISTORY_TEXT, "startTime", "endTime", "attempts"}
        if "attempts" in e:
            assert type(e["attempts"]) is int and 1 < e["attempts"] <= MAX_ATTEMPTS
        for key in ("fromVersion", "toVersion"):
            if key in e:
                check_text(e[key], VERSION_LIMIT)
        if "result" in e:
            check_text(e["result"], NAME_LIMIT)
        if "message" in e:
            check_text(e["message"], MESSAGE_LIMIT)
        for key in ("startTime", "endTime"):
            if key in e:
                assert parse_iso(e[key], now) is not None
    json.dumps(h, ensure_ascii=False).encode()  # writable back as UTF-8


def check_conditions(cs: object, now: float) -> None:
    assert type(cs) is list and len(cs) <= 16
    assert len({c["type"] for c in cs}) == len(cs)
    for c in cs:
        assert set(c) <= {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }
        check_text(c["type"], NAME_LIMIT)
        assert c["status"] in ("True", "False", "Unknown")
        check_text(c["reason"], REASON_LIMIT)
        check_text(c["message"], MESSAGE_LIMIT)
        if "lastTransitionTime" in c:
            assert parse_iso(c["lastTransitionTime"], now) is not None
        if "observedGeneration" in c:
            g = c["observedGeneration"]
            assert type(g) is int and 0 <= g <= MAX_GENERATION


def check_all(status: object, now: float) -> None:
    check_progress(progress_from_status(status, now), now)
    check_rollout(rollout_from_status(status, now), now)
    check_history(history_from_status(status, now), now)
    check_conditions(conditions_from_status(status, now), now)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(JSON)
def test_readers_take_any_json_value_as_status(value):
    check_all(value, NOW)


@FUZZ
@given(STATUSES)
def test_readers_take_any_status_shaped_value(status):
    check_all(status, NOW)


@FUZZ
@given(mutated_fixtures())
def test_readers_take_mutated_real_statuses(status):
    check_all(status, FIXTURE_NOW)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(FIXTURE_STATUSES))
def test_real_statuses_read_back_whole(status):
    # Unmutated, nothing the operator wrote is dropped.
    assert set(progress_from_status(status, FIXTURE_NOW)) == {
        r["name"] for r in status.get("nodes", [])
    }
    assert history_from_status(status, FIXTURE_NOW) == status.get("history", [])
    assert conditions_from_status(status, FIXTURE_NOW) == status.get("conditions", [])


@FUZZ
@given(JSON)
def test_parse_iso_takes_anything(value):
    check_time(parse_iso(value, NOW), NOW)


@FUZZ
@given(
    st.integers(int(EARLIEST_TIME), int(NOW)),
    st.integers(0, 999_999),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
    st.booleans(),
    st.booleans(),
)
def test_parse_iso_reads_every_rfc3339_rendering(seconds, micros, offset_min, lower, zulu):
    """The same instant written with a fraction and in any offset reads back the same."""
    tz = dt.timezone(dt.timedelta(minutes=0 if zulu else offset_min))
    t = dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=micros).astimezone(tz)
    text = t.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}"
    if zulu:
        text += "Z"
    else:
        sign = "-" if offset_min < 0 else "+"
        text += f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    if lower:
        text = text.lower()
    assert parse_iso(text, NOW) == seconds + micros / 1e6


# ------------------------------------------------------------------ textcap

LIMITS = st.integers(0, 300)


@FUZZ
@given(ANY_TEXT | JSON | st.text(max_size=1000), LIMITS)
def test_cap_is_bounded_clean_and_idempotent(value, limit):
    out = cap(value, limit)
    assert type(out) is str and len(out) <= limit  # the marker is within the limit
    assert not CLEAN.search(out)
    out.encode("utf-8")
    assert cap(out, limit) == out


@FUZZ
@given(ANY_TEXT | JSON | st.text(max_size=1000), LIMITS)
def test_cap_token_is_bounded_ascii_and_idempotent(value, limit):
    out = cap_token(value, limit)
    assert type(out) is str and len(out) <= limit
    assert all(" " <= ch <= "~" and ch not in '"\\<>&' for ch in out)
    assert len(json.dumps(out)) == len(out) + 2  # one byte a character, quotes aside
    assert cap_token(out, limit) == out


@FUZZ
@given(st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf")), max_size=400))
def test_cap_keeps_clean_text_within_the_limit_and_marks_the_cut(text):
    limit = 100
    out = cap(text, limit)
    if len(text) <= limit:
        assert out == text
        return
    # Cut: exactly limit long, the kept start verbatim, then "… [+N chars]" with N the rest.
    assert len(out) == limit
    m = re.fullmatch(r"(.*)\u2026 \[\+(\d+) chars\]", out, re.DOTALL)
    assert m is not None
    kept, dropped = m.group(1), int(m.group(2))
    assert text.startswith(kept) and len(kept) + dropped == len(text)


@FUZZ
@given(st.text(st.characters(exclude_categories=()), max_size=60))
def test_cap_never_leaves_a_surrogate(text):
    # Python's own strings can hold surrogate halves; none may reach status (UTF-8 would fail).
    for limit in (5, 30, 60):
        out = cap(text, limit)
        assert not any(unicodedata.category(ch) == "Cs" for ch in out)


# ------------------------------------------------------------------ round trip

VERSIONS = st.from_regex(VERSION_RE, fullmatch=True)
SAFE_TEXT = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf")) | st.sampled_from("\n\t"),
    min_size=1,
    max_size=200,
)
TIMES = st.integers(int(EARLIEST_TIME), int(NOW)).map(float) | st.none()


@st.composite
def valid_worlds(draw):
    """A world from the planner's properties, with progress that status can hold exactly:
    in-flight and failed nodes carry a message; the others show their display phase."""
    spec, observed, _, rollout = draw(worlds())
    rollout = RolloutState(
        from_version=draw(VERSIONS | st.none()),
        to_version=draw(VERSIONS | st.none()),
        start=draw(TIMES),
        rolling_back=draw(st.booleans()),
        failed_version=draw(st.sampled_from([None, spec.version]) | VERSIONS),
        retry_token=draw(st.none() | st.text(max_size=TOKEN_LIMIT)),
        hand_back_token=draw(st.none() | st.text(max_size=TOKEN_LIMIT)),
        finished=draw(st.booleans()),
        rollback_failed=draw(st.booleans()),
    )
    target, _, _ = effective_target(spec, rollout)
    limit = node_message_limit(len(spec.node_names))
    progress = {}
    for n in spec.node_names:
        flying = draw(st.sampled_from([*sorted(IN_FLIGHT), Phase.FAILED, None, None]))
        p = NodeProgress(
            target=draw(VERSIONS | st.none()),
            previous_version=draw(VERSIONS | st.none()),
            step=draw(st.integers(0, MAX_STEP)),
            since=draw(TIMES),
            start=draw(TIMES),
            attempts=draw(st.integers(0, MAX_ATTEMPTS)),
        )
        if flying is None:
            p = replace(p, phase=display_phase(p, observed[n], target))
        else:
            message = draw(SAFE_TEXT.filter(lambda m: len(m) <= limit))
            p = replace(p, phase=flying, message=message)
        progress[n] = p
    return spec, observed, progress, rollout


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(valid_worlds())
def test_summarize_reads_back_to_the_same_progress_and_rollout(world):
    spec, observed, progress, rollout = world
    st_ = status_of(spec, observed, progress, rollout)
    assert progress_from_status(st_, NOW) == progress
    assert rollout_from_status(st_, NOW) == rollout
    # ...and survives the trip through JSON, as it does through the apiserver.
    again = json.loads(json.dumps(st_))
    assert progress_from_status(again, NOW) == progress
    assert rollout_from_status(again, NOW) == rollout

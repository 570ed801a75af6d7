"""Fuzzing of the HAProxy reply parsers (no I/O).

The LB's replies are remote input: a compromised or broken LB, or anything that answers on a TCP
admin port, controls every byte. Whatever it sends, the parsers must either return well-typed,
bounded values or raise LBProtocolError / HAProxyCommandError; nothing else may escape, because
callers only catch the operator's typed errors.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.test_haproxy_parse import (
    FULL_SHOW_STAT,
    ROW_DOWN_FORCED,
    ROW_DRAIN_STALE,
    ROW_MAINT,
    ROW_UP,
    SERVERS_STATE_DRAIN,
    SERVERS_STATE_FORCED_DOWN,
    stat,
)
from wso2_operator.errors import HAProxyCommandError, LBProtocolError
from wso2_operator.haproxy_parse import (
    FIELD_CAP,
    NAME_RE,
    RAW_FIELD_CAP,
    REPLY_TEXT_CAP,
    ServerStat,
    ServerState,
    clip,
    fresh_pass_after_forced_down,
    merge_state,
    parse_servers_state,
    parse_show_stat,
    raise_for_error,
)

INT64 = range(-(2**63), 2**63)
# A message is the parser's own words plus at most REPLY_TEXT_CAP characters of remote text.
MESSAGE_MAX = REPLY_TEXT_CAP + 200
# 400 examples a test keeps the file at a few seconds; set PARSE_FUZZ_EXAMPLES for a long run.
FUZZ = settings(
    max_examples=int(os.environ.get("PARSE_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REAL_STATS = [
    FULL_SHOW_STAT,
    stat(ROW_UP, ROW_MAINT),
    stat(ROW_UP, ROW_DRAIN_STALE),
    stat(ROW_DOWN_FORCED),
]
REAL_STATES = [SERVERS_STATE_DRAIN, SERVERS_STATE_FORCED_DOWN]

# Pieces a hostile or broken LB might splice into a reply: CSV syntax, line breaks of every kind
# str.splitlines() knows, NUL (csv refuses it), invalid UTF-8 after decode('replace'), bidi and
# terminal control characters, non-ASCII digits that int() would accept, a prompt, and fields
# longer than csv's field_size_limit or any sane status.
NASTY = st.sampled_from(
    [
        ",",
        '"',
        '""',
        "\n",
        "\r\n",
        "\r",
        "\x00",
        "\x0b",
        "\x1c",
        "\x85",
        "\u2028",
        "\ufffd",
        "\x1b[31m",
        "\u202e",
        "#",
        "# ",
        "\n> ",
        "-",
        "-1",
        "9" * 25,
        "9" * 5000,
        "\u0663",  # ARABIC-INDIC DIGIT THREE: int() accepts it
        "1_000",  # int() accepts underscores too
        " 7 ",
        "UP",
        "MAINT",
        "DRAIN",
        "L7OK",
        "* L7OK",
        "node1",
        "PRD_wso2ei",
        "FRONTEND",
        "BACKEND",
        "x" * 300,
        "y" * 200_000,
    ]
)
PIECE = st.one_of(NASTY, st.text(max_size=20))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A real reply with a few pieces inserted, replaced or deleted at random places."""
    text = draw(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "replace", "delete", "truncate"]))
        pos = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:pos] + draw(PIECE) + text[pos:]
        elif op == "replace":
            end = draw(st.integers(pos, min(len(text), pos + 40)))
            text = text[:pos] + draw(PIECE) + text[end:]
        elif op == "delete":
            end = draw(st.integers(pos, min(len(text), pos + 40)))
            text = text[:pos] + text[end:]
        else:
            text = text[:pos]
    return text


@st.composite
def field_mutated_stat(draw: st.DrawFn) -> str:
    """A real `show stat` reply with whole CSV fields replaced (keeps the structure valid)."""
    rows = list(csv.reader(draw(st.sampled_from(REAL_STATS))[2:].splitlines()))
    header = rows[0]
    for _ in range(draw(st.integers(1, 8))):
        r = draw(st.integers(1, len(rows) - 1))
        col = draw(
            st.one_of(
                st.sampled_from(
                    [header.index(c) for c in ("svname", "status", "scur", "qcur", "check_status")]
                ),
                st.integers(0, len(header) - 1),
            )
        )
        while len(rows[r]) <= col:
            rows[r].append("")
        rows[r][col] = draw(PIECE)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return "# " + buf.getvalue()


ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=400) | st.text(max_size=400)
STAT_TEXT = st.one_of(
    ANY_TEXT,
    ANY_TEXT.map(lambda t: stat(t)),
    mutated(st.sampled_from(REAL_STATS)),
    field_mutated_stat(),
)
STATE_TEXT = st.one_of(
    ANY_TEXT,
    ANY_TEXT.map(lambda t: SERVERS_STATE_DRAIN.split("\n3 ")[0] + "\n" + t),
    mutated(st.sampled_from(REAL_STATES)),
)


def _assert_bounded_text(value: object, cap: int) -> None:
    assert isinstance(value, str)
    assert len(value) <= cap, (len(value), value[:80])
    assert value.isprintable(), repr(value[:80])


def _assert_opt_int(value: object) -> None:
    assert value is None or (type(value) is int and value in INT64), value


def check_stat(s: ServerStat) -> None:
    assert isinstance(s, ServerStat)
    assert isinstance(s.name, str) and NAME_RE.fullmatch(s.name), s.name[:80]
    _assert_bounded_text(s.status, FIELD_CAP)
    _assert_bounded_text(s.check_status, FIELD_CAP)
    for v in (s.scur, s.qcur):
        assert type(v) is int and 0 <= v < 2**63, v
    assert type(s.weight) is int and s.weight in INT64
    for v in (s.lastchg, s.check_health, s.check_rise, s.check_fall):
        _assert_opt_int(v)
    for v in (s.admin_flags, s.op_state, s.check_state):
        _assert_opt_int(v)
    for k, v in s.raw.items():
        assert isinstance(k, str) and isinstance(v, str)
        assert len(v) <= RAW_FIELD_CAP
    # Every derived property is total and well-typed.
    assert s.admin_state in ("READY", "DRAIN", "MAINT")
    for flag in (s.is_up, s.is_maint, s.is_drain, s.is_down, s.op_running):
        assert type(flag) is bool
    assert type(s.check_in_progress) is bool and type(s.check_passed) is bool
    assert s.check_configured in (None, True, False)
    assert type(s.sessions) is int
    _assert_bounded_text(s.check_result, FIELD_CAP)
    assert type(fresh_pass_after_forced_down(s)) is bool


def check_state(s: ServerState) -> None:
    assert isinstance(s, ServerState)
    assert isinstance(s.name, str) and NAME_RE.fullmatch(s.name), s.name[:80]
    assert type(s.op_state) is int and 0 <= s.op_state < 2**63
    assert type(s.admin_flags) is int and 0 <= s.admin_flags < 2**63
    for v in (
        s.check_status,
        s.check_result,
        s.check_health,
        s.check_state,
        s.time_since_last_change,
    ):
        _assert_opt_int(v)
    for k, v in s.raw.items():
        assert isinstance(k, str) and isinstance(v, str)
        assert len(v) <= RAW_FIELD_CAP
    assert s.admin_state in ("READY", "DRAIN", "MAINT")
    assert type(s.check_configured) is bool


def check_message(exc: BaseException) -> None:
    text = str(exc)
    assert len(text) <= MESSAGE_MAX, len(text)
    assert text.isprintable(), repr(text[:120])


def run_stat(text: str, backend: str | None) -> dict[str, ServerStat] | None:
    try:
        out = parse_show_stat(text, backend=backend, lb="lb1")
    except LBProtocolError as exc:
        check_message(exc)
        return None
    assert isinstance(out, dict)
    for name, s in out.items():
        assert name == s.name
        check_stat(s)
    return out


def run_state(text: str, backend: str | None) -> dict[str, ServerState] | None:
    try:
        out = parse_servers_state(text, backend=backend, lb="lb1")
    except LBProtocolError as exc:
        check_message(exc)
        return None
    assert isinstance(out, dict)
    for name, s in out.items():
        assert name == s.name
        check_state(s)
    return out


# ------------------------------------------------------------------------------------ tests


@FUZZ
@given(text=STAT_TEXT, backend=st.sampled_from([None, "PRD_wso2ei"]))
@example(text=stat("PRD_wso2ei,node1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP\x00"), backend=None)
@example(text=stat("PRD_wso2ei,node1,0,0,0,0,,0,0,0,,0,,0,0,0,0," + "U" * 200_000), backend=None)
@example(text=stat(ROW_UP.replace(",UP,", ",UP\x1b[2J" + "P" * 5000 + ",")), backend=None)
@example(text=stat(ROW_UP.replace("node1", "node1;quit")), backend=None)
@example(text=stat(ROW_UP.replace("node1,0,0,0", "node1,0,0,abc")), backend=None)
def test_parse_show_stat_never_escapes(text: str, backend: str | None) -> None:
    run_stat(text, backend)


@FUZZ
@given(text=STATE_TEXT, backend=st.sampled_from([None, "PRD_wso2ei"]))
@example(text=SERVERS_STATE_DRAIN.replace(" 2 8 1 1 ", " \u0662 8 1 1 "), backend=None)
@example(text=SERVERS_STATE_DRAIN.replace(" 2 8 1 1 ", " 1_0 8 1 1 "), backend=None)
@example(text=SERVERS_STATE_DRAIN.replace("node2", "n" * 5000 + "\x1b"), backend=None)
def test_parse_servers_state_never_escapes(text: str, backend: str | None) -> None:
    run_state(text, backend)


@FUZZ
@given(stat_text=STAT_TEXT, state_text=STATE_TEXT)
def test_merge_and_readiness_rule_are_total(stat_text: str, state_text: str) -> None:
    stats = run_stat(stat_text, None) or {}
    states = run_state(state_text, None) or {}
    real_states = parse_servers_state(SERVERS_STATE_DRAIN)
    for name, s in stats.items():
        for st_ in (states.get(name), real_states.get(name), None):
            merged = merge_state(s, st_)
            check_stat(merged)
            assert merged.status == s.status and merged.scur == s.scur
    for name, s in states.items():
        # A real stat row merged with a fuzzed state row: flags of any value are handled.
        base = parse_show_stat(stat(ROW_UP))["node1"]
        check_stat(merge_state(dataclasses.replace(base, name=name), s))


@FUZZ
@given(
    reply=st.one_of(
        ANY_TEXT,
        st.tuples(
            st.sampled_from(
                [
                    "No such server.",
                    "No such backend.",
                    "Permission denied",
                    "Unknown command, x",
                    "Require 'backend/server'.",
                    "",
                ]
            ),
            st.lists(PIECE, max_size=6),
        ).map(lambda t: t[0] + "".join(t[1])),
    ),
    expect_empty=st.booleans(),
)
@example(reply="\x1b]0;pwned\x07" + "E" * 100_000, expect_empty=True)
@example(reply="Unknown command\u202e" + "U" * 10_000, expect_empty=True)
@example(reply="No such server." + "S" * 10_000, expect_empty=False)
def test_raise_for_error_only_raises_command_errors(reply: str, expect_empty: bool) -> None:
    try:
        raise_for_error(
            reply,
            lb="lb1",
            command="set server b/s state drain",
            backend="b",
            server="s",
            expect_empty=expect_empty,
        )
    except HAProxyCommandError as exc:
        check_message(exc)
        _assert_bounded_text(exc.reply, REPLY_TEXT_CAP)
        assert exc.lb == "lb1"
    else:
        assert not expect_empty or not reply.strip()


@settings(max_examples=300, deadline=None)
@given(text=st.text(), limit=st.integers(3, 500))
def test_clip_is_bounded_and_printable(text: str, limit: int) -> None:
    out = clip(text, limit)
    assert len(out) <= limit and out.isprintable()
    if len(text) <= limit and text.isprintable():
        assert out == text


def test_csv_errors_become_protocol_errors() -> None:
    """Found by the fuzzer: a field over csv's field_size_limit (128 KiB) raised csv.Error."""
    text = stat(ROW_UP.replace("Layer7 check passed", "L" * 200_000))
    with pytest.raises(LBProtocolError) as info:
        parse_show_stat(text, lb="lb1")
    check_message(info.value)


@pytest.mark.parametrize("junk", ["\x1b[2J" + "P" * 5000, "\x00", "\u202e\x07"])
def test_remote_strings_are_capped_and_sanitised(junk: str) -> None:
    """Found by the fuzzer: status text went unbounded and raw (escape codes, NUL) into
    ServerStat, and from there into the CR status."""
    s = parse_show_stat(stat(ROW_UP.replace(",UP,", f",UP{junk},")))["node1"]
    assert len(s.status) <= FIELD_CAP and s.status.isprintable() and s.status.startswith("UP")
    assert s.is_up  # still a prefix match, as HAProxy's statuses are
    bad_name = stat(ROW_UP.replace("node1", f"node1{junk}"))
    with pytest.raises(LBProtocolError):
        parse_show_stat(bad_name, lb="lb1")


@pytest.mark.parametrize("bad", ["abc", "-1", "\u0663", "1_0", "9" * 25])
def test_session_counters_must_be_plain_numbers(bad: str) -> None:
    """A garbled scur must not read as 0 sessions (0 means 'drained' to the drain logic)."""
    rows = list(csv.reader(stat(ROW_UP)[2:].splitlines()))
    rows[1][rows[0].index("scur")] = bad
    text = "# " + "\n".join(",".join(r) for r in rows)
    with pytest.raises(LBProtocolError):
        parse_show_stat(text, lb="lb1")


@pytest.mark.parametrize("bad", ["\u0662", "1_0", "+2", "9" * 25])
def test_servers_state_numbers_must_be_plain(bad: str) -> None:
    """int() accepts non-ASCII digits, '_' and '+'; HAProxy never sends them."""
    text = SERVERS_STATE_DRAIN.replace(" 2 8 1 1 ", f" {bad} 8 1 1 ")
    with pytest.raises(LBProtocolError):
        parse_servers_state(text, lb="lb1")

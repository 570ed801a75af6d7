"""Pure parsing of HAProxy 2.6 runtime-API replies (no I/O, unit-tested on captured text)."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from .errors import (
    HAProxyCommandError,
    LBProtocolError,
    NoSuchBackend,
    NoSuchServer,
    PermissionDenied,
    UnknownCommand,
)
from .textcap import clip as clip_text

AdminState = Literal["READY", "DRAIN", "MAINT"]

# `show servers state` srv_admin_state flags (HAProxy 2.6 server-t.h).
ADMF_FMAINT = 0x01  # forced maintenance (`state maint`, `disable server`)
ADMF_IMAINT = 0x02  # inherited from a tracked server
ADMF_CMAINT = 0x04  # `disabled` in the config
ADMF_FDRAIN = 0x08  # forced drain (`state drain`)
ADMF_IDRAIN = 0x10  # inherited drain
ADMF_RMAINT = 0x20  # DNS resolution failure
ADMF_MAINT_MASK = ADMF_FMAINT | ADMF_IMAINT | ADMF_CMAINT | ADMF_RMAINT
ADMF_DRAIN_MASK = ADMF_FDRAIN | ADMF_IDRAIN

# srv_op_state values.
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3

# srv_check_state flags (check-t.h).
CHK_ST_INPROGRESS = 0x01
CHK_ST_CONFIGURED = 0x02
CHK_ST_ENABLED = 0x04
CHK_ST_PAUSED = 0x08

PASSING_CHECKS = frozenset({"L4OK", "L6OK", "L7OK", "L7OKC"})

# HAProxy accepts more in names, but these are the characters that are safe to put on a CLI line
# unquoted (no spaces, no ';', no '/'). They are also exactly the characters HAProxy 2.6 allows in
# proxy and server names (tools.c invalid_char()), so a reply naming anything else is corrupt.
NAME_RE = re.compile(r"[A-Za-z0-9_.:-]+")

# Everything below is remote input (a TCP admin socket has no authentication, and any LB may be
# broken), so every string that leaves this module is bounded and printable:
# * REPLY_TEXT_CAP: reply text quoted in an exception message or kept in ``exc.reply``; enough
#   for any HAProxy error line ("Require 'backend/server'.") and short enough for a log line
#   or a status condition.
# * FIELD_CAP: ``status``/``check_status``, which go into the CR status and events; the longest
#   real value is "MAINT (resolution)" (18 chars).
# * NAME_CAP: server names in replies. HAProxy sets no limit, but ours come from the spec.
# * RAW_FIELD_CAP: each value kept in ``raw`` (real ones are short: addr, check_desc...).
REPLY_TEXT_CAP = 200
FIELD_CAP = 64
NAME_CAP = 128
RAW_FIELD_CAP = 256

# HAProxy prints counters as plain ASCII decimals. int() would also take " 7", "+7", "1_000" and
# non-ASCII digits ("\u0663"), and up to 4300 digits: none of those is a real HAProxy number.
_INT_RE = re.compile(r"-?[0-9]{1,18}")
_UINT_RE = re.compile(r"[0-9]{1,18}")


def clip(text: str, limit: int = REPLY_TEXT_CAP) -> str:
    """Remote text made safe for a message (see textcap.clip)."""
    return clip_text(text, limit)


def _int(value: str | None) -> int:
    """A lenient counter: empty or malformed reads as 0 (HAProxy leaves unused columns empty)."""
    if value is None or not _INT_RE.fullmatch(value):
        return 0
    return int(value)


def _opt_int(value: str | None) -> int | None:
    if value is None or not _INT_RE.fullmatch(value):
        return None
    return int(value)


def _sessions(value: str | None, column: str, lb: str | None) -> int:
    """``scur``/``qcur`` strictly: a garbled count must not read as 0, because 0 sessions is
    what lets a drain finish and the node be taken down."""
    if value is None or value == "":
        return 0  # HAProxy leaves the column empty where it does not apply
    if not _UINT_RE.fullmatch(value):
        raise LBProtocolError(f"'show stat': bad {column} value {clip(value, 40)!r}", lb=lb)
    return int(value)


def _field(value: str | None) -> str:
    return clip(value or "", FIELD_CAP)


# HAProxy 2.6's show stat has about 100 columns; a peer that sends thousands must not make every
# parsed row hold thousands of strings (a 2 MiB reply would keep ~13 times its size).
RAW_COLUMNS = 128


def _raw(rec: dict[str, str]) -> dict[str, str]:
    # The usual row is within every cap and kept as it is (it was built for this row alone):
    # copying ~100 fields per server per read was a noticeable share of a big rollout's CPU.
    if (
        len(rec) <= RAW_COLUMNS
        and max(map(len, rec), default=0) <= RAW_FIELD_CAP
        and max(map(len, rec.values()), default=0) <= RAW_FIELD_CAP
    ):
        return rec
    return {k[:RAW_FIELD_CAP]: v[:RAW_FIELD_CAP] for k, v in list(rec.items())[:RAW_COLUMNS]}


def _check_row_name(name: str, what: str, lb: str | None) -> None:
    if len(name) > NAME_CAP or not NAME_RE.fullmatch(name):
        raise LBProtocolError(f"{what}: invalid server name {clip(name, 40)!r}", lb=lb)


@dataclass(frozen=True)
class ServerStat:
    """One server as seen by one LB.

    ``status``, ``scur``... come from ``show stat``. ``admin_flags``/``op_state``/``check_state``
    are filled in only when merged with ``show servers state`` (see ``merge_state``): ``show stat``
    alone cannot tell a DRAIN server that is DOWN from a READY one that is DOWN (both say
    ``DOWN``).
    """

    name: str
    status: str
    scur: int
    qcur: int
    check_status: str
    weight: int
    lastchg: int | None
    check_health: int | None = None
    check_rise: int | None = None
    check_fall: int | None = None
    admin_flags: int | None = None
    op_state: int | None = None
    check_state: int | None = None
    raw: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------- admin state
    @property
    def admin_state(self) -> AdminState:
        if self.admin_flags is not None:
            if self.admin_flags & ADMF_MAINT_MASK:
                return "MAINT"
            if self.admin_flags & ADMF_DRAIN_MASK:
                return "DRAIN"
            return "READY"
        # Best effort from the status text (a DOWN server in DRAIN shows as plain "DOWN").
        if self.status.startswith("MAINT"):
            return "MAINT"
        if self.status.startswith("DRAIN"):
            return "DRAIN"
        return "READY"

    # ------------------------------------------------------------------- operational
    @property
    def is_up(self) -> bool:
        return self.status.startswith("UP")

    @property
    def is_maint(self) -> bool:
        return self.status.startswith("MAINT")

    @property
    def is_drain(self) -> bool:
        return self.status.startswith("DRAIN")

    @property
    def is_down(self) -> bool:
        return self.status.startswith("DOWN")

    @property
    def op_running(self) -> bool:
        """HAProxy considers the server alive (UP, DRAIN, NOLB), whatever its admin state."""
        if self.op_state is not None:
            return self.op_state in (OP_STARTING, OP_RUNNING, OP_STOPPING)
        return self.status.startswith(("UP", "DRAIN", "NOLB"))

    @property
    def sessions(self) -> int:
        return self.scur + self.qcur

    @property
    def check_in_progress(self) -> bool:
        return self.check_status.startswith("* ")

    @property
    def check_result(self) -> str:
        """Last completed check result without the in-progress marker, e.g. ``L7OK``."""
        return self.check_status[2:] if self.check_in_progress else self.check_status

    @property
    def check_passed(self) -> bool:
        return self.check_result in PASSING_CHECKS

    @property
    def check_configured(self) -> bool | None:
        if self.check_state is not None:
            return bool(self.check_state & CHK_ST_CONFIGURED)
        if self.status == "no check":
            return False
        return None


@dataclass(frozen=True)
class ServerState:
    """One row of ``show servers state <backend>``."""

    name: str
    op_state: int
    admin_flags: int
    check_status: int | None
    check_result: int | None
    check_health: int | None
    check_state: int | None
    time_since_last_change: int | None
    raw: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def admin_state(self) -> AdminState:
        if self.admin_flags & ADMF_MAINT_MASK:
            return "MAINT"
        if self.admin_flags & ADMF_DRAIN_MASK:
            return "DRAIN"
        return "READY"

    @property
    def check_configured(self) -> bool:
        return bool((self.check_state or 0) & CHK_ST_CONFIGURED)


def raise_for_error(
    reply: str,
    *,
    lb: str | None,
    command: str,
    backend: str = "",
    server: str = "",
    expect_empty: bool = False,
) -> None:
    """Turn HAProxy's textual errors into typed ones. HAProxy has no status codes.

    The reply is remote text: only a clipped, sanitised copy goes into the message and into
    ``exc.reply`` (see ``clip``).
    """
    full = reply.strip()
    if not full:
        return
    first = full.splitlines()[0]
    text = clip(full)
    where = f"LB {lb}: " if lb else ""
    if first.startswith("No such server"):
        raise NoSuchServer(
            f"{where}no server {server!r} in backend {backend!r}",
            lb=lb,
            backend=backend,
            servers=[server] if server else [],
            command=command,
            reply=text,
        )
    if first.startswith(("No such backend", "Can't find backend", "No such proxy")):
        raise NoSuchBackend(
            f"{where}no backend {backend!r}", lb=lb, backend=backend, command=command, reply=text
        )
    if first.startswith("Permission denied"):
        raise PermissionDenied(
            f"{where}permission denied for {command.split(' ')[0]!r}: the stats socket must be "
            "'level admin'",
            lb=lb,
            command=command,
            reply=text,
        )
    if first.startswith("Unknown command"):
        raise UnknownCommand(
            f"{where}HAProxy does not know {command!r}",
            lb=lb,
            command=command,
            reply=clip(first),
        )
    if expect_empty:
        raise HAProxyCommandError(
            f"{where}{command!r} failed: {clip(first)}", lb=lb, command=command, reply=text
        )


def parse_show_stat(
    text: str, *, backend: str | None = None, lb: str | None = None
) -> dict[str, ServerStat]:
    """Parse ``show stat [<backend> 4 -1]`` CSV by its header names; returns servers by name.

    FRONTEND/BACKEND summary rows are skipped, as are rows of other proxies when ``backend`` is
    given.
    """
    lines = text.splitlines()
    # By index, not pop(0): a reply of a million blank lines must not cost quadratic time.
    first = next((i for i, ln in enumerate(lines) if ln.strip()), len(lines))
    lines = lines[first:]
    if not lines or not lines[0].startswith("# "):
        raise LBProtocolError(f"unexpected 'show stat' reply: {clip(text)}", lb=lb)
    header = [h.strip() for h in lines[0][2:].split(",")]
    for required in ("pxname", "svname", "status", "scur", "qcur"):
        if required not in header:
            raise LBProtocolError(f"'show stat' header lacks {required!r}", lb=lb)
    out: dict[str, ServerStat] = {}
    try:
        for row in csv.reader(ln for ln in lines[1:] if ln.strip()):
            rec = dict(zip(header, row, strict=False))
            if backend is not None and rec.get("pxname") != backend:
                continue
            name = rec.get("svname", "")
            if not name or name in ("FRONTEND", "BACKEND"):
                continue
            _check_row_name(name, "'show stat'", lb)
            out[name] = ServerStat(
                name=name,
                status=_field(rec.get("status")),
                scur=_sessions(rec.get("scur"), "scur", lb),
                qcur=_sessions(rec.get("qcur"), "qcur", lb),
                check_status=_field(rec.get("check_status")),
                weight=_int(rec.get("weight")),
                lastchg=_opt_int(rec.get("lastchg")),
                check_health=_opt_int(rec.get("check_health")),
                check_rise=_opt_int(rec.get("check_rise")),
                check_fall=_opt_int(rec.get("check_fall")),
                raw=_raw(rec),
            )
    except csv.Error as exc:
        # e.g. "field larger than field limit (131072)": not an error type callers expect.
        raise LBProtocolError(f"malformed 'show stat' CSV: {clip(str(exc))}", lb=lb) from None
    return out


def parse_servers_state(
    text: str, *, backend: str | None = None, lb: str | None = None
) -> dict[str, ServerState]:
    """Parse ``show servers state [<backend>]`` (version line, ``# header``, space-separated)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header: list[str] | None = None
    out: dict[str, ServerState] = {}
    for ln in lines:
        if ln.startswith("#"):
            header = ln.lstrip("#").split()
            continue
        if header is None:
            if ln.strip().isdigit():  # format version, "1" in 2.x
                continue
            raise LBProtocolError(f"unexpected 'show servers state' reply: {clip(text)}", lb=lb)
        rec = dict(zip(header, ln.split(), strict=False))
        if backend is not None and rec.get("be_name") != backend:
            continue
        name = rec.get("srv_name")
        if not name:
            continue
        _check_row_name(name, "'show servers state'", lb)
        op_raw, admin_raw = rec.get("srv_op_state", ""), rec.get("srv_admin_state", "")
        if not _UINT_RE.fullmatch(op_raw) or not _UINT_RE.fullmatch(admin_raw):
            raise LBProtocolError(f"bad 'show servers state' row: {clip(ln)}", lb=lb)
        op_state, admin_flags = int(op_raw), int(admin_raw)
        out[name] = ServerState(
            name=name,
            op_state=op_state,
            admin_flags=admin_flags,
            check_status=_opt_int(rec.get("srv_check_status")),
            check_result=_opt_int(rec.get("srv_check_result")),
            check_health=_opt_int(rec.get("srv_check_health")),
            check_state=_opt_int(rec.get("srv_check_state")),
            time_since_last_change=_opt_int(rec.get("srv_time_since_last_change")),
            raw=_raw(rec),
        )
    if header is None:
        raise LBProtocolError(f"unexpected 'show servers state' reply: {clip(text)}", lb=lb)
    return out


def merge_state(stat: ServerStat, state: ServerState | None) -> ServerStat:
    if state is None:
        return stat
    return replace(
        stat,
        admin_flags=state.admin_flags,
        op_state=state.op_state,
        check_state=state.check_state,
    )


def fresh_pass_after_forced_down(s: ServerStat) -> bool:
    """The re-enable readiness rule, valid only after ``health down`` was forced (see haproxy.py).

    After a forced ``health down`` the server can only be operational again once ``rise``
    consecutive checks have passed, so "operational" here is proof of fresh passing checks.
    We also require the full-health display (plain ``DRAIN``, not ``DRAIN 1/2`` = a check has
    failed since) and a completed passing last check.
    """
    return (
        s.admin_state == "DRAIN"
        and s.op_running
        and s.status == "DRAIN"
        and s.check_passed
        and not s.check_in_progress
    )


__all__ = [
    "FIELD_CAP",
    "NAME_CAP",
    "NAME_RE",
    "RAW_FIELD_CAP",
    "REPLY_TEXT_CAP",
    "AdminState",
    "ServerStat",
    "ServerState",
    "clip",
    "fresh_pass_after_forced_down",
    "merge_state",
    "parse_servers_state",
    "parse_show_stat",
    "raise_for_error",
]

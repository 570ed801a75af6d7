"""What `kubectl w2c` shows and decides, without I/O (tested in tests/unit/test_cli_render.py).

Everything here takes a WSO2Cluster as the apiserver returns it (a dict) and returns text or a
decision. Status may be edited by hand, so every reader is total: a missing or mistyped field
reads as absent, never as a crash. Text that comes from status (messages, versions, LB states)
goes through `clip`, so a terminal escape or a line break in it cannot rewrite the screen.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .status import parse_iso, stored_token
from .textcap import clip

GROUP = "vmops.dev"
VERSION = "v1alpha1"
PLURAL = "wso2clusters"

RETRY_ANNOTATION = "vmops.dev/retry"
PROMOTE_ANNOTATION = "vmops.dev/promote"
PROMOTE_FULL_ANNOTATION = "vmops.dev/promote-full"
ABORT_ANNOTATION = "vmops.dev/abort"
# The status.rollout field in which the operator records the annotation value it acted on last.
TOKEN_FIELDS = {
    RETRY_ANNOTATION: "retryToken",
    PROMOTE_ANNOTATION: "promoteToken",
    PROMOTE_FULL_ANNOTATION: "promoteFullToken",
    ABORT_ANNOTATION: "abortToken",
}

# How Argo CD marks the resources it manages: the tracking annotation (the default since Argo CD
# 3.0, `application.resourceTrackingMethod: annotation`), and the tracking label of the `label`
# method (app.kubernetes.io/instance by default, or the label named by
# `application.instanceLabelKey`, for which argocd.argoproj.io/instance is the usual choice).
ARGOCD_ANNOTATIONS = ("argocd.argoproj.io/tracking-id",)
ARGOCD_LABELS = ("app.kubernetes.io/instance", "argocd.argoproj.io/instance")

WAIT_FOR = ("ready", "paused", "degraded")

# Exit codes (README, "kubectl w2c"): 0 done; 1 an error (no such cluster, forbidden, no
# kubeconfig, a refused undo, bad arguments); wait: 2 timed out, 3 cannot get there by itself.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 2
EXIT_FAILED = 3

_PHASE_COLOUR = {
    "Ready": "32",  # green
    "Progressing": "36",  # cyan
    "Paused": "33",  # yellow
    "Degraded": "31",  # red
    "RollingBack": "31",
    "Failed": "31",
    "Current": "32",
    "Passing": "32",
    "Good": "32",
    "Bad": "31",
    "Inconclusive": "33",
    "UP": "32",
    "DRAIN": "33",
    "MAINT": "33",
    "DOWN": "31",
    "Unreachable": "31",
    "Error": "31",
    "Succeeded": "32",
    "RolledBack": "33",
    "Superseded": "2",
    "InProgress": "36",
}


def use_colour(isatty: bool, env: Mapping[str, str]) -> bool:
    """Colours only on a terminal, and never when NO_COLOR is set to anything (no-color.org)."""
    return isatty and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


# --- total readers of an object ----------------------------------------------------------------


def _map(v: object) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _seq(v: object) -> Sequence[Any]:
    return v if isinstance(v, list | tuple) else ()


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def txt(v: object, limit: int = 200) -> str:
    """A value from the object as one line of printable text; "-" for absent or empty."""
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return clip(v, limit) or "-"


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(obj.get("metadata"))


def name_of(obj: Mapping[str, Any]) -> str:
    return txt(meta(obj).get("name"), 253)


def status_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(obj.get("status"))


def rollout_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(status_of(obj).get("rollout"))


def spec_update(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(_map(obj.get("spec")).get("update"))


def condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    for c in _seq(status_of(obj).get("conditions")):
        if _map(c).get("type") == ctype:
            return _map(c)
    return {}


def observed_current(obj: Mapping[str, Any]) -> bool:
    """Whether status was written for the object's current generation."""
    gen = _int(meta(obj).get("generation"))
    seen = _int(status_of(obj).get("observedGeneration"))
    return gen is not None and seen == gen


def spec_paused(obj: Mapping[str, Any]) -> bool:
    return spec_update(obj).get("paused") is True


def ago(seconds: float | None) -> str:
    """A duration the way kubectl prints ages: 42s, 5m10s, 3h4m, 2d5h."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _since(value: object, now: float) -> str:
    t = parse_iso(value, now)
    return "-" if t is None else ago(now - t)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- styling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    colour: bool = False

    def paint(self, text: str, word: str | None = None) -> str:
        code = _PHASE_COLOUR.get(word if word is not None else text.strip())
        if not self.colour or not code:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"

    def bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.colour else text


def table(header: Sequence[str], rows: Sequence[Sequence[str]], style: Style = Style()) -> str:
    """Columns padded as kubectl does (three spaces apart); known words coloured."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for n, row in enumerate([header, *rows]):
        cells = []
        for i, cell in enumerate(row):
            pad = "" if i == len(row) - 1 else " " * (widths[i] - len(cell) + 3)
            cells.append((cell if n == 0 else style.paint(cell)) + pad)
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


# --- get ---------------------------------------------------------------------------------------


def phase_of(obj: Mapping[str, Any]) -> str:
    return txt(status_of(obj).get("phase"), 64) if status_of(obj) else "Unknown"


def headline(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(reason, message): the Ready condition's reason (as `kubectl get w2c -o wide` shows it,
    and as README's troubleshooting table lists them), and the message that says most: the
    Degraded condition's when it holds, else Progressing's when it holds, else Ready's."""
    reason = txt(condition(obj, "Ready").get("reason"), 128)
    for ctype in ("Degraded", "Progressing"):
        c = condition(obj, ctype)
        if c.get("status") == "True":
            return reason, txt(c.get("message"), 300)
    return reason, txt(condition(obj, "Ready").get("message"), 300)


def step_text(obj: Mapping[str, Any], now: float) -> str:
    """The canary step cursor, e.g. "2/3: paused until 2026-11-25T13:28:05Z (in 45s)"."""
    r = rollout_of(obj)
    idx, count = _int(r.get("stepIndex")), _int(r.get("stepCount"))
    if idx is None or count is None or count < 1:
        return "-"
    out = f"{min(idx + 1, count)}/{count}"
    if r.get("stepMessage"):
        out += f": {txt(r.get('stepMessage'))}"
    end = parse_iso(r.get("pauseEndTime"), now)
    if end is not None:
        left = end - now
        out += f" (ends in {ago(left)})" if left > 0 else " (pause time is up)"
    return out


def rollout_text(obj: Mapping[str, Any], now: float) -> str:
    r = rollout_of(obj)
    if not r.get("toVersion"):
        return "-"
    out = f"{txt(r.get('fromVersion'), 64)} -> {txt(r.get('toVersion'), 64)}"
    states = []
    if r.get("rollingBack") is True:
        states.append("rolling back" if r.get("finished") is not True else "rolled back")
    if r.get("aborted") is True:
        states.append("aborted")
    if r.get("failedVersion"):
        states.append(f"{txt(r.get('failedVersion'), 64)} failed")
    if r.get("promotedFull") is True:
        states.append("promoted fully")
    states.append("finished" if r.get("finished") is True else "in progress")
    out += f" ({', '.join(states)})"
    started = parse_iso(r.get("startTime"), now)
    if started is not None:
        out += f", started {ago(now - started)} ago"
    return out


def lb_names(obj: Mapping[str, Any]) -> list[str]:
    """LB names in spec order, then any others status mentions."""
    names: list[str] = []
    for h in _seq(_map(_map(obj.get("spec")).get("loadBalancers")).get("hosts")):
        n = _map(h).get("name")
        if isinstance(n, str) and n not in names:
            names.append(n)
    for node in _seq(status_of(obj).get("nodes")):
        for n in _map(_map(node).get("loadBalancers")):
            if isinstance(n, str) and n not in names:
                names.append(n)
    return names


# A node's maintenance kind (status.nodes[].maintenance) -> where its commands are in the spec.
_KIND_COMMANDS = {"Restart": "restartCommands", "Reboot": "patchCommands"}


def command_count(obj: Mapping[str, Any], node: Mapping[str, Any]) -> int:
    """How many commands the node's update runs: provision's, or its maintenance kind's."""
    spec = _map(obj.get("spec"))
    key = _KIND_COMMANDS.get(str(node.get("maintenance")))
    if key == "restartCommands":
        # The CRD's default, for an object read without it (e.g. from a file).
        return len(_seq(_map(spec.get("maintenance")).get(key, ["stop", "start"])))
    if key is not None:
        return len(_seq(_map(spec.get("maintenance")).get(key)))
    return len(_seq(_map(spec.get("provision")).get("commands")))


def node_phase(node: Mapping[str, Any], commands: int) -> str:
    phase = txt(node.get("phase"), 64)
    step = _int(node.get("step"))
    if phase == "Provisioning" and step is not None and commands:
        phase += f" {min(step + 1, commands)}/{commands}"
    return phase


def analysis_by_node(obj: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for n in _seq(_map(status_of(obj).get("analysis")).get("nodes")):
        n = _map(n)
        if isinstance(n.get("name"), str):
            counts = "/".join(str(_int(n.get(k)) or 0) for k in ("good", "bad", "inconclusive"))
            out[n["name"]] = f"{txt(n.get('verdict'), 32)} {counts}"
    return out


def node_rows(obj: Mapping[str, Any], now: float) -> tuple[list[str], list[list[str]]]:
    lbs = lb_names(obj)
    verdicts = analysis_by_node(obj)
    revisions = {
        _map(n).get("name"): revision_text(_map(n).get("revision"))
        for n in _seq(status_of(obj).get("nodes"))
    }
    with_revision = any(revisions.values())  # only for clusters that use maintenance tokens
    header = ["NODE", "VERSION", *(["REVISION"] if with_revision else [])]
    header += ["PHASE", *[clip(n, 32).upper() for n in lbs], "HEALTHY"]
    if verdicts:
        header.append("ANALYSIS(G/B/I)")
    header += ["SINCE", "MESSAGE"]
    rows = []
    for node in _seq(status_of(obj).get("nodes")):
        node = _map(node)
        states = _map(node.get("loadBalancers"))
        row = [
            txt(node.get("name"), 64),
            txt(node.get("version"), 64),
            *([revisions.get(node.get("name")) or "-"] if with_revision else []),
            node_phase(node, command_count(obj, node)),
            *[txt(states.get(n), 32) for n in lbs],
            txt(node.get("healthy")) if isinstance(node.get("healthy"), bool) else "-",
        ]
        if verdicts:
            row.append(verdicts.get(node.get("name"), "-"))
        row += [_since(node.get("lastTransitionTime"), now), txt(node.get("message"), 120)]
        rows.append(row)
    return header, rows


def revision_text(rev: object) -> str:
    """A node's recorded maintenance tokens (status.nodes[].revision), e.g. "config=cfg-2"."""
    parts = [f"{k}={txt(v, 40)}" for k, v in _map(rev).items() if isinstance(v, str) and v]
    return " ".join(parts)


def window_text(w: Mapping[str, Any]) -> str:
    def pct(v: object) -> str:
        return f"{v:.1f}%" if isinstance(v, int | float) and not isinstance(v, bool) else "-"

    def ms(v: object) -> str:
        # The operator writes response times as floats (21.5); a hand-made status may hold ints.
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e9:
            return "-"
        return f"{v:.0f} ms"

    t = txt(w.get("time"), 32)
    where = txt(w.get("node"), 64)
    out = (
        f"{t[11:] if len(t) == 20 else t} {where} "
        f"{txt(w.get('verdict'), 32)}: {txt(w.get('requests'))} req, "
        f"{pct(w.get('errorPercent'))} errors (baseline {pct(w.get('baselineErrorPercent'))}), "
        f"{ms(w.get('responseMs'))} (baseline {ms(w.get('baselineResponseMs'))})"
    )
    if w.get("reason"):
        out += f"; {txt(w.get('reason'), 120)}"
    return out


def render_get(obj: Mapping[str, Any], now: float, style: Style = Style()) -> str:
    """The live view of one WSO2Cluster (what `get NAME` prints, and each redraw of -w)."""
    st = status_of(obj)
    spec = _map(obj.get("spec"))
    reason, message = headline(obj)
    phase = phase_of(obj)
    lines = [
        f"Name:        {style.bold(name_of(obj))}",
        f"Namespace:   {txt(meta(obj).get('namespace'), 253)}",
        f"Phase:       {style.paint(phase)}" + (f" ({reason})" if reason != "-" else ""),
    ]
    if message != "-":
        lines.append(f"Message:     {message}")
    current = txt(st.get("currentVersion"), 64)
    lines.append(
        f"Version:     desired {txt(spec.get('version'), 64)}, current {current}"
        f", target {txt(st.get('targetVersion'), 64)}"
    )
    lines.append(f"Nodes:       updated {txt(st.get('updated'))}, ready {txt(st.get('ready'))}")
    lines.append(f"Rollout:     {rollout_text(obj, now)}")
    lines.append(f"Step:        {step_text(obj, now)}")
    paused = "yes (spec.update.paused)" if spec_paused(obj) else "no"
    if phase == "Paused" and not spec_paused(obj):
        paused = f"at a step ({reason}); promote to go on"
    lines.append(f"Paused:      {paused}")
    an = _map(st.get("analysis"))
    if an:
        a = style.paint(txt(an.get("phase"), 32))
        if an.get("message"):
            a += f": {txt(an.get('message'), 300)}"
        lines.append(f"Analysis:    {a}")
    gen, seen = _int(meta(obj).get("generation")), _int(st.get("observedGeneration"))
    observed = (
        f"generation {txt(seen)} of {txt(gen)}, {_since(st.get('lastObservedTime'), now)} ago"
    )
    if not st:
        observed = "no status yet (is the operator running?)"
    elif not observed_current(obj):
        observed += " (the operator has not acted on the latest spec yet)"
    lines.append(f"Observed:    {observed}")
    header, rows = node_rows(obj, now)
    if rows:
        lines += ["", table(header, rows, style)]
    windows = [_map(w) for w in _seq(an.get("windows"))][-3:]
    if windows:
        lines += ["", "Last analysis windows:"]
        lines += [f"  {window_text(w)}" for w in windows]
    return "\n".join(lines)


def render_line(obj: Mapping[str, Any], now: float) -> str:
    """One line of what `get -w` shows, for a log or a pipe (no time stamp: the caller adds it,
    and prints a line only when this text changes)."""
    st = status_of(obj)
    reason, message = headline(obj)
    parts = [
        name_of(obj),
        phase_of(obj),
        reason,
        f"desired={txt(_map(obj.get('spec')).get('version'), 64)}",
        f"updated={txt(st.get('updated'))}",
        f"ready={txt(st.get('ready'))}",
    ]
    step = step_text(obj, now)
    if step != "-":
        parts.append(f"step={step.split(':', 1)[0]}")
    if spec_paused(obj):
        parts.append("paused")
    an = _map(st.get("analysis"))
    if an.get("phase"):
        parts.append(f"analysis={txt(an.get('phase'), 32)}")
    commands = len(_seq(_map(_map(obj.get("spec")).get("provision")).get("commands")))
    for node in _seq(st.get("nodes")):
        node = _map(node)
        lbs = ",".join(txt(v, 32) for v in _map(node.get("loadBalancers")).values())
        phase = node_phase(node, commands).replace(" ", ":")
        parts.append(f"{txt(node.get('name'), 64)}={phase}[{lbs}]")
    if not observed_current(obj) and st:
        parts.append("(stale)")
    line = " ".join(parts)
    if phase_of(obj) != "Ready" and message != "-":
        line += f" | {clip(message, 160)}"
    return line


# --- list and history --------------------------------------------------------------------------


def render_list(objs: Sequence[Mapping[str, Any]], all_namespaces: bool, now: float) -> str:
    header = ["NAME", "DESIRED", "CURRENT", "UPDATED", "READY", "PHASE", "REASON", "STEP", "AGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    rows = []
    for obj in objs:
        st = status_of(obj)
        step = step_text(obj, now).split(":", 1)[0]
        row = [
            name_of(obj),
            txt(_map(obj.get("spec")).get("version"), 64),
            txt(st.get("currentVersion"), 64),
            txt(st.get("updated")),
            txt(st.get("ready")),
            phase_of(obj),
            headline(obj)[0],
            step,
            _since(meta(obj).get("creationTimestamp"), now),
        ]
        if all_namespaces:
            row.insert(0, txt(meta(obj).get("namespace"), 253))
        rows.append(row)
    return table(header, rows)


def history_rows(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """status.history (oldest first), only well-formed entries: the revisions `undo` numbers."""
    return [_map(e) for e in _seq(status_of(obj).get("history")) if _map(e).get("toVersion")]


def _duration(entry: Mapping[str, Any], now: float) -> str:
    start = parse_iso(entry.get("startTime"), now)
    end = parse_iso(entry.get("endTime"), now)
    if start is None:
        return "-"
    return ago((end if end is not None else now) - start)


def render_history(obj: Mapping[str, Any], now: float, style: Style = Style()) -> str:
    header = ["REVISION", "FROM", "TO", "RESULT", "STARTED", "DURATION", "MESSAGE"]
    rows = []
    for i, e in enumerate(history_rows(obj), start=1):
        rows.append(
            [
                str(i),
                txt(e.get("fromVersion"), 64),
                txt(e.get("toVersion"), 64),
                txt(e.get("result"), 32),
                txt(e.get("startTime"), 32),
                _duration(e, now),
                txt(str(e.get("message") or "").split("\n", 1)[0], 100),
            ]
        )
    r = rollout_of(obj)
    if r.get("toVersion") and r.get("finished") is False:
        rows.append(
            [
                "*",
                txt(r.get("fromVersion"), 64),
                txt(r.get("toVersion"), 64),
                "RollingBack" if r.get("rollingBack") is True else "InProgress",
                txt(r.get("startTime"), 32),
                _duration(r, now),
                txt(r.get("stepMessage"), 100) if r.get("stepMessage") else "(current rollout)",
            ]
        )
    if not rows:
        return f"{name_of(obj)}: no rollouts in status.history yet"
    return table(header, rows, style)


# --- decisions ---------------------------------------------------------------------------------


def argocd_tracking(obj: Mapping[str, Any]) -> str | None:
    """How the object shows that Argo CD manages it (e.g. 'annotation
    argocd.argoproj.io/tracking-id=app:...'), or None."""
    anns, labels = _map(meta(obj).get("annotations")), _map(meta(obj).get("labels"))
    for key in ARGOCD_ANNOTATIONS:
        if anns.get(key):
            return f"annotation {key}={txt(anns[key], 120)}"
    for key in ARGOCD_LABELS:
        if labels.get(key):
            return f"label {key}={txt(labels[key], 120)}"
    return None


class UndoError(Exception):
    """`undo` cannot pick a version: the message says why and what to do instead."""


def undo_target(obj: Mapping[str, Any], revision: int | None) -> tuple[str, str]:
    """(version, why) that `undo` sets spec.version to.

    Without a revision: the newest version a rollout in status.history reached (Succeeded) other
    than spec.version, else the version the newest rollout started from. With one: that entry
    of `history` (numbered from 1, oldest first), its `toVersion`.
    """
    current = _map(obj.get("spec")).get("version")
    rows = history_rows(obj)
    name = name_of(obj)
    if revision is not None:
        if not 1 <= revision <= len(rows):
            have = f"1..{len(rows)}" if rows else "none"
            raise UndoError(f"{name} has no revision {revision} (revisions: {have}; see history)")
        entry = rows[revision - 1]
        version = str(entry["toVersion"])
        why = f"revision {revision} ({txt(entry.get('result'), 32)})"
    else:
        version, why = "", ""
        for i in range(len(rows), 0, -1):
            e = rows[i - 1]
            if e.get("result") == "Succeeded" and e.get("toVersion") != current:
                version, why = str(e["toVersion"]), f"revision {i}, the last that succeeded"
                break
        if not version:
            r = rollout_of(obj)
            for e, label in ((r, "the current rollout"), (rows[-1] if rows else {}, "revision")):
                frm = e.get("fromVersion")
                if isinstance(frm, str) and frm and frm != current:
                    version, why = frm, f"what {label} started from"
                    break
        if not version:
            raise UndoError(
                f"{name}: status.history names no earlier version than {txt(current, 64)} "
                "(use --to-revision, or set spec.version yourself)"
            )
    if version == current:
        raise UndoError(f"{name}: spec.version is already {txt(version, 64)} ({why})")
    return version, why


def new_token(now: float, current: object, last: object) -> str:
    """A value for a steering annotation that the operator sees as a new request: the UTC time,
    made unique against the annotation's value and the last value acted on (as Argo CD's
    actions in manifests/argocd/argocd-cm-actions.yaml do)."""
    base = _iso(now)
    token, n = base, 1
    while token in (current, last):
        n += 1
        token = f"{base}-{n}"
    return token


def _reason_is(obj: Mapping[str, Any], reason: str) -> bool:
    return any(condition(obj, t).get("reason") == reason for t in ("Progressing", "Ready"))


def steering_note(obj: Mapping[str, Any], annotation: str) -> str | None:
    """Why the operator will ignore this request now (read from status, as Argo CD's action
    discovery does), or None when it applies. A note, not a refusal: status can lag."""
    st, r = status_of(obj), rollout_of(obj)
    failed = bool(r.get("failedVersion"))
    in_progress = (
        bool(r.get("toVersion"))
        and r.get("finished") is False
        and r.get("rollingBack") is not True
        and r.get("aborted") is not True
        and not failed
    )
    steps = _seq(spec_update(obj).get("steps"))
    has_steps = bool(steps) or (_int(r.get("stepCount")) or 0) > 1
    step_paused = st.get("phase") == "Paused" and (
        _reason_is(obj, "StepPaused") or _reason_is(obj, "AnalysisInconclusive")
    )
    if annotation in (PROMOTE_ANNOTATION, PROMOTE_FULL_ANNOTATION):
        if annotation == PROMOTE_FULL_ANNOTATION and r.get("promotedFull") is True:
            return "this rollout was already promoted fully"
        if not (step_paused or (in_progress and has_steps)):
            return "status shows no canary step holding (the operator posts NothingToPromote)"
    elif annotation == ABORT_ANNOTATION:
        if not in_progress:
            return "status shows no rollout in progress (the operator posts NothingToAbort)"
    elif annotation == RETRY_ANNOTATION and not failed:
        return "status shows no failed version to retry"
    return None


def pending_request(obj: Mapping[str, Any], annotation: str) -> bool:
    """Whether the annotation holds a value the operator has not acted on yet."""
    value = stored_token(meta_annotations(obj).get(annotation))
    return bool(value) and value != rollout_of(obj).get(TOKEN_FIELDS[annotation])


def meta_annotations(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(meta(obj).get("annotations"))


@dataclass(frozen=True)
class WaitVerdict:
    state: str  # "met", "failed" (will not get there by itself) or "pending"
    why: str


def wait_verdict(obj: Mapping[str, Any], want: str) -> WaitVerdict:
    """Whether the cluster is `ready`, `paused` or `degraded` for its current generation."""
    phase = phase_of(obj)
    reason, message = headline(obj)
    where = f"phase {phase}" + (f" ({reason}: {message})" if reason != "-" else "")
    if not observed_current(obj):
        return WaitVerdict("pending", "the operator has not observed the latest spec yet")
    if want == "degraded":
        met = condition(obj, "Degraded").get("status") == "True"
        return WaitVerdict("met" if met else "pending", where)
    if want == "ready":
        met = condition(obj, "Ready").get("status") == "True"
    else:
        met = phase == "Paused"
    if met:
        return WaitVerdict("met", where)
    r = rollout_of(obj)
    spec_version = _map(obj.get("spec")).get("version")
    if (
        r.get("failedVersion")
        and r.get("failedVersion") == spec_version
        and not pending_request(obj, RETRY_ANNOTATION)
    ):
        return WaitVerdict(
            "failed", f"{txt(spec_version, 64)} failed: {where}; change the version or retry"
        )
    return WaitVerdict("pending", where)

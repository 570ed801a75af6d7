"""Caps for text that reaches the WSO2Cluster status and Events from outside the operator.

A node's versionCommand output, an HAProxy reply, an exception message: any of them can be
megabytes long or full of terminal escapes. Status is one object in etcd, and once a status
patch is rejected for size the daemon crash-loops, so every such string is capped here before
it is stored.

Two functions, both pure and total (they never raise, whatever they are given):

* `cap` for free text (messages): keeps any printable character, \\n and \\t;
* `cap_token` for short identifiers (versions, LB names and states, reasons): printable ASCII
  only, so that one character is one byte in any JSON encoding. That is what keeps the
  worst-case status size small (see status.py).

The length guarantee is exact: ``len(cap(x, limit)) <= limit`` and
``len(cap_token(x, limit)) <= limit`` for every ``x`` and every ``limit >= 0``. The truncation
marker counts against the limit (the "marker budget" is zero) and a cut text is exactly
``limit`` long. A limit too small for the marker and one kept character (about 20 characters;
the limits below are all larger) gets a plain cut without a marker.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Messages: condition, node and history messages, and Event messages.
MESSAGE_LIMIT = 1024
# A version as printed by versionCommand or recorded in status; the CRD allows 64 characters.
VERSION_LIMIT = 64
# One LB's state for one node (UP, MAINT, ... or a raw HAProxy status we did not normalise).
LB_STATE_LIMIT = 64
# Names used as keys or labels (LB names, history results); the CRD allows 63 for names.
NAME_LIMIT = 64
# A condition reason. metav1.Condition allows 1024, but a reason is one CamelCase word.
REASON_LIMIT = 128

# Replaced by U+FFFD: C0/C1 controls other than \n and \t (a \r or an ANSI escape rewrites what
# `kubectl describe` shows), the Unicode line/paragraph separators, and the bidi overrides that
# can make a message read differently from what it says.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# A token keeps printable ASCII except the characters some JSON encoder escapes (" and \ by
# all; < > & by Go's encoding/json, which the apiserver uses), so each stays one byte.
_NOT_TOKEN = re.compile(r"[^\x20\x21\x23-\x25\x27-\x3b\x3d\x3f-\x5b\x5d-\x7e]")

REPLACEMENT = "\ufffd"
TOKEN_REPLACEMENT = "?"


def _marker(dropped: int) -> str:
    return f"\u2026 [+{dropped} chars]"


def _token_marker(dropped: int) -> str:
    return f"... [+{dropped} chars]"


def _to_str(text: object) -> str:
    if isinstance(text, str):
        return text
    if text is None:
        return ""
    try:
        return str(text)
    except Exception:
        # str() can fail: an int over 4300 digits (Python's limit), a broken __str__.
        return f"<unprintable {type(text).__name__}>"


def _clean(text: object) -> str:
    s = _to_str(text)
    if _SURROGATE.search(s):
        # A str can hold surrogates (surrogateescape decoding, or a JSON "\\ud83d\\ude00" split
        # in two): join valid pairs into their character and replace lone ones, so a cut never
        # falls inside a pair and the text still encodes as UTF-8.
        s = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return _CONTROL.sub(REPLACEMENT, s)


def _truncate(s: str, limit: int, marker: Callable[[int], str]) -> str:
    limit = max(0, limit)
    if len(s) <= limit:
        return s
    # The marker's length depends on the count it shows. Sized first for the largest count (all
    # of s), then grown while a smaller count leaves room, so the result is exactly limit long.
    keep = limit - len(marker(len(s)))
    if keep < 1:
        return s[:limit]  # no room for a marker and some text: a plain cut
    while keep + 1 + len(marker(len(s) - keep - 1)) <= limit:
        keep += 1
    return s[:keep] + marker(len(s) - keep)


def cap(text: object, limit: int = MESSAGE_LIMIT) -> str:
    """Free text for status or an Event, at most ``limit`` characters.

    Non-strings go through str() (None is ""). Control characters other than \\n and \\t, lone
    surrogates and bidi overrides become U+FFFD. Text longer than ``limit`` keeps its start
    and ends with "… [+N chars]", N being how many characters were cut; the marker is within
    ``limit``. Idempotent: ``cap(cap(x, n), n) == cap(x, n)``, and clean text within the limit
    is returned unchanged.
    """
    return _truncate(_clean(text), limit, _marker)


def clip(text: object, limit: int = 200, *, keep_lines: bool = False) -> str:
    """Remote text (a peer's reply, an exception about it) for an error message or a log line.

    Non-printable characters (terminal escapes, NUL, line breaks, bidi overrides) become "?";
    ``keep_lines`` keeps newlines and tabs (a stderr tail reads better by line). At most
    ``limit`` (>= 3) characters, "..." marking a cut; only the kept part is scanned, whatever the
    input size. `cap` is for what is stored in status; this is for what is quoted in a message.
    """
    s = _to_str(text)
    cut = len(s) > limit
    head = s[: max(0, limit - 3)] if cut else s
    keep = "\n\t" if keep_lines else ""
    cleaned = "".join(c if c.isprintable() or c in keep else "?" for c in head)
    return cleaned + "..." if cut else cleaned


def cap_token(text: object, limit: int = NAME_LIMIT) -> str:
    """An identifier (version, LB name or state, reason), at most ``limit`` ASCII characters.

    As `cap`, but every character outside printable ASCII, and " \\ < > &, becomes "?", and the
    marker is ASCII ("... [+N chars]"). A valid version, LB name or reason is unchanged.
    """
    return _truncate(_NOT_TOKEN.sub(TOKEN_REPLACEMENT, _clean(text)), limit, _token_marker)


def strip_reason(reason: str, message: str) -> str:
    """The message without a leading "<reason>: ", for places that show the reason beside it
    (a condition, an Event): a failed node's message starts with its reason (see status.py)."""
    prefix = f"{reason}: "
    return message[len(prefix) :] if reason and message.startswith(prefix) else message

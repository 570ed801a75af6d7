"""A node's revision beyond its version, and which maintenance brings a node to it: pure.

Upgrades are one disruptive change among several. A node's desired state is a *revision*: the
version (spec.version) plus three tokens the spec can change on its own:

* ``config``  (spec.configRevision): the configuration changed; the node is provisioned again;
* ``restart`` (spec.restartedAt): restart the product, as `kubectl rollout restart` does;
* ``patch``   (spec.patchedAt): patch the OS and reboot.

The node records the tokens it was brought to in small files next to the operator's markers
(see `record_command`), so a restarted operator, a drifted node and a node rebuilt by hand are
all seen by reading them back. An empty token in the spec means "no request": it never makes a
node stale, so clusters that do not use maintenance see no extra work.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

# What spec.configRevision/restartedAt/patchedAt may hold (the CRD's pattern): one shell word,
# one line, so it can be written to and read back from the node without quoting trouble. ':'
# admits an RFC 3339 time, as `kubectl w2c restart` writes.
TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,39}")
COMPONENTS = ("config", "restart", "patch")
# On the node, beside the exactly-once markers (ssh.py): one file per component.
_DIR = '"${XDG_STATE_HOME:-$HOME/.local/state}/wso2-operator/revision"'


class Kind(StrEnum):
    """What a node's update does. Persisted in status.nodes[].maintenance."""

    PROVISION = "Provision"  # version or config revision: the provision commands or play
    RESTART = "Restart"  # the restart commands
    REBOOT = "Reboot"  # the patch commands, then a reboot


@dataclass(frozen=True)
class Revision:
    config: str = ""
    restart: str = ""
    patch: str = ""

    def as_dict(self) -> dict[str, str]:
        return {c: getattr(self, c) for c in COMPONENTS if getattr(self, c)}

    @classmethod
    def from_dict(cls, d: object) -> Revision:
        """Total: anything that is not a mapping of valid tokens gives empty components."""
        if not isinstance(d, Mapping):
            return cls()
        return cls(**{c: _token(d.get(c)) for c in COMPONENTS})

    def covers(self, desired: Revision) -> bool:
        """True when every component the spec asks for (non-empty) is what the node runs."""
        return all(
            not getattr(desired, c) or getattr(self, c) == getattr(desired, c) for c in COMPONENTS
        )

    def stale(self, desired: Revision) -> tuple[str, ...]:
        return tuple(
            c for c in COMPONENTS if getattr(desired, c) and getattr(self, c) != getattr(desired, c)
        )


def _token(value: object) -> str:
    return value if isinstance(value, str) and TOKEN_RE.fullmatch(value) else ""


def kind_for(
    desired_version: str,
    desired: Revision,
    version: str | None,
    revision: Revision | None,
) -> Kind | None:
    """The maintenance a node at (version, revision) needs, or None.

    One kind per update, most thorough first: a provision also restarts the product, and a
    reboot does too, so a node that needs several gets the most thorough, and the next pass
    sees what (if anything) is still stale. An unknown revision (not read) asks for nothing:
    unknown is never a reason to disrupt a node.
    """
    if version is not None and version != desired_version:
        return Kind.PROVISION
    if revision is None or version is None:
        return None
    stale = revision.stale(desired)
    if "config" in stale:
        return Kind.PROVISION
    if "patch" in stale:
        return Kind.REBOOT
    if "restart" in stale:
        return Kind.RESTART
    return None


def applied(kind: Kind, target: Revision) -> Revision:
    """The components a finished update of this kind brings the node to (the others it leaves
    as they are): a provision and a reboot restart the product, so they satisfy a restart."""
    if kind == Kind.PROVISION:
        return Revision(config=target.config, restart=target.restart)
    if kind == Kind.REBOOT:
        return Revision(patch=target.patch, restart=target.restart)
    return Revision(restart=target.restart)


def record_command(done: Revision) -> str:
    """Shell that records the non-empty components on the node (idempotent: files rewritten)."""
    parts = [f"d={_DIR}", 'mkdir -p "$d"']
    for c, v in done.as_dict().items():
        parts.append(
            f'printf "%s\\n" {shlex.quote(v)} > "$d/{c}.tmp" && mv -f "$d/{c}.tmp" "$d/{c}"'
        )
    return " && ".join(parts)


def read_command() -> str:
    """Shell that prints `component=value` for each component (value empty when not recorded)."""
    return (
        f"d={_DIR}; for c in {' '.join(COMPONENTS)}; do "
        'printf "%s=%s\\n" "$c" "$(head -c 200 "$d/$c" 2>/dev/null | head -n 1)"; done'
    )


def parse_read(stdout: str) -> Revision | None:
    """What read_command printed, or None when it is not its output (the revision is unknown)."""
    seen: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key not in COMPONENTS or key in seen:
            return None
        seen[key] = value.strip()
    if set(seen) != set(COMPONENTS):
        return None
    return Revision.from_dict(seen)


def change_label(previous: Revision | None, desired: Revision) -> str | None:
    """How a new rollout that keeps the version is named in history, from what the spec
    changed; None when no component changed."""
    before = previous or Revision()
    changed = [c for c in COMPONENTS if getattr(desired, c) != getattr(before, c)]
    changed = [c for c in changed if getattr(desired, c)]
    if not changed:
        return None
    return {"config": "ConfigRevision", "restart": "Restart", "patch": "OSPatch"}[
        next(c for c in COMPONENTS if c in changed)
    ]

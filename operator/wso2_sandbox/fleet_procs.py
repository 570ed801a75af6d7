"""Finding and killing a fleet's processes through /proc (Linux only, no psutil).

Every process of a fleet carries `W2F_BASE=<base dir>` in its environment: the fleet passes it to
sshd and HAProxy, their children inherit it, and sshd's `SetEnv` gives it to every SSH session and
so to every stand-in started over SSH. That marker finds processes whose pid was never recorded,
such as an sshd session still running `wso2ctl`, or a stand-in whose pidfile was overwritten.

sshd itself cannot be found that way: its setproctitle() reuses the environment's memory, so
/proc/<pid>/environ of an sshd no longer shows the marker. Per-connection sshd processes are
therefore found as descendants of the recorded listener pids, before the listener is killed (after
that they are orphans of init).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

MARKER_VAR = "W2F_BASE"


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the rest follows the last ')'.
    return data[data.rfind(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (an unreaped corpse holds no resources)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid and pid not in out:
        out.add(pid)
        pid = parent_of(pid) or 0
    return out


def marked_processes(base_dir: str) -> set[int]:
    """Live processes whose environment carries this fleet's marker (never ourselves)."""
    needle = f"{MARKER_VAR}={base_dir}".encode()
    own = _ancestors()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in own:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0") and is_alive(pid):
            found.add(pid)
    return found


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (ppid := parent_of(int(entry))) is not None:
            children.setdefault(ppid, []).append(int(entry))
    return children


def _with_descendants(roots: Iterable[int], children: dict[int, list[int]]) -> set[int]:
    out: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def fleet_processes(base_dir: str, leaders: Iterable[int] = ()) -> set[int]:
    """Live processes of a fleet: marked ones, the leaders we recorded, and all their descendants.

    A leader counts only while it carries the marker or names the base dir in its command line
    (sshd's process title keeps its `-f <config>`), so a recycled pid is not mistaken for ours.
    """
    own = _ancestors()
    roots = {
        p for p in leaders if is_alive(p) and (_has_marker(p, base_dir) or _mentions(p, base_dir))
    }
    roots |= marked_processes(base_dir)
    return {p for p in _with_descendants(roots, _children_map()) if is_alive(p)} - own


def _mentions(pid: int, base_dir: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"{base_dir}/".encode() in f.read()
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_fleet(base_dir: str, leaders: Iterable[int] = (), timeout: float = 10.0) -> set[int]:
    """SIGKILL every process of the fleet and wait until none is left.

    Returns the pids still alive at the deadline (empty on success). The tree is taken before the
    first kill, while the listeners still parent their sessions; the sweep repeats because a dying
    session can still fork a moment later.
    """
    targets = fleet_processes(base_dir, leaders)
    deadline = time.monotonic() + timeout
    while True:
        for pid in targets:
            _kill(pid)
        time.sleep(0.01)
        left = {p for p in targets if is_alive(p)}
        targets = left | fleet_processes(base_dir, left)
        if not targets:
            return set()
        if time.monotonic() > deadline:
            return targets


def _has_marker(pid: int, base_dir: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{MARKER_VAR}={base_dir}".encode() in f.read().split(b"\0")
    except OSError:
        return False

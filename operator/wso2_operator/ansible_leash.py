"""Tie every SSH connection of an Ansible run to the operator's run, so a task stops on the node
when the run ends early (ProvisionTimeout, cancellation, the operator killed with -9).

Why this is needed: ansible-runner kills only ansible-playbook's process group, but Ansible's
workers detach into their own sessions (setsid), so they and their ssh clients outlive it; and
OpenSSH does not signal a command whose connection goes away unless it runs on a pty. Left
alone, a task that was running when the operator died finishes on the node after the rerun
started (a second install).

The mechanism, in two halves:

* local: the operator holds an exclusive ``flock`` on ``run.lock`` in the run's private data
  dir for as long as the run is its own (the kernel drops it when the operator dies, even by
  kill -9). Ansible's ``ssh_executable`` is ``leash.sh``: it starts ssh and a watcher that waits
  for a shared lock on that file, which it gets only once the operator let go; then it kills
  ssh. A missing lock file (the data dir is gone) counts as let go.
* remote: pipelining is off, so Ansible runs each module with ``ssh -tt`` on a pty; when the
  connection closes, sshd hangs up the pty and the kernel sends SIGHUP to the task's process
  group (become included: the kernel, not a user, sends it).

The price is speed: without pipelining each task takes a few SSH connections instead of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "run.lock"
LEASH_NAME = "leash.sh"

# stdin goes to ssh through fd 3: a background job of a non-interactive sh would otherwise get
# /dev/null, and Ansible gives ssh a pty (or the module's data) on stdin. The watcher runs in
# its own process group (setsid) so that, once ssh has ended, it goes with its blocked `flock`;
# `{ ...; } 9<file` (not `exec 9<file`) so a missing file does not end it before its kill.
_LEASH = """#!/bin/sh
exec 3<&0
ssh "$@" <&3 3<&- & p=$!
setsid sh -c '{{ flock -s 9; }} 9<"$1"; kill -KILL "$2"' leash {lock} "$p" \\
  </dev/null >/dev/null 2>&1 & w=$!
wait "$p"; rc=$?
kill -KILL -- "-$w" 2>/dev/null || kill -KILL "$w" 2>/dev/null
exit "$rc"
"""


def leash_script(lock: Path) -> str:
    """The ssh_executable script for a run whose lock file is ``lock``."""
    return _LEASH.format(lock=shlex.quote(str(lock)))


def write_leash(ssh_dir: Path) -> tuple[Path, Path]:
    """Write the lock file and the leash script into ``ssh_dir``; returns (script, lock)."""
    lock = ssh_dir / LOCK_NAME
    lock.touch(mode=0o600)
    script = ssh_dir / LEASH_NAME
    script.write_text(leash_script(lock))
    script.chmod(0o700)
    return script, lock


@contextlib.contextmanager
def held(lock: Path) -> Iterator[None]:
    """Hold the run's lock (exclusive) for the duration; every leashed ssh dies on release."""
    fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock: the watchers kill whatever ssh is still running

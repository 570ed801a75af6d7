"""ansible_leash against a real sshd: the ssh_executable wrapper passes ssh through while the
operator holds the run's lock, and once the lock is free its ssh dies and sshd hangs up the
command's pty, so the command stops on the node (see ansible_leash's docstring)."""

from __future__ import annotations

import os
import pty
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wso2_operator.ansible_leash import held, write_leash
from wso2_sandbox.fleet import Fleet

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def leashed(fleet: Fleet) -> Iterator[Callable[[Path, str], subprocess.Popen[bytes]]]:
    """Runs the wrapper as Ansible runs ssh for a module: -tt, a pty on stdin whose other end
    stays open (as Ansible's worker keeps it), in its own session."""
    masters: list[int] = []

    def run(script: Path, command: str) -> subprocess.Popen[bytes]:
        argv = fleet.ssh_argv("node1", command)
        master, slave = pty.openpty()
        masters.append(master)
        proc = subprocess.Popen(
            [str(script), "-tt", *argv[1:]],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        os.close(slave)
        return proc

    yield run
    for fd in masters:
        os.close(fd)


def wait_for_line(path: Path, line: str) -> None:
    deadline = time.monotonic() + 30
    while not (path.exists() and line in path.read_text().split()):
        assert time.monotonic() < deadline, f"{line!r} never appeared in {path}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def node(fleet: Fleet) -> Path:
    return Path(fleet.node("node1").dir)


def test_while_the_lock_is_held_ssh_passes_through(leashed, tmp_path: Path):
    script, lock = write_leash(tmp_path)
    with held(lock):
        proc = leashed(script, "echo through; exit 3")
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert b"through" in out


def test_releasing_the_lock_stops_the_command_on_the_node(leashed, node: Path, tmp_path: Path):
    mark = node / "leash-released"
    script, lock = write_leash(tmp_path)
    with held(lock):
        proc = leashed(script, f"echo started >> {mark}; sleep 4; echo finished >> {mark}")
        wait_for_line(mark, "started")
    # The lock is free (as after a timeout, or the operator's death): ssh is killed...
    proc.wait(timeout=30)
    assert proc.returncode != 0
    # ...and the command on the node got SIGHUP from its pty: it never finishes.
    time.sleep(6)
    assert mark.read_text().split() == ["started"]


def test_without_the_lock_file_ssh_does_not_run_on(leashed, node: Path, tmp_path: Path):
    """The data dir is gone (the run ended): a late ssh from a detached worker is killed."""
    mark = node / "leash-missing"
    script, lock = write_leash(tmp_path)
    lock.unlink()
    proc = leashed(script, f"sleep 3; echo ran >> {mark}")
    proc.wait(timeout=30)
    assert proc.returncode != 0
    time.sleep(5)
    assert not mark.exists()

"""The reboot of an OS patch: ask once, expect the SSH connection to drop, wait for a new boot id.

Exactly once, across operator restarts at any moment:

1. the boot id is read and persisted (status.nodes[].bootId) before anything is asked;
2. the reboot command runs after a marker keyed by this update is written on the node, in the
   same shell, so an operator that restarts finds "asked" on the node and does not ask again;
3. the node counts as rebooted only when it answers SSH (same host key: known_hosts is strict)
   with a boot id other than the persisted one; a boot id that changed also proves a reboot
   that happened while the operator was down.

The decision of each poll (`next_move`) is pure; `reboot_step` does the I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from .adapters import Adapters
from .errors import SSHCommandFailed, WSO2OperatorError
from .model import ClusterSpec, NodeProgress, NodeSpec, Phase
from .status import iso
from .textcap import cap

_DIR = '"${XDG_STATE_HOME:-$HOME/.local/state}/wso2-operator/done"'
POLL = 0.5
ASK_TIMEOUT = 60.0


class Move(StrEnum):
    RECORD = "Record"  # persist the boot id before asking
    ASK = "Ask"  # run the reboot command
    WAIT = "Wait"  # asked (or down): wait
    DONE = "Done"  # back with a new boot id
    TIMEOUT = "Timeout"


@dataclass(frozen=True)
class Probe:
    """One look at the node: its boot id (None: no answer) and whether the reboot was asked."""

    boot_id: str | None
    asked: bool = False


def next_move(before: str | None, probe: Probe, elapsed: float, limit: float) -> Move:
    """What to do after a probe, given the persisted boot id ``before``."""
    if probe.boot_id is not None and before is None:
        return Move.RECORD
    if probe.boot_id is not None and probe.boot_id != before:
        return Move.DONE
    if elapsed > limit:
        return Move.TIMEOUT
    if probe.boot_id is not None and not probe.asked:
        return Move.ASK
    return Move.WAIT


def reboot_key(name: str, p: NodeProgress) -> str:
    """The marker of this update's reboot: one per node update (its start time), as
    steps.provision_key, so a retry or the next patch asks again."""
    rev = p.revision.patch if p.revision else ""
    parts = (name, "reboot", rev, iso(p.start) or "")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def probe_command(boot_id_command: str, key: str) -> str:
    return (
        f"( {boot_id_command} ) | head -n 1; "
        f"if [ -e {_DIR}/reboot-{key} ]; then echo asked; else echo not-asked; fi"
    )


def ask_command(reboot_command: str, key: str) -> str:
    return f'd={_DIR}; mkdir -p "$d" && : > "$d/reboot-{key}" && sync; {reboot_command}'


def parse_probe(stdout: str) -> Probe:
    lines = [ln.strip() for ln in stdout.strip().splitlines()]
    if len(lines) != 2 or not lines[0] or lines[1] not in ("asked", "not-asked"):
        return Probe(None)
    return Probe(cap(lines[0], 64), lines[1] == "asked")


async def probe(a: Adapters, node: NodeSpec, command: str) -> Probe:
    try:
        r = await a.ssh_run(node.host, node.ssh_port, command, timeout=10.0)
    except WSO2OperatorError:
        return Probe(None)  # down, refusing, or half up: all mean "not back yet"
    return parse_probe(r.stdout)


class RebootFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def reboot_step(
    a: Adapters,
    spec: ClusterSpec,
    name: str,
    p: NodeProgress,
    out_of_rotation: Callable[[], Awaitable[None]],
) -> NodeProgress:
    """One step of the reboot: returns REBOOTING with the boot id recorded (to be persisted
    before the reboot is asked), or VERIFYING once the node is back. ``out_of_rotation``: the
    last check before the reboot is asked (steps.ensure_out_of_rotation)."""
    node = spec.node(name)
    m = spec.maintenance
    key = reboot_key(name, p)
    command = probe_command(m.boot_id_command, key)
    since = p.since if p.phase == Phase.REBOOTING and p.since else time.time()
    while True:
        seen = await probe(a, node, command)
        move = next_move(p.boot_id, seen, time.time() - since, m.reboot_timeout)
        if move == Move.RECORD:
            assert seen.boot_id is not None
            return p.to(
                Phase.REBOOTING,
                time.time(),
                f"{name}: boot id {seen.boot_id[:8]}; asking for a reboot",
                boot_id=seen.boot_id,
            )
        if move == Move.DONE:
            assert seen.boot_id is not None
            return p.to(
                Phase.VERIFYING,
                time.time(),
                f"{name}: back after the reboot (boot id {seen.boot_id[:8]})",
                boot_id=seen.boot_id,
            )
        if move == Move.TIMEOUT:
            state = (
                "SSH did not answer" if seen.boot_id is None else "it answers with the same boot id"
            )
            raise RebootFailed(
                "RebootTimeout",
                f"{name}: not back with a new boot id within rebootTimeoutSeconds="
                f"{m.reboot_timeout:g} ({state})",
            )
        if move == Move.ASK:
            await out_of_rotation()
            await ask(a, node, m.reboot_command, key)
        await asyncio.sleep(POLL)


async def ask(a: Adapters, node: NodeSpec, reboot_command: str, key: str) -> None:
    """Run the reboot command. A dropped connection, or a shell killed by a signal as the node
    goes down (a negative status, or above 128 through the wrapper's shell), is the expected
    answer; an exit status 1..128 means it refused (sudo wants a password, no such command):
    the node fails at once instead of at the timeout."""
    try:
        await a.ssh_run(
            node.host, node.ssh_port, ask_command(reboot_command, key), timeout=ASK_TIMEOUT
        )
    except SSHCommandFailed as e:
        if e.exit_status is not None and 0 < e.exit_status <= 128:
            raise RebootFailed(
                "RebootFailed", f"{node.name}: the reboot command {e.outcome}"
            ) from None
    except WSO2OperatorError:
        pass

"""The reboot step (wso2_operator/reboot.py) against a real node: a fleet node's sshd, its
`wso2ctl reboot` (sshd, sessions and product go away, come back with a new boot id) and its
on-node marker. The node's event log is the ground truth for how often it rebooted."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from wso2_operator.adapters import Adapters
from wso2_operator.model import ClusterSpec, NodeProgress, Phase
from wso2_operator.reboot import RebootFailed, reboot_step
from wso2_operator.revision import Kind, Revision
from wso2_sandbox.fleet import Fleet
from wso2_sandbox.manifest import fleet_manifests

START = 1_796_000_000.0


def spec_of(fleet: Fleet, **maintenance: object) -> ClusterSpec:
    _, cluster = fleet_manifests(fleet.description)
    cluster["spec"]["maintenance"].update(maintenance)
    return ClusterSpec.from_dict(cluster["spec"])


def adapters(fleet: Fleet, spec: ClusterSpec) -> Adapters:
    ssh = fleet.description["ssh"]
    key = Path(ssh["private_key_path"]).read_bytes()
    return Adapters(spec, key, Path(ssh["known_hosts_path"]).read_text())


async def drive(a: Adapters, spec: ClusterSpec, p: NodeProgress) -> list[NodeProgress]:
    """reboot_step until the node leaves Rebooting, as the reconciler drives it (each result
    would be persisted before the next step)."""

    async def out() -> None:
        return None  # the LB check is the reconciler's; here the node serves no LB traffic

    seen = []
    while p.phase in (Phase.PROVISIONING, Phase.REBOOTING):
        p = await reboot_step(a, spec, "node1", p, out)
        seen.append(p)
    return seen


def patching(start: float = START) -> NodeProgress:
    """A node whose patch commands are done; ``start`` names the update (and its marker)."""
    return NodeProgress(
        phase=Phase.PROVISIONING,
        target="1.0.0",
        kind=Kind.REBOOT,
        revision=Revision(patch="p1"),
        step=0,
        start=start,
        since=start,
    )


def test_reboot_once_then_resume_does_not_reboot_again(make_fleet) -> None:
    fleet: Fleet = make_fleet(nodes=1, lbs=1, boot_seconds=0.5, ready_gap_seconds=0.2)
    node = fleet.node("node1")
    node.set_timing(reboot_seconds=1)
    before = node.boot_id()
    spec = spec_of(fleet)

    async def run() -> tuple[list[NodeProgress], list[NodeProgress]]:
        a = adapters(fleet, spec)
        try:
            first = await drive(a, spec, patching())
            # An operator that restarts with the node still shown Rebooting (it was killed
            # before it wrote Verifying) finds the new boot id and does not ask again.
            again = await drive(a, spec, replace(first[0], since=first[-1].since))
            return first, again
        finally:
            await a.close()

    first, again = asyncio.run(run())
    assert [p.phase for p in first] == [Phase.REBOOTING, Phase.VERIFYING]
    assert first[0].boot_id == before  # recorded before the reboot was asked
    assert first[-1].boot_id == node.boot_id() != before
    assert [p.phase for p in again] == [Phase.VERIFYING]
    assert len(node.boot_ids()) == 1
    assert sum(e["event"] == "reboot" for e in node.events()) == 1


def test_a_refusing_reboot_command_fails_at_once_and_one_that_never_reboots_times_out(
    make_fleet,
) -> None:
    fleet: Fleet = make_fleet(nodes=1, lbs=1)
    refuse = spec_of(fleet, rebootCommand="echo 'sudo: a password is required' >&2; exit 1")
    never = spec_of(fleet, rebootCommand="true", rebootTimeoutSeconds=5)

    async def run(spec: ClusterSpec, start: float) -> RebootFailed:
        a = adapters(fleet, spec)
        try:
            with pytest.raises(RebootFailed) as e:
                await drive(a, spec, patching(start))
            return e.value
        finally:
            await a.close()

    e = asyncio.run(run(refuse, START))
    assert e.reason == "RebootFailed"
    assert "exited 1" in e.message and "a password is required" in e.message
    e = asyncio.run(run(never, START + 1))
    assert e.reason == "RebootTimeout"
    assert "rebootTimeoutSeconds=5 (it answers with the same boot id)" in e.message
    assert fleet.node("node1").boot_ids() == []

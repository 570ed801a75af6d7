"""Regressions found by review of the hardening: each was a way to freeze or stop the loop."""

from __future__ import annotations

import pytest

from wso2_operator.errors import LBProtocolError, SSHUnreachable
from wso2_operator.haproxy_parse import parse_show_stat
from wso2_operator.health import HealthChecker
from wso2_operator.model import ClusterSpec, HealthSpec, NodeProgress, NodeSpec, Phase
from wso2_operator.observation import ERROR, UP, NodeObservation
from wso2_operator.ownership import audit_claims, proved_out, serving_lbs


@pytest.mark.timeout(60)  # quadratic, this took about ten minutes and froze the event loop
def test_a_reply_of_blank_lines_is_refused_in_linear_time() -> None:
    with pytest.raises(LBProtocolError):
        parse_show_stat("\n" * 2_000_000 + "garbage")


async def test_a_host_name_idna_refuses_is_unhealthy_not_an_exception() -> None:
    checker = HealthChecker()
    try:
        ok, detail = await checker.check("a..b", HealthSpec(scheme="HTTP", timeout=1))
    finally:
        await checker.close()
    assert not ok and "UnicodeError" in detail


async def test_a_host_name_idna_refuses_is_ssh_unreachable() -> None:
    import asyncssh

    from wso2_operator.ssh import SSHCredentials, SSHExecutor

    key = asyncssh.generate_private_key("ssh-ed25519")
    creds = SSHCredentials(
        username="u",
        private_key=key.export_private_key(),
        known_hosts="h ssh-ed25519 " + key.export_public_key().decode().split()[1],
        connect_timeout=2,
    )
    async with SSHExecutor(creds) as ex:
        with pytest.raises(SSHUnreachable):
            await ex.run("a..b", 22, "true", timeout=1)


def test_an_lb_answering_garbage_neither_proves_a_node_out_nor_shows_it_serving() -> None:
    o = NodeObservation(version="1", healthy=True, lb={"lb1": ERROR, "lb2": "MAINT"})
    assert serving_lbs(o) == () and proved_out(o)
    spec = ClusterSpec(
        version="2",
        nodes=(NodeSpec("n1", "h1"), NodeSpec("n2", "h2")),
        ssh_user="u",
        secret_name="s",
        max_unavailable=1,
    )
    observed = {
        "n1": NodeObservation("1", True, {"lb1": ERROR, "lb2": "MAINT"}),
        "n2": NodeObservation("1", True, {"lb1": ERROR, "lb2": UP}),
    }
    progress = {"n1": NodeProgress(Phase.PROVISIONING, target="2")}
    audit = audit_claims(spec, observed, progress, owned=())
    assert audit.discard == () and audit.redrain == ()  # a resumed claim is not thrown away

"""The SSH executor against a real OpenSSH sshd of the fleet (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import asyncssh
import pytest
from asyncssh.encryption import get_default_encryption_algs

from wso2_operator.errors import (
    ConfigError,
    HostKeyMismatch,
    SSHAuthFailed,
    SSHCommandFailed,
    SSHCommandTimeout,
    SSHUnreachable,
)
from wso2_operator.ssh import SSHCredentials, SSHExecutor, _encryption_algs
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.fleet_handles import NodeHandle

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ssh_fleet() -> Iterator[Fleet]:
    with Fleet(FleetConfig(nodes=1, lbs=0, boot_seconds=0.5, ready_gap_seconds=0.2)) as fleet:
        yield fleet


@pytest.fixture
def node(ssh_fleet: Fleet) -> NodeHandle:
    return ssh_fleet.nodes[0]


def creds(fleet: Fleet, **overrides: object) -> SSHCredentials:
    kw: dict[str, object] = {
        "username": fleet.description["ssh"]["user"],
        "private_key": fleet.client_private_key(),
        "known_hosts": fleet.known_hosts(),
        "connect_timeout": 5.0,
    }
    kw.update(overrides)
    return SSHCredentials(**kw)  # type: ignore[arg-type]


@pytest.fixture
async def ex(ssh_fleet: Fleet) -> AsyncIterator[SSHExecutor]:
    async with SSHExecutor(creds(ssh_fleet)) as executor:
        yield executor


def sleeps(tag: str) -> list[str]:
    """`sleep <tag>` processes on this machine (the fleet's nodes are local processes)."""
    out = subprocess.run(["pgrep", "-af", f"^sleep {tag}$"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


async def test_runs_command_with_wso2ctl_on_path(ex: SSHExecutor, node: NodeHandle) -> None:
    r = await ex.run(node.host, node.ssh_port, "wso2ctl version")
    assert r.exit_status == 0 and r.stdout.strip() == "1.0.0" and r.duration > 0


async def test_env_values_arrive_verbatim_and_are_not_executed(
    ex: SSHExecutor, node: NodeHandle
) -> None:
    marker = f"/tmp/wso2-ssh-marker-{secrets.token_hex(4)}"
    values = {
        "V1": "a b  c",
        "V2": "it's \"double\" and 'single'",
        "V3": f"$(touch {marker})",
        "V4": f"`touch {marker}`; touch {marker} && echo pwned | tee {marker}",
        "V5": "line1\nline2\n",
        "V6": "ünïcode ✓ \\ backslash",
        "V7": "",
        "V8": "-n",
        "V9": "* ? [a]",
        "TARGET_VERSION": "2.0.0 $HOME ${PATH}",
    }
    script = "for v in " + " ".join(f'"${n}"' for n in values) + "; do printf '%s\\0' \"$v\"; done"
    r = await ex.run(node.host, node.ssh_port, script, env=values)
    assert r.stdout.split("\0")[:-1] == list(values.values())
    assert not await asyncio.to_thread(os.path.exists, marker)
    for bad in ("1X", "A-B", "A B", "A;B", "", "A\n"):
        with pytest.raises(ConfigError):
            await ex.run(node.host, node.ssh_port, "true", env={bad: "x"})


async def test_nonzero_exit_carries_stderr_tail(ex: SSHExecutor, node: NodeHandle) -> None:
    cmd = "printf 'x%.0s' $(seq 6000) >&2; echo; echo TAIL-MARKER >&2; echo out; exit 3"
    with pytest.raises(SSHCommandFailed) as info:
        await ex.run(node.host, node.ssh_port, cmd, env={"SECRET_VALUE": "hunter2"})
    err = info.value
    assert err.exit_status == 3 and not err.transient
    assert err.stderr_tail.endswith("TAIL-MARKER\n")
    assert 1024 < len(err.stderr_tail.encode()) <= 2048
    assert "printf" in str(err) and "hunter2" not in str(err) and "hunter2" not in err.command
    r = await ex.run(node.host, node.ssh_port, cmd, check=False)
    assert r.exit_status == 3 and r.stdout == "\nout\n"


async def test_timeouts_kill_remote_command_and_free_the_session(
    ex: SSHExecutor, node: NodeHandle
) -> None:
    tag = f"30.{secrets.randbelow(10**6):06d}"  # `sleep 30.123456`: unique in the process list
    durations = []
    for _ in range(20):
        t = time.monotonic()
        with pytest.raises(SSHCommandTimeout) as info:
            await ex.run(node.host, node.ssh_port, f"sleep {tag}", timeout=0.3)
        durations.append(time.monotonic() - t)
        assert info.value.transient
        assert sleeps(tag) == []  # killed before run() raised: no orphan, no leaked channel
    # Typically ~0.35 s each (0.3 s + channel close). The remote backstop (`timeout` at 2.3 s)
    # would make every one >= 2.3 s; allow for a heavily loaded CI machine.
    assert min(durations) >= 0.3
    assert statistics.median(durations) < 2.0, durations
    r = await ex.run(node.host, node.ssh_port, "echo still fine", timeout=5)
    assert r.stdout == "still fine\n"
    # Cancellation (e.g. a kopf handler being cancelled) cleans up the same way.
    task = asyncio.create_task(ex.run(node.host, node.ssh_port, f"sleep {tag}", timeout=20))
    end = time.monotonic() + 10
    while not sleeps(tag):
        assert time.monotonic() < end, "remote sleep never started"
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)
    assert sleeps(tag) == []


async def test_concurrency_is_bounded_and_shares_one_connection(
    ssh_fleet: Fleet, node: NodeHandle
) -> None:
    async with SSHExecutor(creds(ssh_fleet), max_sessions_per_host=4) as ex:
        conns = await asyncio.gather(*(ex.connection(node.host, node.ssh_port) for _ in range(10)))
        assert all(c is conns[0] for c in conns)  # one shared connect attempt
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(ex.run(node.host, node.ssh_port, f"sleep 0.3; echo {i}") for i in range(12))
        )
        elapsed = time.monotonic() - t0
        assert [r.stdout.strip() for r in results] == [str(i) for i in range(12)]
        assert elapsed >= 0.9  # 12 commands, 4 at a time, 0.3 s each
        assert await ex.connection(node.host, node.ssh_port) is conns[0]
        # A closed connection is replaced transparently.
        conns[0].close()
        await conns[0].wait_closed()
        r = await ex.run(node.host, node.ssh_port, "echo again")
        assert r.stdout == "again\n"
        assert await ex.connection(node.host, node.ssh_port) is not conns[0]


async def test_prefers_aes_gcm_and_keeps_the_other_defaults(
    ex: SSHExecutor, node: NodeHandle
) -> None:
    # AES-GCM costs the operator ~40 % less CPU per command than asyncssh's ChaCha20 default.
    conn = await ex.connection(node.host, node.ssh_port)
    assert conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
    assert conn.get_extra_info("recv_cipher") == "aes128-gcm@openssh.com"
    offered = _encryption_algs()
    defaults = [a.decode() for a in get_default_encryption_algs()]
    assert offered[:2] == ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    # Servers without GCM still connect: nothing of the default list is dropped, nothing added.
    assert sorted(offered) == sorted(defaults) and "chacha20-poly1305@openssh.com" in offered


async def test_host_key_mismatch_is_refused(ssh_fleet: Fleet, node: NodeHandle) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong = f"{node.host} {other}\n"
    async with SSHExecutor(creds(ssh_fleet, known_hosts=wrong)) as ex:
        with pytest.raises(HostKeyMismatch) as info:
            await ex.run(node.host, node.ssh_port, "true")
    assert not info.value.transient and node.host in str(info.value)
    # A host that is simply not listed is refused the same way: never trust on first use.
    unrelated = f"127.0.0.254 {other}\n"
    async with SSHExecutor(creds(ssh_fleet, known_hosts=unrelated)) as ex:
        with pytest.raises(HostKeyMismatch):
            await ex.run(node.host, node.ssh_port, "true")
    for empty in ("", "\n# only a comment\n"):
        with pytest.raises(ConfigError, match="known_hosts"):
            creds(ssh_fleet, known_hosts=empty)


async def test_auth_failure_and_bad_key(ssh_fleet: Fleet, node: NodeHandle) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key()
    async with SSHExecutor(creds(ssh_fleet, private_key=stranger)) as ex:
        with pytest.raises(SSHAuthFailed) as info:
            await ex.run(node.host, node.ssh_port, "true")
    assert not info.value.transient
    junk = b"-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
    with pytest.raises(ConfigError) as bad:
        SSHExecutor(creds(ssh_fleet, private_key=junk))
    assert "c2VjcmV0" not in str(bad.value) and "BEGIN" not in str(bad.value)


async def test_unreachable_hosts_fail_within_connect_timeout(
    ssh_fleet: Fleet, node: NodeHandle
) -> None:
    subnet = node.host.rsplit(".", 1)[0]
    async with SSHExecutor(creds(ssh_fleet, connect_timeout=1.0)) as ex:
        t0 = time.monotonic()
        with pytest.raises(SSHUnreachable) as refused:
            await ex.run(f"{subnet}.250", 22, "true")
        assert time.monotonic() - t0 < 1.0 and refused.value.transient
        with contextlib.closing(socket.socket()) as mute:
            mute.bind(("127.0.0.1", 0))
            mute.listen(8)  # accepts TCP, never sends an SSH banner
            t0 = time.monotonic()
            with pytest.raises(SSHUnreachable, match="timed out"):
                await ex.run("127.0.0.1", mute.getsockname()[1], "true")
            assert 0.9 < time.monotonic() - t0 < 2.5


async def test_logs_carry_commands_but_not_env_values_or_key(
    ex: SSHExecutor, node: NodeHandle, ssh_fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await ex.run(node.host, node.ssh_port, 'test -n "$TOKEN"', env={"TOKEN": "s3cr3t-v4lue"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "test -n" in text
    assert "s3cr3t-v4lue" not in text
    key_body = ssh_fleet.client_private_key().decode().splitlines()[1]
    assert key_body not in text


async def test_once_key_runs_a_completed_command_only_once(
    ex: SSHExecutor, node: NodeHandle
) -> None:
    """An operator killed between a command's exit and its own status write runs the step
    again after a restart; with the same once_key the host skips a command that completed."""
    key, other = secrets.token_hex(16), secrets.token_hex(16)
    log = f"once-{key}.log"
    cmd = f'echo ran >> "$HOME/{log}"'
    first = await ex.run(node.host, node.ssh_port, cmd, once_key=key)
    again = await ex.run(node.host, node.ssh_port, cmd, once_key=key)
    assert first.exit_status == again.exit_status == 0
    assert "completed before, not run again" in again.stderr
    await ex.run(node.host, node.ssh_port, cmd, once_key=other)  # another step: runs
    count = await ex.run(node.host, node.ssh_port, f'wc -l < "$HOME/{log}"')
    assert count.stdout.strip() == "2"

    # A failed command leaves no marker: it runs again, and can then succeed.
    flag = f"once-flag-{key}"
    flaky = f'if [ -e "$HOME/{flag}" ]; then echo ok; else : > "$HOME/{flag}"; exit 4; fi'
    with pytest.raises(SSHCommandFailed):
        await ex.run(node.host, node.ssh_port, flaky, once_key=other[::-1])
    done = await ex.run(node.host, node.ssh_port, flaky, once_key=other[::-1])
    assert done.stdout.strip() == "ok"

    # A timed-out command leaves no marker either.
    slow = secrets.token_hex(16)
    with pytest.raises(SSHCommandTimeout):
        await ex.run(node.host, node.ssh_port, "sleep 5", timeout=0.5, once_key=slow)
    rerun = await ex.run(node.host, node.ssh_port, "echo again", once_key=slow)
    assert rerun.stdout.strip() == "again"


def test_once_key_must_be_hex() -> None:
    from wso2_operator.ssh import build_remote_command

    with pytest.raises(ConfigError):
        build_remote_command("true", once_key="../../etc/passwd")

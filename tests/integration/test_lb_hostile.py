"""The HAProxy admin-socket transports and LBClient against hostile peers.

A TCP admin socket has no authentication and anything can listen on a configured address, so the
peer here is a small purpose-built server in this process that floods, sends garbage, trickles
or stays silent. Whatever it does, every call must end in a typed HAProxyError within a bounded
time and with bounded memory, and the transport must work again once the peer behaves.

The same peer is reached three ways: TCP (TcpTransport), a local unix socket
(UnixSocketTransport), and that unix socket through a real sshd's direct-streamlocal channel
(SshUnixTransport), because asyncssh's stream buffers and limits differ from asyncio's.

Run with ``-s`` to see the measured times and memory growth.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from wso2_operator.errors import (
    HAProxyCommandError,
    HAProxyError,
    LBProtocolError,
    LBUnreachable,
)
from wso2_operator.haproxy import LBClient
from wso2_operator.haproxy_parse import FIELD_CAP, NAME_RE, ServerStat
from wso2_operator.haproxy_transport import (
    REPLY_CAP,
    SshUnixTransport,
    TcpTransport,
    UnixSocketTransport,
)
from wso2_operator.ssh import SSHCredentials, SSHExecutor
from wso2_sandbox.fleet import Fleet, FleetConfig

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
BACKEND = "PRD_wso2ei"
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 3.0
# Growth of the test process's peak RSS allowed for one hostile exchange. A bounded transport
# holds at most REPLY_CAP (2 MiB) of reply plus a few stream buffers and copies; the old one
# buffered 8-16 MiB before failing, and unbounded would be the whole flood.
MEMORY_BOUND_MIB = 12
FLOOD = b"FLOOD-" * 10923  # ~64 KiB: a pattern that must never show up in an error message
PROMPT = b"\n> "

GOOD_INFO = b"Name: HAProxy\nVersion: 2.6.12\nStopping: 0\n"
GOOD_STAT = (
    b"# pxname,svname,qcur,scur,status,weight,check_status,lastchg\n"
    b"PRD_wso2ei,node1,0,0,UP,1,L7OK,12\nPRD_wso2ei,BACKEND,0,0,UP,1,,12\n"
)
GOOD_STATE = (
    b"1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n"
    b"3 PRD_wso2ei 1 node1 127.0.0.1 2 0\n"
)


# ------------------------------------------------------------------------ measuring


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/self/status")


@dataclass
class Measure:
    what: str
    elapsed: float = 0.0
    growth_mib: float = 0.0


@contextlib.contextmanager
def measured(what: str) -> Iterator[Measure]:
    """Wall time and growth of the peak RSS (VmHWM) over the block.

    VmHWM is reset first (``clear_refs`` 5), so the peak is this block's, not an earlier
    test's; growth = peak during the block - RSS before it.
    """
    # Give freed heap back first (glibc keeps it otherwise), so RSS is a fair baseline.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    base = _status_kib("VmRSS")
    m = Measure(what)
    started = time.monotonic()
    try:
        yield m
    finally:
        m.elapsed = time.monotonic() - started
        m.growth_mib = max(0, _status_kib("VmHWM") - base) / 1024
        print(f"\n[measure] {what}: {m.elapsed:.3f}s, peak RSS growth {m.growth_mib:.1f} MiB")


def assert_clean_message(exc: BaseException) -> None:
    """No flood bytes, no control characters, a sane length."""
    text = str(exc)
    assert "FLOOD" not in text, text[:300]
    assert len(text) <= 600, len(text)
    assert text.isprintable(), repr(text[:300])


# ------------------------------------------------------------------------ hostile peers

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What HAProxy does for `prompt` and `set timeout cli N`."""
    for _ in range(2):
        await reader.readline()
        writer.write(PROMPT)
    await writer.drain()


async def send_flood(writer: asyncio.StreamWriter, total: int) -> None:
    sent = 0
    while sent < total:
        writer.write(FLOOD)
        await writer.drain()
        sent += len(FLOOD)


def flood_on_connect(total: int = 16 * MiB) -> Behaviour:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await send_flood(writer, total)
        await reader.read()

    return run


def flood_reply(total: int = 16 * MiB) -> Behaviour:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        await reader.readline()
        await send_flood(writer, total)
        await reader.read()

    return run


def sized_reply(size: int) -> Behaviour:
    """A reply of exactly ``size`` bytes before the prompt (lines, like show stat), built once
    and sent in slices, so that the peer itself adds little to the measured memory."""
    line = b"PRD_wso2ei,nodeX,0,0,UP,1,L7OK,12\n"
    payload = (line * (size // len(line) + 1))[: size - 1] + b"\n" + PROMPT

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        while await reader.readline():
            with memoryview(payload) as view:
                for i in range(0, len(payload), 64 * 1024):
                    writer.write(view[i : i + 64 * 1024])
                    await writer.drain()

    return run


def garbage(replies: list[bytes]) -> Behaviour:
    """Answers command n with replies[n % len], each followed by the prompt."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        n = 0
        while await reader.readline():
            writer.write(replies[n % len(replies)] + PROMPT)
            await writer.drain()
            n += 1

    return run


def silent(after_handshake: bool) -> Behaviour:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if after_handshake:
            await handshake(reader, writer)
        await reader.read()  # until the client gives up

    return run


def trickle(after_handshake: bool, period: float = 0.005) -> Behaviour:
    """Random bytes, a few at a time, forever, never a prompt."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if after_handshake:
            await handshake(reader, writer)
            await reader.readline()
        rnd = random.Random(3)
        while True:
            writer.write(rnd.randbytes(7).replace(b"\n", b"."))
            await writer.drain()
            await asyncio.sleep(period)

    return run


async def good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await handshake(reader, writer)
    while line := await reader.readline():
        cmd = line.decode().strip()
        if cmd == "show info":
            reply = GOOD_INFO
        elif cmd.startswith("show stat"):
            reply = GOOD_STAT
        elif cmd.startswith("show servers state"):
            reply = GOOD_STATE
        elif cmd == "show cli level":
            reply = b"admin\n"
        else:
            reply = b"\n"  # a successful write: just the blank line
        writer.write(reply + PROMPT)
        await writer.drain()


@dataclass
class Peer:
    """Connection n gets behaviours[n] (the last one repeats)."""

    behaviours: list[Behaviour]
    connections: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        behaviour = self.behaviours[min(self.connections, len(self.behaviours) - 1)]
        self.connections += 1
        try:
            await behaviour(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client hung up on us: that is the point
        finally:
            writer.close()
            self.tasks.discard(task)

    async def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# ------------------------------------------------------------------------ transports

KINDS = ["tcp", "unix", "ssh"]


@pytest.fixture(scope="module")
def ssh_fleet() -> Iterator[Fleet]:
    """One sshd (the LB host) for SshUnixTransport; its HAProxy is not used here."""
    cfg = FleetConfig(nodes=1, lbs=1, boot_seconds=0.5, ready_gap_seconds=0.1)
    with Fleet(cfg) as fleet:
        yield fleet


@pytest.fixture
def socket_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="w2h-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def serve(
    request: pytest.FixtureRequest, socket_dir: str
) -> Callable[[str, list[Behaviour]], contextlib.AbstractAsyncContextManager[Any]]:
    """serve(kind, behaviours) -> async context yielding a transport to a new hostile peer."""

    @contextlib.asynccontextmanager
    async def run(kind: str, behaviours: list[Behaviour]) -> AsyncIterator[Any]:
        peer = Peer(behaviours)
        kw: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "command_timeout": COMMAND_TIMEOUT,
        }
        executor: SSHExecutor | None = None
        if kind == "tcp":
            server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            transport: Any = TcpTransport("127.0.0.1", port, **kw)
        else:
            path = os.path.join(socket_dir, f"p{len(os.listdir(socket_dir))}.sock")
            server = await asyncio.start_unix_server(peer.handle, path)
            if kind == "unix":
                transport = UnixSocketTransport(path, **kw)
            else:
                fleet: Fleet = request.getfixturevalue("ssh_fleet")
                lb = fleet.lbs[0]
                executor = SSHExecutor(
                    SSHCredentials(
                        username=fleet.description["ssh"]["user"],
                        private_key=fleet.client_private_key(),
                        known_hosts=fleet.known_hosts(),
                        connect_timeout=5.0,
                    )
                )
                transport = SshUnixTransport(executor, lb.host, lb.ssh_port, path, **kw)
                # Open the SSH connection now, so the measurements are of the channel only.
                await executor.connection(lb.host, lb.ssh_port)
        try:
            yield transport
        finally:
            await transport.close()
            if executor is not None:
                await executor.close()
            server.close()
            await peer.stop()
            await server.wait_closed()

    return run


# ------------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("when", ["connect", "reply"])
async def test_flood_without_prompt_is_a_protocol_error(
    serve: Callable[..., Any], kind: str, when: str
) -> None:
    """(a) 16 MiB without a prompt, to show_stat / servers / set_state through LBClient:
    LBProtocolError at the cap, long before the timeout, with bounded memory; then the same
    client works again once the peer behaves."""
    hostile = flood_on_connect() if when == "connect" else flood_reply()
    async with serve(kind, [hostile, hostile, hostile, good]) as transport:
        client = LBClient("lbX", transport)
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("show_stat", lambda: client.show_stat(BACKEND)),
            ("servers", lambda: client.servers(BACKEND)),
            ("set_state", lambda: client.set_state(BACKEND, "node1", "drain")),
        ]
        for name, call in calls:
            with measured(f"{kind}: 16 MiB flood on {when}, {name}") as m:
                with pytest.raises(LBProtocolError) as info:
                    await call()
            assert m.elapsed < min(CONNECT_TIMEOUT, COMMAND_TIMEOUT), "the timeout, not the cap"
            assert m.growth_mib < MEMORY_BOUND_MIB
            assert info.value.lb == "lbX"
            assert transport.description in str(info.value)
            assert str(REPLY_CAP if when == "reply" else 64 * 1024) in str(info.value)
            assert_clean_message(info.value)
        # Dropped, not desynced: the next call gets a fresh connection to a well-behaved peer.
        stats = await client.servers(BACKEND)
        assert stats["node1"].is_up and stats["node1"].admin_state == "READY"
        await client.set_state(BACKEND, "node1", "drain")


@pytest.mark.parametrize("kind", KINDS)
async def test_reply_cap_boundary(serve: Callable[..., Any], kind: str) -> None:
    """A big but legitimate reply (1.5 MiB: hundreds of servers) passes whole; 3 MiB with a
    prompt at the end is refused as a protocol error, not read into memory or mistaken for a
    lost connection (asyncssh's readuntil gives IncompleteReadError at its window)."""
    big = 3 * MiB // 2
    async with serve(kind, [sized_reply(big), sized_reply(3 * MiB), good]) as transport:
        reply = await transport.command("show stat PRD_wso2ei 4 -1")
        assert len(reply) == big - 1  # the final newline belongs to the framing
        await transport.reset()
        with measured(f"{kind}: 3 MiB reply") as m:
            with pytest.raises(LBProtocolError) as info:
                await transport.command("show stat PRD_wso2ei 4 -1")
        assert m.growth_mib < MEMORY_BOUND_MIB
        assert str(REPLY_CAP) in str(info.value)
        assert_clean_message(info.value)
        assert (await transport.command("show info")).startswith("Name: HAProxy")


def _garbage_replies() -> list[bytes]:
    rnd = random.Random(20240601)
    crafted = [
        # A show stat header, then a field over csv's field_size_limit (csv.Error before).
        b"# pxname,svname,qcur,scur,status\nPRD_wso2ei,node1,0,0," + b"U" * 200_000,
        # Invalid UTF-8, NUL and terminal escapes in every field.
        b"# pxname,svname,qcur,scur,status,check_status\n"
        b"PRD_wso2ei,node1,\xff\xfe,0,UP\x00\x1b[2J,\x80\x81L7OK\n",
        b"# pxname,svname,qcur,scur,status\nPRD_wso2ei,node1\x1b,0,0,UP\n",
        # An error text that would otherwise land whole in an exception message.
        b"\x1b]0;pwned\x07" + b"E" * 100_000,
        b"No such server." + b"\xff" * 5000,
        b"1\n# be_name srv_name srv_op_state srv_admin_state\nPRD_wso2ei node1 \xd9\xa2 0\n",
        b"#" + b"\x00" * 1000,
        b"Stopping: \xd9\xa1\n",
        b"",
    ]
    randoms = [rnd.randbytes(rnd.randrange(1, 5000)).replace(b"\n> ", b"\n>>") for _ in range(40)]
    # Random bodies behind a real header, so the CSV parser gets to see them too.
    framed = [b"# pxname,svname,qcur,scur,status\n" + r for r in randoms[:20]]
    return crafted + randoms + framed


def _check_stat(s: ServerStat) -> None:
    assert NAME_RE.fullmatch(s.name)
    assert len(s.status) <= FIELD_CAP and s.status.isprintable()
    assert len(s.check_status) <= FIELD_CAP and s.check_status.isprintable()
    assert type(s.scur) is int and type(s.qcur) is int


async def test_garbage_replies_raise_typed_errors_through_lbclient(
    serve: Callable[..., Any],
) -> None:
    """(b) A peer that answers every command with garbage (random bytes, invalid UTF-8, NUL,
    escapes, huge fields) after a proper prompt: show_stat / servers / set_state / cli_level
    either return well-typed values or raise HAProxyError subclasses with clean messages."""
    replies = _garbage_replies()
    outcomes: dict[str, int] = {}
    async with serve("tcp", [garbage(replies)]) as transport:
        client = LBClient("lbX", transport)
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("show_stat", lambda: client.show_stat(BACKEND)),
            ("show_stat(no worker check)", lambda: client.show_stat(BACKEND, check_worker=False)),
            ("servers", lambda: client.servers(BACKEND)),
            ("server", lambda: client.server(BACKEND, "node1")),
            ("set_state", lambda: client.set_state(BACKEND, "node1", "drain")),
            ("shutdown_sessions", lambda: client.shutdown_sessions(BACKEND, "node1")),
            ("cli_level", client.cli_level),
        ]
        with measured(f"tcp: {len(replies) * len(calls)} calls with garbage replies") as m:
            # ~12 commands a round: every reply is met at least twice, by different calls.
            for _ in range(2 * len(replies) // 12 + 1):
                for name, call in calls:
                    try:
                        result = await call()
                    except HAProxyError as exc:
                        assert_clean_message(exc)
                        assert exc.lb == "lbX"
                        if isinstance(exc, HAProxyCommandError):
                            assert len(exc.reply) <= 200 and exc.reply.isprintable()
                        key = f"{name}: {type(exc).__name__}"
                    else:
                        if isinstance(result, dict):
                            for s in result.values():
                                _check_stat(s)
                        elif isinstance(result, ServerStat):
                            _check_stat(result)
                        elif isinstance(result, str):
                            assert len(result) <= FIELD_CAP and result.isprintable()
                        key = f"{name}: ok"
                    outcomes[key] = outcomes.get(key, 0) + 1
        print("[outcomes]", dict(sorted(outcomes.items())))
        assert m.elapsed < 30
        assert m.growth_mib < MEMORY_BOUND_MIB
        # Every kind of call met at least one error, and the crafted ones were typed.
        assert any(k.startswith("show_stat: LBProtocolError") for k in outcomes)
        assert any(k.startswith("set_state: HAProxyCommandError") for k in outcomes)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("case", "behaviour", "bound"),
    [
        pytest.param("silent", silent(False), CONNECT_TIMEOUT, id="silent"),
        pytest.param("silent after prompt", silent(True), COMMAND_TIMEOUT, id="silent-reply"),
        pytest.param("trickle on connect", trickle(False), CONNECT_TIMEOUT, id="trickle-connect"),
        pytest.param("trickle reply", trickle(True), COMMAND_TIMEOUT, id="trickle-reply"),
    ],
)
async def test_silent_or_trickling_peer_is_unreachable_in_time(
    serve: Callable[..., Any], kind: str, case: str, behaviour: Behaviour, bound: float
) -> None:
    """(c) A peer that accepts and never answers, or trickles bytes without a prompt: the
    timeout that applies ends it as LBUnreachable, and LBClient names the LB."""
    async with serve(kind, [behaviour, good]) as transport:
        client = LBClient("lbX", transport)
        with measured(f"{kind}: {case}") as m:
            with pytest.raises(LBUnreachable) as info:
                await client.show_stat(BACKEND)
        assert bound - 0.1 <= m.elapsed <= bound + 1.0
        assert m.growth_mib < MEMORY_BOUND_MIB
        assert info.value.lb == "lbX" and transport.description in str(info.value)
        assert_clean_message(info.value)
        stats = await client.servers(BACKEND)
        assert stats["node1"].is_up and stats["node1"].admin_state == "READY"

"""The SSH executor against hostile or broken input: Secret content that must not leak into
messages, commands that print without end, and SSH servers that stop answering.

Output tests run against a real OpenSSH sshd of the fleet; the servers that stop answering are
small asyncssh servers started here, since no well-behaved sshd can be made to misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator

import asyncssh
import pytest

from tests.integration.test_ssh_executor import creds
from wso2_operator.errors import (
    ConfigError,
    HostKeyMismatch,
    SSHAuthFailed,
    SSHCommandFailed,
    SSHCommandTimeout,
    SSHUnreachable,
)
from wso2_operator.ssh import (
    CHANNEL_CLOSE_TIMEOUT,
    SSHCredentials,
    SSHExecutor,
    handshake_limit,
    set_handshake_limit,
)
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.fleet_handles import NodeHandle

pytestmark = pytest.mark.timeout(120)

KEEP = 64 * 1024
BIG = 200_000_000  # bytes a runaway command prints


@pytest.fixture(scope="module")
def ssh_fleet() -> Iterator[Fleet]:
    with Fleet(FleetConfig(nodes=1, lbs=0, boot_seconds=0.5, ready_gap_seconds=0.2)) as fleet:
        yield fleet


@pytest.fixture
def node(ssh_fleet: Fleet) -> NodeHandle:
    return ssh_fleet.nodes[0]


@pytest.fixture
async def ex_fleet(ssh_fleet: Fleet) -> AsyncIterator[SSHExecutor]:
    async with SSHExecutor(creds(ssh_fleet)) as executor:
        yield executor


# ------------------------------------------------------------------------ Secret content


def shared_substrings(message: str, secret: str, size: int = 8) -> list[str]:
    return sorted(_windows(message, size) & _windows(secret, size))


def _windows(text: str, size: int) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)}


@pytest.mark.parametrize(
    ("algorithm", "fmt"),
    [("ssh-ed25519", "openssh"), ("ssh-rsa", "pkcs1-pem"), ("ecdsa-sha2-nistp256", "pkcs8-pem")],
)
@pytest.mark.parametrize("valid_lines_before", [0, 3])
def test_private_key_under_known_hosts_is_never_echoed(
    algorithm: str, fmt: str, valid_lines_before: int
) -> None:
    """A private key put under the Secret's known_hosts key by mistake: the error (which goes
    to Kubernetes status) names the line, and quotes nothing of the key."""
    secret = asyncssh.generate_private_key(algorithm).export_private_key(fmt).decode()
    pinned = [
        f"10.0.0.{i} {asyncssh.generate_private_key('ssh-ed25519').export_public_key().decode()}"
        for i in range(valid_lines_before)
    ]
    client_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key()
    known_hosts = "".join(line.strip() + "\n" for line in pinned) + secret
    c = SSHCredentials(username="deploy", private_key=client_key, known_hosts=known_hosts)
    with pytest.raises(ConfigError) as info:
        SSHExecutor(c)
    err = info.value
    message = str(err)
    # The first line asyncssh rejects is the first base64 line (the BEGIN line splits into a
    # "host" and an unparsable "key", which asyncssh skips).
    assert re.search(rf"\bline {valid_lines_before + 2}\b", message), message
    assert shared_substrings(message, secret) == [], message
    assert not any(ln in message for ln in secret.splitlines() if len(ln) >= 8)
    assert "PEM" in message and len(message) < 400
    # Not even the exception's context may carry asyncssh's message (a traceback prints it).
    assert err.__cause__ is None and err.__context__ is None


# -------------------------------------------------------------------------- bounded output


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    assert m, field
    return int(m.group(1))


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[dict[str, int]]:
    """Peak RSS of this process during the block minus RSS before it, in KiB."""
    # Reset the high-water mark (Linux >= 4.0) so that earlier tests' peaks do not hide ours.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out = {"before": _status_kib("VmRSS")}
    yield out
    out["peak"] = _status_kib("VmHWM")
    out["growth"] = out["peak"] - out["before"]


async def test_runaway_stdout_and_stderr_keep_bounded_memory(
    ssh_fleet: Fleet, node: NodeHandle
) -> None:
    """200 MB of output used to be buffered whole (RSS peaked ~450 MiB higher here, and GiBs
    in the review's set-up); now the head of stdout and the tail of stderr are kept, the rest
    is counted and dropped."""
    async with SSHExecutor(creds(ssh_fleet)) as ex:
        await ex.run(node.host, node.ssh_port, "true")  # connect outside the measurement
        t0 = time.monotonic()
        with peak_rss_growth() as out_mem:
            r = await ex.run(
                node.host,
                node.ssh_port,
                f"echo 1.2.3; head -c {BIG} /dev/zero; echo tail-of-stdout; echo err >&2",
                timeout=120,
            )
        out_secs = time.monotonic() - t0
        assert r.exit_status == 0
        assert r.stdout.startswith("1.2.3\n") and len(r.stdout.encode()) == KEEP
        assert r.stdout_dropped == len("1.2.3\n") + BIG + len("tail-of-stdout\n") - KEEP
        assert (r.stderr, r.stderr_dropped) == ("err\n", 0)

        t0 = time.monotonic()
        with peak_rss_growth() as err_mem:
            with pytest.raises(SSHCommandFailed) as info:
                await ex.run(
                    node.host,
                    node.ssh_port,
                    f"echo head-of-stderr >&2; head -c {BIG} /dev/zero >&2; "
                    "echo LAST-WORDS >&2; echo out; exit 7",
                    timeout=120,
                )
        err_secs = time.monotonic() - t0
        err = info.value
        assert err.exit_status == 7
        assert err.stderr_tail.endswith("\0LAST-WORDS\n")
        message = str(err)
        assert "LAST-WORDS" in message and len(message) <= 600
        assert "\0" not in message  # control characters of remote output are replaced

        r = await ex.run(
            node.host,
            node.ssh_port,
            f"echo head-of-stderr >&2; head -c {BIG} /dev/zero >&2; echo LAST-WORDS >&2",
            timeout=120,
        )
        assert len(r.stderr.encode()) == KEEP and r.stderr.endswith("\0LAST-WORDS\n")
        assert r.stderr_dropped == len("head-of-stderr\n") + BIG + len("LAST-WORDS\n") - KEEP
        assert (r.stdout, r.stdout_dropped) == ("", 0)

    print(
        f"\n200 MB stdout: {out_secs:.1f}s, RSS {out_mem['before'] // 1024} MiB -> peak "
        f"{out_mem['peak'] // 1024} MiB; 200 MB stderr: {err_secs:.1f}s, RSS "
        f"{err_mem['before'] // 1024} MiB -> peak {err_mem['peak'] // 1024} MiB"
    )
    assert out_mem["growth"] < 64 * 1024, out_mem
    assert err_mem["growth"] < 64 * 1024, err_mem


async def test_multibyte_output_is_cut_by_bytes_and_decoded_with_replacement(
    ex_fleet: SSHExecutor, node: NodeHandle
) -> None:
    # 40000 two-byte characters: 80000 bytes, cut at byte 65536, i.e. on a character boundary.
    r = await ex_fleet.run(node.host, node.ssh_port, "yes é | head -n 40000 | tr -d '\\n'")
    assert r.stdout == "é" * (KEEP // 2) and r.stdout_dropped == 80000 - KEEP
    # One leading byte shifts every character by one: the cut splits a character in two.
    r = await ex_fleet.run(
        node.host, node.ssh_port, "printf x; yes é | head -n 40000 | tr -d '\\n'"
    )
    assert r.stdout == "x" + "é" * (KEEP // 2 - 1) + "\ufffd"
    assert r.stdout_dropped == 80001 - KEEP


# ------------------------------------------------------------------ servers that stop answering


class Relay:
    """TCP relay in front of a test server that can swallow, per connection, every byte the
    client sends from some point on: the server then never sees our requests (nor our channel
    close), while what it sends still arrives. A hung peer, minus the guesswork."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._deaf: set[tuple[str, int]] = set()  # the server-side peer names of deaf links
        self._writers: set[asyncio.StreamWriter] = set()
        self._links: set[asyncio.Future[list[None]]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def make_deaf(self, server_side_peer: tuple[str, int]) -> None:
        self._deaf.add(server_side_peer)

    async def _link(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        name = sw.get_extra_info("sockname")[:2]
        self._writers |= {cw, sw}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if up and name in self._deaf:
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.close()

        done = asyncio.gather(pump(cr, sw, True), pump(sr, cw, False))
        self._links.add(done)
        try:
            await done
        finally:
            self._links.discard(done)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()  # ends the pumps: their reads see the closed sockets
        async with asyncio.timeout(5):
            await asyncio.gather(*self._links, return_exceptions=True)


# Remote-controlled text as a hostile server would send it: long, with terminal escapes and
# line breaks that would forge extra lines in a log or a status condition.
NASTY = "A" * 3000 + "\x1b[2J\r\nFORGED: all good\x07\u202e" + "B" * 3000


class SilentSession(asyncssh.SSHServerSession[bytes]):
    """Never sends output, an exit status, EOF or a close; calls ``deafen`` at ``when``.

    With ``when == "signal"`` it instead reports a nasty exit signal name at once.
    """

    def __init__(self, when: str, deafen: Callable[[], None]) -> None:
        self._when = when
        self._deafen = deafen
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan
        if self._when == "open":  # the open confirmation is already on its way
            self._deafen()

    def exec_requested(self, command: str) -> bool:
        if self._when == "exec":  # the reply is queued before the relay stops listening
            self._deafen()
        return True

    def session_started(self) -> None:
        if self._when == "signal" and self._chan is not None:
            self._chan.exit_with_signal("X" * 300 + "\x1b[2J\r\nFORGED")


class HostileServer(asyncssh.SSHServer):
    """Authenticates the fleet's client key, then misbehaves according to ``mode``:

    * ``channel``: never confirms (nor refuses) a session channel;
    * ``exec``: confirms the channel, then goes deaf, so the exec request is never answered;
    * ``close``: accepts the exec, runs nothing, then goes deaf, so a channel close is never
      answered either;
    * ``disconnect-<code>``: disconnects at the first auth request with that code and reason
      ``NASTY``;
    * ``refuse``: refuses every session channel with reason ``NASTY``;
    * ``signal``: "kills" every command with a long signal name full of escapes.
    """

    def __init__(self, mode: str, relay: Relay, never: list[asyncio.Future[None]]) -> None:
        self._mode = mode
        self._relay = relay
        self._never = never
        self._peer: tuple[str, int] = ("", 0)
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._peer = conn.get_extra_info("peername")[:2]

    def begin_auth(self, username: str) -> bool:
        if self._mode.startswith("disconnect-") and self._conn is not None:
            self._conn.disconnect(int(self._mode.split("-")[1]), NASTY)
        return True

    def session_requested(self) -> object:
        if self._mode == "refuse":
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, NASTY)
        if self._mode == "signal":
            return SilentSession("signal", lambda: None)
        if self._mode == "channel":
            never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._never.append(never)
            return never  # asyncssh confirms the channel once this resolves
        when = "open" if self._mode == "exec" else "exec"
        return SilentSession(when, lambda: self._relay.make_deaf(self._peer))


@contextlib.asynccontextmanager
async def hostile_server(fleet: Fleet, mode: str) -> AsyncIterator[tuple[int, str]]:
    """(port, known_hosts line) of a misbehaving SSH server that trusts the fleet's client key."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_public = asyncssh.import_private_key(fleet.client_private_key()).export_public_key()
    never: list[asyncio.Future[None]] = []
    holder: dict[str, Relay] = {}
    acceptor = await asyncssh.create_server(
        lambda: HostileServer(mode, holder["relay"], never),
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(client_public.decode()),
        keepalive_interval=0,
    )
    relay = holder["relay"] = await Relay(acceptor.sockets[0].getsockname()[1]).start()
    public = host_key.export_public_key().decode().strip()
    try:
        yield relay.port, f"[127.0.0.1]:{relay.port} {public}\n"
    finally:
        for fut in never:
            fut.cancel()
        await relay.stop()
        acceptor.close()
        await acceptor.wait_closed()


@pytest.mark.parametrize("mode", ["channel", "exec"])
async def test_session_never_confirmed_raises_unreachable_within_connect_timeout(
    ssh_fleet: Fleet, node: NodeHandle, mode: str
) -> None:
    connect_timeout = 2.0
    async with hostile_server(ssh_fleet, mode) as (port, pinned):
        c = creds(
            ssh_fleet, known_hosts=ssh_fleet.known_hosts() + pinned, connect_timeout=connect_timeout
        )
        async with SSHExecutor(c) as ex:
            first = await ex.connection("127.0.0.1", port)  # auth works: only sessions hang
            elapsed = []
            for _ in range(2):
                t0 = time.monotonic()
                with pytest.raises(SSHUnreachable) as info:
                    async with asyncio.timeout(connect_timeout + 15):  # the old code hung here
                        await ex.run("127.0.0.1", port, "true", timeout=30)
                elapsed.append(time.monotonic() - t0)
                assert info.value.transient
                what = "session channel" if mode == "channel" else "exec request"
                assert what in str(info.value) and "connect timeout (2s)" in str(info.value)
            print(f"\nsession never confirmed ({mode}): run() raised after {elapsed}")
            assert all(connect_timeout * 0.9 <= s < connect_timeout + 5 for s in elapsed), elapsed
            # The connection was dropped (the second attempt above used a fresh one) ...
            async with asyncio.timeout(1):
                await first.wait_closed()
            assert await ex.connection("127.0.0.1", port) is not first
            # ... and the executor still works against a well-behaved server.
            r = await ex.run(node.host, node.ssh_port, "echo still fine", timeout=5)
            assert r.stdout == "still fine\n"


async def test_command_whose_channel_never_closes_times_out_and_drops_the_connection(
    ssh_fleet: Fleet, node: NodeHandle
) -> None:
    """The server accepts the exec, never reports an exit, and ignores our channel close."""
    timeout = 1.0
    async with hostile_server(ssh_fleet, "close") as (port, pinned):
        c = creds(ssh_fleet, known_hosts=ssh_fleet.known_hosts() + pinned, connect_timeout=2.0)
        async with SSHExecutor(c) as ex:
            first = await ex.connection("127.0.0.1", port)
            t0 = time.monotonic()
            with pytest.raises(SSHCommandTimeout) as info:
                async with asyncio.timeout(timeout + 20):  # the old code hung here
                    await ex.run("127.0.0.1", port, "sleep 100", timeout=timeout)
            elapsed = time.monotonic() - t0
            print(f"\nchannel never closed: run() raised SSHCommandTimeout after {elapsed:.2f}s")
            assert info.value.transient and info.value.timeout == timeout
            assert timeout <= elapsed < timeout + CHANNEL_CLOSE_TIMEOUT + 2, elapsed
            async with asyncio.timeout(1):
                await first.wait_closed()  # not trusted with more channels
            assert await ex.connection("127.0.0.1", port) is not first
            r = await ex.run(node.host, node.ssh_port, "echo still fine", timeout=5)
            assert r.stdout == "still fine\n"


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        (f"disconnect-{asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE}", SSHAuthFailed),
        (f"disconnect-{asyncssh.DISC_HOST_KEY_NOT_VERIFIABLE}", HostKeyMismatch),
        (f"disconnect-{asyncssh.DISC_BY_APPLICATION}", SSHUnreachable),
        ("refuse", SSHUnreachable),
        ("signal", SSHCommandFailed),
    ],
)
async def test_remote_controlled_text_is_capped_and_defused_in_messages(
    ssh_fleet: Fleet, mode: str, error: type[Exception]
) -> None:
    """Disconnect reasons, channel-open failure reasons and signal names come from the server:
    a message (which ends up in Kubernetes status) takes at most a short, single-line piece."""
    async with hostile_server(ssh_fleet, mode) as (port, pinned):
        c = creds(ssh_fleet, known_hosts=ssh_fleet.known_hosts() + pinned, connect_timeout=2.0)
        async with SSHExecutor(c) as ex:
            with pytest.raises(error) as info:
                await ex.run("127.0.0.1", port, "true", timeout=5)
    message = str(info.value)
    assert "AAAAAAAA" in message or "XXXXXXXX" in message  # the remote text is there, in part
    assert len(message) < 450, (len(message), message)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]", message), message
    assert "FORGED" not in message


# ------------------------------------------------------------------------ handshake limit


class SilentPeer:
    """Accepts TCP connections and never says a word (an SSH server that hangs before its
    banner), counting how many it was sent."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> SilentPeer:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client gives up
        writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
def two_handshakes_at_once() -> Iterator[None]:
    before = handshake_limit()
    set_handshake_limit(2)  # applies to the gate of the test's own (fresh) event loop
    try:
        yield
    finally:
        set_handshake_limit(before)


async def test_handshakes_beyond_the_limit_queue_without_spending_their_timeout(
    ssh_fleet: Fleet, node: NodeHandle, two_handshakes_at_once: None
):
    peers = [await SilentPeer().start() for _ in range(4)]
    loop = asyncio.get_running_loop()
    try:
        async with SSHExecutor(creds(ssh_fleet, connect_timeout=1.0)) as ex:
            t0 = loop.time()
            silent = [asyncio.create_task(ex.connection("127.0.0.1", p.port)) for p in peers]
            await asyncio.sleep(0)
            real = asyncio.create_task(ex.run(node.host, node.ssh_port, "echo ok", timeout=10))
            await asyncio.sleep(0.5)
            # Two handshakes in flight: the first two peers were dialled, the rest wait.
            assert [p.accepted for p in peers] == [1, 1, 0, 0]
            got = await asyncio.gather(*silent, return_exceptions=True)
            assert all(isinstance(r, SSHUnreachable) for r in got), got
            assert all("timed out after 1s" in str(r) for r in got)
            assert [p.accepted for p in peers] == [1, 1, 1, 1]
            result = await real
            # It got its turn only after two rounds of 1 s timeouts, more than its own 1 s
            # connect timeout, and was not reported unreachable for waiting.
            assert result.stdout.strip() == "ok"
            assert loop.time() - t0 >= 2.0
    finally:
        for p in peers:
            p.close()


def test_the_handshake_limit_is_at_least_one() -> None:
    with pytest.raises(ConfigError, match=">= 1"):
        set_handshake_limit(0)
    assert handshake_limit() >= 1

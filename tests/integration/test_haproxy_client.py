"""The HAProxy runtime client against the real fleet: HAProxy 2.6, sshd and stand-ins (no mocks).

The pool under test reaches each LB's unix admin socket through SSH (SshUnixTransport), like the
operator does. A separate sampler reads state through the local sockets, so that it neither
shares the pool's connections nor slows them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from wso2_operator.errors import (
    ConfigError,
    DrainTimeout,
    LBUnreachable,
    NoSuchBackend,
    NoSuchServer,
    NotAdmin,
    ReenableTimeout,
)
from wso2_operator.haproxy import (
    LBClient,
    ServerStat,
    SshUnixTransport,
    TcpTransport,
    UnixSocketTransport,
)
from wso2_operator.haproxy_pool import LBPool, build_lb_pool
from wso2_operator.ssh import SSHCredentials, SSHExecutor
from wso2_sandbox.fleet import Fleet, FleetConfig

pytestmark = pytest.mark.timeout(60)

BACKEND = "PRD_wso2ei"
NODES = ["node1", "node2", "node3"]


@pytest.fixture(scope="module")
def adapter_fleet() -> Iterator[Fleet]:
    cfg = FleetConfig(
        nodes=3,
        lbs=2,
        boot_seconds=1.0,
        ready_gap_seconds=0.5,
        install_seconds=0.1,
        tcp_admin_lbs=(1,),
    )
    with Fleet(cfg) as fleet:
        yield fleet


def credentials(fleet: Fleet, connect_timeout: float = 5.0) -> SSHCredentials:
    return SSHCredentials(
        username=fleet.description["ssh"]["user"],
        private_key=fleet.client_private_key(),
        known_hosts=fleet.known_hosts(),
        connect_timeout=connect_timeout,
    )


def ssh_specs(fleet: Fleet) -> list[dict[str, object]]:
    return [
        {"name": lb.name, "host": lb.host, "sshPort": lb.ssh_port, "socket": lb.socket}
        for lb in fleet.lbs
    ]


@pytest.fixture
async def executor(adapter_fleet: Fleet) -> AsyncIterator[SSHExecutor]:
    async with SSHExecutor(credentials(adapter_fleet)) as ex:
        yield ex


@pytest.fixture
async def pool(adapter_fleet: Fleet, executor: SSHExecutor) -> AsyncIterator[LBPool]:
    p = build_lb_pool(executor, ssh_specs(adapter_fleet), poll_interval=0.05)
    yield p
    await p.close()


@pytest.fixture
async def local_pool(adapter_fleet: Fleet) -> AsyncIterator[LBPool]:
    """Direct local sockets: for test set-up and for samplers."""
    p = LBPool([LBClient(lb.name, UnixSocketTransport(lb.socket)) for lb in adapter_fleet.lbs])
    yield p
    await p.close()


@pytest.fixture(autouse=True)
async def all_ready_afterwards(adapter_fleet: Fleet) -> AsyncIterator[None]:
    """Every test starts and ends with every server READY and UP on every LB."""
    await wait_all_up(adapter_fleet)
    yield
    for lb in adapter_fleet.lbs:
        for n in NODES:
            await asyncio.to_thread(lb.command, f"set server {BACKEND}/{n} state ready")
    await wait_all_up(adapter_fleet)


async def wait_all_up(fleet: Fleet, within: float = 15.0) -> None:
    end = time.monotonic() + within
    while True:
        rows = [await asyncio.to_thread(lb.servers) for lb in fleet.lbs]
        if all(r[n]["status"] == "UP" for r in rows for n in NODES):
            return
        if time.monotonic() > end:
            raise AssertionError(
                f"servers not all UP: {[{n: r[n]['status'] for n in NODES} for r in rows]}"
            )
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------- helpers


@dataclass
class Reply:
    status: int
    node: str
    done: float


async def get(url: str, within: float = 10.0) -> Reply:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.get(url, timeout=aiohttp.ClientTimeout(total=within)) as r,
    ):
        await r.read()
        return Reply(r.status, r.headers.get("X-Node", ""), time.monotonic())


async def burst(urls: list[str], n: int, concurrency: int = 10) -> list[Reply]:
    out: list[Reply] = []
    sem = asyncio.Semaphore(concurrency)
    conn = aiohttp.TCPConnector(force_close=True, limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one(url: str) -> None:
            async with sem, s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()
                out.append(Reply(r.status, r.headers.get("X-Node", ""), time.monotonic()))

        await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(n)))
    return out


@dataclass
class Sampler:
    """Records (time, lb, ServerStat) of one server on every LB until stopped."""

    pool: LBPool
    server: str
    samples: list[tuple[float, str, ServerStat]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            states = await self.pool.states(BACKEND)
            now = time.monotonic()
            for lb, servers in states.items():
                self.samples.append((now, lb, servers[self.server]))
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def start_slow_request_to(
    fleet: Fleet, local_pool: LBPool, server: str, ms: int
) -> asyncio.Task[Reply]:
    """Start /slow?ms=N through lb1's frontend, pinned to `server` by briefly putting the other
    servers in MAINT on lb1; returns once lb1 counts the session on `server`."""
    lb1 = local_pool.clients[0]
    others = [n for n in NODES if n != server]
    for n in others:
        await lb1.set_state(BACKEND, n, "maint")
    task = asyncio.create_task(get(fleet.lbs[0].url(f"/slow?ms={ms}")))
    end = time.monotonic() + 5
    while (await lb1.server(BACKEND, server)).scur < 1:
        assert time.monotonic() < end, "slow request never showed up in scur"
        await asyncio.sleep(0.01)
    for n in others:
        await lb1.set_state(BACKEND, n, "ready")
    return task


# ------------------------------------------------------------------------------- drain


async def test_drain_waits_for_inflight_request_then_maint(
    adapter_fleet: Fleet, pool: LBPool, local_pool: LBPool
) -> None:
    slow = await start_slow_request_to(adapter_fleet, local_pool, "node2", 3000)
    async with Sampler(local_pool, "node2") as sampler:
        result = await pool.drain(BACKEND, "node2", deadline=10)
        t_returned = time.monotonic()
        await asyncio.sleep(0.1)  # let the sampler see the final state
    reply = await slow
    assert (reply.status, reply.node) == (200, "node2")
    assert not result.forced and result.confirmed == ["lb1", "lb2"] and result.skipped == []
    # It really waited for the request (~3 s minus set-up), and MAINT came only afterwards.
    assert result.wait_seconds > 1.5
    assert reply.done <= t_returned
    first_maint = min(t for t, _, s in sampler.samples if s.admin_state == "MAINT")
    assert first_maint >= reply.done
    # Per LB the admin state only ever moves READY -> DRAIN -> MAINT, with DRAIN while the
    # request was in flight.
    order = {"READY": 0, "DRAIN": 1, "MAINT": 2}
    for lb in ("lb1", "lb2"):
        seq = [order[s.admin_state] for _, name, s in sampler.samples if name == lb]
        assert seq == sorted(seq)
        assert any(
            s.admin_state == "DRAIN"
            for t, name, s in sampler.samples
            if name == lb and t < reply.done
        )
    assert all(s.scur >= 1 for t, lb, s in sampler.samples if lb == "lb1" and t < reply.done - 0.1)
    states = await local_pool.states(BACKEND)
    assert all(st["node2"].admin_state == "MAINT" for st in states.values())
    # Idempotent: draining an already-MAINT server returns at once and leaves it MAINT.
    again = await pool.drain(BACKEND, "node2", deadline=5)
    assert again.already_maint == ["lb1", "lb2"] and again.duration < 1.0
    states = await local_pool.states(BACKEND)
    assert all(st["node2"].is_maint for st in states.values())


async def test_drain_deadline_fails_and_leaves_drain_not_maint(
    adapter_fleet: Fleet, pool: LBPool, local_pool: LBPool
) -> None:
    slow = await start_slow_request_to(adapter_fleet, local_pool, "node2", 3000)
    t0 = time.monotonic()
    with pytest.raises(DrainTimeout) as info:
        await pool.drain(BACKEND, "node2", deadline=1.0)
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 3.0  # the deadline plus a few polls (loaded CI machines are slow)
    assert info.value.sessions == {"lb1": 1} and info.value.transient
    states = await local_pool.states(BACKEND)
    assert {lb: st["node2"].admin_state for lb, st in states.items()} == {
        "lb1": "DRAIN",
        "lb2": "DRAIN",
    }
    reply = await slow  # the request was not cut
    assert (reply.status, reply.node) == (200, "node2")


async def test_drain_deadline_shutdown_cuts_sessions_then_maint(
    adapter_fleet: Fleet, pool: LBPool, local_pool: LBPool
) -> None:
    slow = await start_slow_request_to(adapter_fleet, local_pool, "node2", 5000)
    t0 = time.monotonic()
    result = await pool.drain(BACKEND, "node2", deadline=0.5, on_timeout="shutdown")
    assert result.forced and result.sessions_at_deadline == {"lb1": 1}
    assert result.sessions_left == {}
    reply = await slow
    # Cut by HAProxy: the client gets a 502 at once instead of the node's 200 after 5 s.
    assert (reply.status, reply.node) == (502, "")
    assert reply.done - t0 < 2.0
    states = await local_pool.states(BACKEND)
    assert all(st["node2"].is_maint and st["node2"].scur == 0 for st in states.values())


async def test_after_drain_no_lb_routes_to_node_and_reenable_restores(
    adapter_fleet: Fleet, executor: SSHExecutor, local_pool: LBPool
) -> None:
    # Mixed transports: lb1 over SSH, lb2 over its TCP admin socket.
    lb2 = adapter_fleet.lbs[1]
    assert lb2.tcp_admin is not None
    pool = LBPool(
        [
            LBClient("lb1", SshUnixTransport(executor, *_ssh_addr(adapter_fleet, 0))),
            LBClient("lb2", TcpTransport(*lb2.tcp_admin)),
        ]
    )
    try:
        await pool.drain(BACKEND, "node1", deadline=5)
        urls = [lb.url("/") for lb in adapter_fleet.lbs]
        replies = await burst(urls, 400)  # 200 through each LB's frontend
        assert len(replies) == 400
        assert all(r.status == 200 for r in replies)
        assert Counter(r.node for r in replies)["node1"] == 0
        assert set(Counter(r.node for r in replies)) == {"node2", "node3"}
        result = await pool.reenable(BACKEND, "node1", deadline=10)
        assert result.confirmed == ["lb1", "lb2"] and result.already_ready == []
        states = await local_pool.states(BACKEND)
        assert all(
            st["node1"].is_up and st["node1"].admin_state == "READY" for st in states.values()
        )
        replies = await burst(urls, 60)
        assert Counter(r.node for r in replies)["node1"] > 0
        # Idempotent: already READY and UP returns at once.
        again = await pool.reenable(BACKEND, "node1", deadline=5)
        assert again.already_ready == ["lb1", "lb2"] and again.duration < 1.0
    finally:
        await pool.close()


def _ssh_addr(fleet: Fleet, i: int) -> tuple[str, int, str]:
    lb = fleet.lbs[i]
    return lb.host, lb.ssh_port, lb.socket


# ------------------------------------------------------------------------------ reenable


async def test_reenable_unhealthy_node_never_takes_traffic(
    adapter_fleet: Fleet, executor: SSHExecutor, pool: LBPool, local_pool: LBPool
) -> None:
    node = adapter_fleet.node("node3")
    await pool.drain(BACKEND, "node3", deadline=5)
    # Up but unhealthy: the port is open and answers, /health says 503 for a minute.
    await executor.run(node.host, node.ssh_port, "wso2ctl stop")
    node.set_timing(boot_seconds=60, ready_gap_seconds=60)
    await executor.run(node.host, node.ssh_port, "wso2ctl start")
    await wait_status(node.url("/health"), 503)
    try:
        urls = [lb.url("/") for lb in adapter_fleet.lbs]
        replies: list[Reply] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                replies.extend(await burst(urls, 20, concurrency=4))

        async with Sampler(local_pool, "node3") as sampler:
            load = asyncio.create_task(traffic())
            t0 = time.monotonic()
            with pytest.raises(ReenableTimeout) as info:
                await pool.reenable(BACKEND, "node3", deadline=3.0)
            elapsed = time.monotonic() - t0
            stop.set()
            await load
        assert 2.9 < elapsed < 6.0
        assert set(info.value.states) == {"lb1", "lb2"}
        assert len(replies) > 50 and all(r.status == 200 for r in replies)
        assert Counter(r.node for r in replies)["node3"] == 0
        # Never READY, never UP on any LB at any sample; left in DRAIN.
        assert sampler.samples
        assert not any(s.admin_state == "READY" or s.is_up for _, _, s in sampler.samples)
        states = await local_pool.states(BACKEND)
        for st in states.values():
            assert st["node3"].admin_state == "DRAIN" and not st["node3"].op_running
    finally:
        await executor.run(node.host, node.ssh_port, "wso2ctl stop")
        node.set_timing(boot_seconds=0.5, ready_gap_seconds=0.2)
        await executor.run(node.host, node.ssh_port, "wso2ctl start")
    # Once healthy, the same call succeeds from DRAIN, after fresh passing checks.
    result = await pool.reenable(BACKEND, "node3", deadline=15)
    assert result.check_wait_seconds > 0.3  # at least one check interval: proof, not a stale read
    states = await local_pool.states(BACKEND)
    assert all(st["node3"].is_up for st in states.values())


async def test_warm_starts_the_proof_while_the_node_boots_and_reenable_keeps_it(
    adapter_fleet: Fleet, executor: SSHExecutor, pool: LBPool, local_pool: LBPool
) -> None:
    node = adapter_fleet.node("node2")
    await pool.drain(BACKEND, "node2", deadline=5)
    # A READY server is never touched.
    assert await pool.warm(BACKEND, "node1") == []
    states = await local_pool.states(BACKEND)
    assert all(st["node1"].admin_state == "READY" and st["node1"].is_up for st in states.values())
    await executor.run(node.host, node.ssh_port, "wso2ctl stop")
    node.set_timing(boot_seconds=2.0, ready_gap_seconds=1.5)
    urls = [lb.url("/") for lb in adapter_fleet.lbs]
    try:
        async with Sampler(local_pool, "node2") as sampler:
            await executor.run(node.host, node.ssh_port, "wso2ctl start")
            assert await pool.warm(BACKEND, "node2") == ["lb1", "lb2"]
            warmed = len(sampler.samples)
            replies = await burst(urls, 100)
            # Warmed: fresh passes on every LB once the node is ready, while still DRAIN.
            end = time.monotonic() + 15
            for lb in local_pool.clients:
                while not (await lb.server(BACKEND, "node2")).op_running:
                    assert time.monotonic() < end, "no fresh passing check after the boot"
                    await asyncio.sleep(0.05)
            proven = len(sampler.samples)
            replies += await burst(urls, 100)
            result = await pool.reenable(BACKEND, "node2", deadline=10)
    finally:
        node.set_timing(boot_seconds=0.5, ready_gap_seconds=0.2)
    assert result.confirmed == ["lb1", "lb2"]
    assert all(r.status == 200 for r in replies)
    assert Counter(r.node for r in replies)["node2"] == 0  # out of rotation the whole time
    before = [s for _, _, s in sampler.samples[warmed:proven]]
    # Boot behind DRAIN + forced down: DOWN (no traffic) until fresh passes; never READY early.
    assert any(not s.op_running for s in before)
    assert all(s.admin_state == "DRAIN" for s in before)
    # reenable() kept the warm proof: it did not force the server DOWN again.
    after = [s for _, _, s in sampler.samples[proven:]]
    assert after and all(s.op_running for s in after)
    states = await local_pool.states(BACKEND)
    assert all(st["node2"].admin_state == "READY" and st["node2"].is_up for st in states.values())


async def test_stale_l7ok_right_after_drain_from_maint(
    adapter_fleet: Fleet, executor: SSHExecutor, local_pool: LBPool
) -> None:
    """Documents the HAProxy behaviour the re-enable rule is built on."""
    node = adapter_fleet.node("node2")
    lb1 = local_pool.clients[0]
    await local_pool.maint(BACKEND, "node2")
    await executor.run(node.host, node.ssh_port, "wso2ctl stop")
    try:
        await lb1.set_state(BACKEND, "node2", "drain")
        s = await lb1.server(BACKEND, "node2")
        # The node is not even running, yet HAProxy reports it operational with a passing check.
        assert s.op_running and s.check_status == "L7OK" and s.status.startswith("DRAIN")
        await lb1.force_health_down(BACKEND, "node2")
        s = await lb1.server(BACKEND, "node2")
        assert not s.op_running and s.status == "DOWN"
    finally:
        await local_pool.maint(BACKEND, "node2")
        await executor.run(node.host, node.ssh_port, "wso2ctl start")
    await wait_status(node.url("/health"))


async def wait_status(url: str, status: int = 200, within: float = 10.0) -> None:
    end = time.monotonic() + within
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            if (await get(url, within=2)).status == status:
                return
        assert time.monotonic() < end, f"{url} never healthy"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------- errors, no changes


def snapshot(states: dict[str, dict[str, ServerStat]]) -> dict[tuple[str, str], tuple]:
    return {
        (lb, n): (s.admin_state, s.status.split(" ")[0], s.weight)
        for lb, servers in states.items()
        for n, s in servers.items()
    }


async def test_wrong_names_raise_typed_errors_and_change_nothing(
    pool: LBPool, local_pool: LBPool
) -> None:
    before = snapshot(await local_pool.states(BACKEND))
    with pytest.raises(NoSuchBackend) as b:
        await pool.preflight("PRD_nope", NODES)
    assert b.value.lb in ("lb1", "lb2") and "PRD_nope" in str(b.value)
    with pytest.raises(NoSuchServer) as s:
        await pool.preflight(BACKEND, ["node1", "node9", "nodeX"])
    assert s.value.servers == ["node9", "nodeX"] and s.value.backend == BACKEND
    assert "lb1" in str(s.value) and "lb2" in str(s.value)
    for op in (
        pool.drain(BACKEND, "node9", deadline=1),
        pool.reenable(BACKEND, "node9", deadline=1),
        pool.maint(BACKEND, "node9"),
    ):
        with pytest.raises(NoSuchServer):
            await op
    with pytest.raises(NoSuchBackend):
        await pool.drain("PRD_nope", "node1", deadline=1)
    with pytest.raises(ConfigError):
        await pool.drain(BACKEND, "node1; disable server x", deadline=1)
    with pytest.raises(NoSuchServer):
        await pool.clients[0].set_state(BACKEND, "node9", "maint")
    with pytest.raises(NoSuchBackend):
        await pool.clients[0].set_state("PRD_nope", "node1", "maint")
    ok = await pool.preflight(BACKEND, NODES)
    assert ok.levels == {"lb1": "admin", "lb2": "admin"} and ok.confirmed == ["lb1", "lb2"]
    assert snapshot(await local_pool.states(BACKEND)) == before


async def test_operator_level_socket_gives_clear_error(
    adapter_fleet: Fleet, executor: SSHExecutor, local_pool: LBPool
) -> None:
    lb = adapter_fleet.lbs[0]
    before = snapshot(await local_pool.states(BACKEND))
    low = LBClient("lb1", SshUnixTransport(executor, lb.host, lb.ssh_port, lb.operator_socket))
    pool = LBPool([low])
    try:
        assert await low.cli_level() == "operator"
        with pytest.raises(NotAdmin) as pre:
            await pool.preflight(BACKEND, NODES)
        assert pre.value.lb == "lb1" and pre.value.level == "operator"
        assert "lb1" in str(pre.value) and "level admin" in str(pre.value)
        with pytest.raises(NotAdmin) as w:
            await pool.drain(BACKEND, "node1", deadline=1)
        assert "lb1" in str(w.value) and not w.value.transient
        # Reading is allowed at operator level.
        assert set(await low.show_stat(BACKEND)) == set(NODES)
    finally:
        await pool.close()
    assert snapshot(await local_pool.states(BACKEND)) == before


# ------------------------------------------------------------------------------- transports


async def test_ssh_unix_transport_reuses_one_channel(
    adapter_fleet: Fleet, executor: SSHExecutor
) -> None:
    lb = adapter_fleet.lbs[1]
    client = LBClient("lb2", SshUnixTransport(executor, lb.host, lb.ssh_port, lb.socket))
    try:
        assert await client.cli_level() == "admin"
        t0 = time.monotonic()
        for _ in range(20):
            assert set(await client.show_stat(BACKEND, check_worker=False)) == set(NODES)
        per_command = (time.monotonic() - t0) / 20
        assert per_command < 0.04, per_command  # a new channel per command costs ~46 ms
        conn = await executor.connection(lb.host, lb.ssh_port)
        assert await executor.connection(lb.host, lb.ssh_port) is conn
    finally:
        await client.close()


async def test_cancelled_command_does_not_desync_the_connection(adapter_fleet: Fleet) -> None:
    lb = adapter_fleet.lbs[0]
    client = LBClient("lb1", UnixSocketTransport(lb.socket))
    try:
        for i in range(30):
            task = asyncio.create_task(client.show_stat(BACKEND))
            for _ in range(i % 4):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert await client.cli_level() == "admin"
    finally:
        await client.close()


async def test_tcp_transport(adapter_fleet: Fleet) -> None:
    lb = adapter_fleet.lbs[1]
    assert lb.tcp_admin is not None
    client = LBClient("lb2", TcpTransport(*lb.tcp_admin))
    try:
        assert await client.cli_level() == "admin"
        servers = await client.servers(BACKEND)
        assert set(servers) == set(NODES)
        assert all(s.admin_state == "READY" and s.op_state == 2 for s in servers.values())
    finally:
        await client.close()


class CountingTransport:
    """A real transport that records every command line sent through it."""

    def __init__(self, inner: UnixSocketTransport) -> None:
        self.inner = inner
        self.lines: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def command(self, line: str) -> str:
        self.lines.append(line)
        return await self.inner.command(line)


async def test_concurrent_server_reads_share_reads_and_see_their_own_writes(
    adapter_fleet: Fleet,
) -> None:
    lb = adapter_fleet.lbs[0]
    counted = CountingTransport(UnixSocketTransport(lb.socket))
    client = LBClient("lb1", counted)  # type: ignore[arg-type]
    try:
        await client.servers(BACKEND)
        counted.lines.clear()
        # Twelve node tasks polling the backend at once: at most two reads between them.
        views = await asyncio.gather(*(client.server(BACKEND, n) for n in NODES * 4))
        assert [v.name for v in views] == NODES * 4
        assert all(v.admin_state == "READY" for v in views)
        reads = [line for line in counted.lines if line.startswith("show stat")]
        assert 1 <= len(reads) <= 2, counted.lines
        # A caller's read never predates its own write, even with another read under way.
        running = asyncio.ensure_future(client.servers(BACKEND))
        await asyncio.sleep(0)
        await client.set_state(BACKEND, "node2", "drain")
        assert (await client.server(BACKEND, "node2")).admin_state == "DRAIN"
        await running
    finally:
        await client.set_state(BACKEND, "node2", "ready")
        await client.close()


def silent_listener() -> socket.socket:
    """A TCP port that completes the handshake (kernel backlog) and then never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


async def test_unreachable_lb_is_lb_unreachable_within_connect_timeout(
    adapter_fleet: Fleet,
) -> None:
    subnet = adapter_fleet.lbs[0].host.rsplit(".", 1)[0]
    async with SSHExecutor(credentials(adapter_fleet, connect_timeout=1.0)) as ex:
        # Nothing listens there: refused at once.
        ghost = build_lb_pool(
            ex,
            [{"name": "ghost", "host": f"{subnet}.250", "sshPort": 22, "socket": "/x"}],
            connect_timeout=1.0,
        )
        t0 = time.monotonic()
        with pytest.raises(LBUnreachable) as refused:
            await ghost.states(BACKEND)
        assert time.monotonic() - t0 < 1.0
        assert refused.value.transient and refused.value.lb == "ghost"
        # Something listens but never answers: the connect timeout applies.
        with contextlib.closing(silent_listener()) as lst:
            port = lst.getsockname()[1]
            for spec in (
                {"name": "mute-ssh", "host": "127.0.0.1", "sshPort": port, "socket": "/x"},
                {"name": "mute-tcp", "address": f"127.0.0.1:{port}"},
            ):
                mute = build_lb_pool(ex, [spec], connect_timeout=1.0)
                t0 = time.monotonic()
                with pytest.raises(LBUnreachable) as timed_out:
                    await mute.preflight(BACKEND, NODES)
                elapsed = time.monotonic() - t0
                assert 0.9 < elapsed < 2.5, (spec["name"], elapsed)
                assert timed_out.value.lb == spec["name"]
                await mute.close()


async def test_tolerate_unreachable_skips_but_needs_one_confirmation(
    adapter_fleet: Fleet, executor: SSHExecutor, local_pool: LBPool
) -> None:
    subnet = adapter_fleet.lbs[0].host.rsplit(".", 1)[0]
    specs = [
        ssh_specs(adapter_fleet)[0],
        {"name": "ghost", "host": f"{subnet}.250", "sshPort": 22, "socket": "/x"},
    ]
    strict = build_lb_pool(executor, specs)
    with pytest.raises(LBUnreachable):
        await strict.drain(BACKEND, "node1", deadline=2)
    states = await local_pool.states(BACKEND)
    assert states["lb1"]["node1"].admin_state == "READY"  # nothing changed before the failure
    tolerant = build_lb_pool(executor, specs, tolerate_unreachable=True, poll_interval=0.05)
    result = await tolerant.drain(BACKEND, "node1", deadline=2)
    assert (result.confirmed, result.skipped) == (["lb1"], ["ghost"])
    back = await tolerant.reenable(BACKEND, "node1", deadline=10)
    assert (back.confirmed, back.skipped) == (["lb1"], ["ghost"])
    only_ghost = build_lb_pool(executor, specs[1:], tolerate_unreachable=True)
    with pytest.raises(LBUnreachable, match="no LB reachable"):
        await only_ghost.maint(BACKEND, "node1")
    for p in (strict, tolerant, only_ghost):
        await p.close()


async def test_kept_connection_follows_lb_reload(
    adapter_fleet: Fleet, pool: LBPool, local_pool: LBPool
) -> None:
    """After a reload the kept CLI connection is on the old, stopping worker; the client must
    notice and reconnect, and it must see that the reload lost the MAINT state."""
    await pool.maint(BACKEND, "node1")
    await asyncio.to_thread(adapter_fleet.reload_lb, 0)
    states = await pool.states(BACKEND)  # same pool, same kept connections
    assert states["lb1"]["node1"].admin_state == "READY"  # runtime state lost by the reload
    assert states["lb2"]["node1"].admin_state == "MAINT"
    await pool.maint(BACKEND, "node1")
    states = await local_pool.states(BACKEND)
    assert all(st["node1"].admin_state == "MAINT" for st in states.values())

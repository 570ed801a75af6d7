"""The operator's HTTP health check against hostile or broken HTTP servers.

A node's health endpoint is remote input: a broken or compromised node can send a huge body, a
gzip bomb, trickle bytes, or put anything in its status line and headers. The check must stay
within spec.timeout, keep memory bounded, and return a short, printable detail.

The servers are raw asyncio servers in this process, so that they can misbehave in ways no HTTP
framework would. Run with ``-s`` to see the measured times and memory growth.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from wso2_operator.health import BODY_PREFIX, DETAIL_CAP, HealthChecker
from wso2_operator.model import HealthSpec

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
GiB = 1024 * MiB
# Growth of the peak RSS allowed for one check. A bounded check holds a 64 KiB prefix plus
# aiohttp's read buffers; the old one held the whole (decompressed) body.
MEMORY_BOUND_MIB = 16


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
    """Wall time and growth of the peak RSS (VmHWM, reset first) over RSS before the block."""
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


# ------------------------------------------------------------------------ hostile servers


@dataclass
class Seen:
    """What the server saw: the request head, bytes it got out, when the client hung up."""

    request: bytes = b""
    sent: int = 0
    closed_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: str) -> str | None:
        for line in self.request.decode("latin-1").split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None


Behaviour = Callable[[asyncio.StreamWriter, Seen], Awaitable[None]]


@contextlib.asynccontextmanager
async def http_server(behaviour: Behaviour) -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)  # type: ignore[arg-type]
        try:
            seen.request = await reader.readuntil(b"\r\n\r\n")
            await behaviour(writer, seen)
            await reader.read()  # hold the connection until the client drops it
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            seen.closed_at = time.monotonic()
            seen.done.set()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def send(writer: asyncio.StreamWriter, seen: Seen, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    seen.sent += len(data)


def huge_body(total: int, chunked: bool) -> Behaviour:
    """200 OK and ``total`` bytes of body made on the fly (chunked: no length, forever)."""
    block = b"\0" * (256 * 1024)

    async def run(writer: asyncio.StreamWriter, seen: Seen) -> None:
        if chunked:
            await send(writer, seen, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            frame = f"{len(block):x}\r\n".encode() + block + b"\r\n"
            while True:
                await send(writer, seen, frame)
        await send(writer, seen, f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        while seen.sent < total:
            await send(writer, seen, block)

    return run


@functools.cache
def gzip_bomb(size: int = GiB) -> bytes:
    """gzip of ``size`` zero bytes, ~1 MiB on the wire.

    After a full flush deflate starts afresh, so every MiB of zeros compresses to the same bytes:
    compress one MiB, repeat it, and finish with a real CRC and length (a valid gzip file).
    """
    mib = bytes(MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH) == block
    crc = 0
    for _ in range(size // MiB):
        crc = zlib.crc32(mib, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    bomb = header + block * (size // MiB) + c.flush() + struct.pack("<II", crc, size % 2**32)
    # Sanity: it is real gzip, and it does expand.
    assert len(zlib.decompressobj(31).decompress(bomb[: 64 * 1024], 8 * MiB)) == 8 * MiB
    return bomb


def gzip_bomb_response() -> Behaviour:
    async def run(writer: asyncio.StreamWriter, seen: Seen) -> None:
        bomb = gzip_bomb()
        head = (
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(bomb)}\r\n\r\n"
        )
        await send(writer, seen, head.encode())
        for i in range(0, len(bomb), 64 * 1024):
            await send(writer, seen, bomb[i : i + 64 * 1024])

    return run


def trickle(head: bytes, forever: bytes, period: float = 0.02) -> Behaviour:
    """``head`` at once, then ``forever`` one byte per ``period``, repeated without end."""

    async def run(writer: asyncio.StreamWriter, seen: Seen) -> None:
        await send(writer, seen, head)
        while True:
            for b in forever:
                await send(writer, seen, bytes([b]))
                await asyncio.sleep(period)

    return run


def raw(response: bytes) -> Behaviour:
    async def run(writer: asyncio.StreamWriter, seen: Seen) -> None:
        await send(writer, seen, response)

    return run


def spec_for(port: int, timeout: float = 5.0, path: str = "/health") -> HealthSpec:
    return HealthSpec(port=port, scheme="HTTP", path=path, expected_status=200, timeout=timeout)


@pytest.fixture
async def checker() -> AsyncIterator[HealthChecker]:
    hc = HealthChecker()
    yield hc
    await hc.close()


def assert_clean_detail(detail: str) -> None:
    assert len(detail) <= DETAIL_CAP, len(detail)
    assert detail.isprintable(), repr(detail[:200])


# ------------------------------------------------------------------------ tests


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length-1GiB", "chunked-endless"])
async def test_huge_body_is_not_read(checker: HealthChecker, chunked: bool) -> None:
    """(a) 200 OK with a 1 GiB (or endless) body: healthy at once, memory bounded, and the
    connection is closed after a prefix instead of draining the body."""
    async with http_server(huge_body(GiB, chunked)) as (port, seen):
        with measured(f"health: 200 + {'endless chunked' if chunked else '1 GiB'} body") as m:
            ok, detail = await checker.check("127.0.0.1", spec_for(port))
            returned = time.monotonic()
        assert (ok, detail) == (True, "HTTP 200")
        assert m.elapsed < 1.0
        assert m.growth_mib < MEMORY_BOUND_MIB
        await asyncio.wait_for(seen.done.wait(), 2.0)
        assert seen.closed_at is not None and seen.closed_at - returned < 1.0
        # What the server got out before the hang-up: the prefix plus socket buffers.
        print(f"[measure] server sent {seen.sent / MiB:.1f} MiB before the client closed")
        assert seen.sent < 64 * MiB


async def test_gzip_bomb_is_not_decompressed(checker: HealthChecker) -> None:
    """(b) Content-Encoding: gzip of 1 GiB of zeros (~1 MiB on the wire): identity is asked
    for, nothing is decompressed, memory stays bounded."""
    gzip_bomb()  # build it outside the measurement
    async with http_server(gzip_bomb_response()) as (port, seen):
        with measured("health: gzip bomb (1 GiB of zeros)") as m:
            ok, detail = await checker.check("127.0.0.1", spec_for(port))
        assert (ok, detail) == (True, "HTTP 200")
        assert seen.header("Accept-Encoding") == "identity"
        assert m.elapsed < 1.0
        assert m.growth_mib < MEMORY_BOUND_MIB


SLOW = {
    # (c) the status line, then one header byte every 20 ms, forever.
    "headers-byte-by-byte": (trickle(b"HTTP/1.1 200 OK\r\n", b"X-Slow: abcdefgh\r\n"), False),
    # Headers done, then a body that never ends and never reaches the prefix size.
    "body-byte-by-byte": (
        trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", b"0123456789"),
        False,
    ),
    # A full prefix at once, then a trickle: the status and the prefix are in, so healthy now;
    # the rest of the body is not waited for.
    "prefix-then-trickle": (
        trickle(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"p" * BODY_PREFIX,
            b"0123456789",
        ),
        True,
    ),
}


@pytest.mark.parametrize("limit", [2.0, 5.2], ids=["timeout-2s", "timeout-5.2s"])
@pytest.mark.parametrize("case", list(SLOW))
async def test_slow_server_is_bounded_by_the_timeout(
    checker: HealthChecker, case: str, limit: float
) -> None:
    """A trickling server cannot hold the check beyond spec.timeout (+1 s at most: aiohttp
    rounds timeouts over 5 s up to a whole second; the check does not)."""
    behaviour, healthy = SLOW[case]
    async with http_server(behaviour) as (port, _seen):
        with measured(f"health: {case}, timeout {limit:g}s") as m:
            ok, detail = await checker.check("127.0.0.1", spec_for(port, timeout=limit))
        assert_clean_detail(detail)
        if healthy:
            assert (ok, detail) == (True, "HTTP 200")
            assert m.elapsed < 1.0
        else:
            assert not ok and "Timeout" in detail, detail
            assert limit - 0.1 <= m.elapsed <= limit + 1.0
        assert m.growth_mib < MEMORY_BOUND_MIB


# Lines over aiohttp's 8190-byte limits are not here: aiohttp quotes only their first 100 bytes.
LONG = {
    "bad-header-token": raw(
        b"HTTP/1.1 200 OK\r\nX-\x1bJunk" + b"J" * 5000 + b": v\r\nContent-Length: 0\r\n\r\n"
    ),
    "garbage-status-line": raw(b"\x1b[2J" + b"G" * 6000 + b"\r\n\r\n"),
    "bad-chunk": raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\x1b" + b"Z" * 6000 + b"\r\n"
    ),
}


@pytest.mark.parametrize("case", list(LONG))
async def test_detail_is_capped_and_printable(checker: HealthChecker, case: str) -> None:
    """(d) Remote text (reason phrases, header lines quoted in parser errors) is clipped and
    stripped of control characters before it becomes the detail, which goes into status."""
    async with http_server(LONG[case]) as (port, _seen):
        with measured(f"health: {case}"):
            ok, detail = await checker.check("127.0.0.1", spec_for(port, timeout=2.0))
        print(f"[detail] {case}: {detail!r}")
        assert not ok
        assert_clean_detail(detail)
        assert "JJJJJJJJ" * 40 not in detail and "GGGGGGGG" * 40 not in detail


async def test_reason_phrase_is_in_the_detail_clipped_and_clean(checker: HealthChecker) -> None:
    """(d) The reason phrase helps a human ("503 Service Unavailable"), so the detail has it,
    but clipped and without the escape sequences a hostile node puts in it."""
    reason = b"\x1b[31mMaintenance" + b"R" * 4000 + b"\x07"
    response = b"HTTP/1.1 503 " + reason + b"\r\nContent-Length: 0\r\n\r\n"
    async with http_server(raw(response)) as (port, _seen):
        ok, detail = await checker.check("127.0.0.1", spec_for(port))
    print(f"[detail] long reason: {detail!r}")
    assert not ok and detail.startswith("HTTP 503 ?[31mMaintenanceRRR")
    assert "expected 200" in detail and "RRRR" * 20 not in detail
    assert_clean_detail(detail)


async def test_long_path_detail_is_capped(checker: HealthChecker) -> None:
    """The URL (with the spec's path) is in the detail too; a long one is clipped as well."""
    async with http_server(raw(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")) as (
        port,
        _seen,
    ):
        ok, detail = await checker.check("127.0.0.1", spec_for(port, path="/" + "p" * 3000))
        assert not ok and detail.startswith("HTTP 404")
        assert_clean_detail(detail)

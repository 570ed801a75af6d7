"""Process-wide sharing of SSH connections and LB admin sessions between clusters.

A platform team runs many WSO2Clusters behind one HAProxy pair (a backend per cluster). Without
sharing, every cluster opens its own SSH connection and admin session to every LB host, and
50 clusters are 100 sshd logins and 100 HAProxy CLI sessions on two hosts.

* SSH: one ``SSHExecutor`` per set of credentials (user, private key, known_hosts, connect
  timeout), shared by every cluster presenting exactly those; the executor keeps one connection
  per (host, port). Different credentials never share a connection, so a cluster can never act
  with another cluster's key or trust another cluster's host keys.
* LB admin sessions: one kept session per (executor, LB address, socket path, timeouts); every
  cluster gets its own view of it (``TenantTransport``) whose commands take round-robin turns
  (``FairGate``). Errors stay per command: a "No such server." for one backend is a reply to
  that command alone; only a dead session fails the command that met it, and the next command
  (of whichever cluster) opens a new one, once, for everybody.

Both are reference-counted: the last user's release closes the resource (after ``IDLE_CLOSE``
seconds, unless someone takes it again). Acquire and release never await, so a cancelled
caller cannot leave a count wrong. Registries are per event loop (asyncio objects are bound to
their loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import LBUnreachable
from .fair_gate import FairGate
from .haproxy_transport import SshUnixTransport, Transport
from .ssh import SSHCredentials, SSHExecutor

log = logging.getLogger(__name__)

V = TypeVar("V")

# Seconds an unused executor or LB session stays open for the next user. Zero: a cluster that
# rebuilds its adapters (new Secret) takes the new ones before it gives the old ones back, and
# a replica that pauses (peering) or stops must let go of its connections at once.
IDLE_CLOSE = 0.0


@dataclass
class _Entry(Generic[V]):
    value: V
    refs: int = 0
    closing: asyncio.TimerHandle | None = None


@dataclass
class RefRegistry(Generic[V]):
    """key -> shared value with a use count; the value is closed once unused for ``idle``."""

    close: Callable[[V], Awaitable[None]]
    idle: float = IDLE_CLOSE
    entries: dict[Hashable, _Entry[V]] = field(default_factory=dict)
    _closers: set[asyncio.Task[None]] = field(default_factory=set)

    def acquire(self, key: Hashable, make: Callable[[], V]) -> V:
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry(make())
        if entry.closing is not None:
            entry.closing.cancel()
            entry.closing = None
        entry.refs += 1
        return entry.value

    def release(self, key: Hashable, value: V) -> None:
        entry = self.entries.get(key)
        if entry is None or entry.value is not value:
            return  # released twice, or already closed: nothing to do
        entry.refs -= 1
        if entry.refs > 0:
            return
        loop = asyncio.get_running_loop()
        if self.idle <= 0:
            self._close_now(key, entry)
        else:
            entry.closing = loop.call_later(self.idle, self._close_now, key, entry)

    def _close_now(self, key: Hashable, entry: _Entry[V]) -> None:
        if self.entries.get(key) is not entry or entry.refs > 0:
            return
        del self.entries[key]
        task = asyncio.get_running_loop().create_task(self._close_quietly(entry.value))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_quietly(self, value: V) -> None:
        try:
            await self.close(value)
        except Exception:  # a close that fails still leaves the registry consistent
            log.warning("closing a shared adapter failed", exc_info=True)

    def values(self) -> list[V]:
        return [e.value for e in list(self.entries.values())]

    async def aclose(self) -> None:
        """Close everything now, in use or not (the process or its loop is ending)."""
        entries, self.entries = list(self.entries.values()), {}
        for entry in entries:
            if entry.closing is not None:
                entry.closing.cancel()
            await self._close_quietly(entry.value)
        await asyncio.gather(*self._closers, return_exceptions=True)


class TenantTransport:
    """One cluster's view of a shared LB session: same commands, fair turns, own lifetime."""

    def __init__(self, shared: SharedLBSession, tenant: str, release: Callable[[], None]) -> None:
        self.shared = shared
        self.tenant = tenant
        self.description = shared.inner.description
        self._release: Callable[[], None] | None = release

    def __repr__(self) -> str:
        return f"<TenantTransport {self.description} for {self.tenant}>"

    @property
    def connected(self) -> bool:
        return self.shared.inner.connected

    async def command(self, line: str) -> str:
        queued = time.monotonic()
        async with self.shared.gate.turn(self.tenant):
            failed = self.shared.failed
            if failed is not None and failed[0] >= queued:
                # The LB failed to answer a command that went ahead of this one while it
                # waited: one attempt (connect or reply timeout) per dead LB, not one per
                # queued command, which would hold the last cluster in line for
                # queue length x timeout. Nothing was sent, so failing is safe.
                raise LBUnreachable(f"{failed[1]} (met by a command queued ahead; not retried)")
            try:
                reply = await self.shared.inner.command(line)
            except LBUnreachable as e:
                self.shared.failed = (time.monotonic(), str(e))
                raise
            self.shared.failed = None
            return reply

    async def reset(self) -> None:
        # A reset is asked for when the session is on a stopping worker: that holds for every
        # cluster on it, so the shared session is reset, in turn like any command.
        async with self.shared.gate.turn(self.tenant):
            await self.shared.inner.reset()

    async def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclass
class SharedLBSession:
    inner: Transport
    gate: FairGate
    # When the last command met an unreachable LB, and what it said; None after a reply.
    failed: tuple[float, str] | None = None


@dataclass
class Sharing:
    """The registries of one event loop."""

    executors: RefRegistry[SSHExecutor] = field(
        default_factory=lambda: RefRegistry(close=lambda ex: ex.close())
    )
    sessions: RefRegistry[SharedLBSession] = field(
        default_factory=lambda: RefRegistry(close=lambda s: s.inner.close())
    )

    def executor(self, creds: SSHCredentials) -> SSHExecutor:
        """The executor for exactly these credentials; pair with ``release_executor``."""
        return self.executors.acquire(credentials_key(creds), lambda: SSHExecutor(creds))

    def release_executor(self, executor: SSHExecutor) -> None:
        self.executors.release(credentials_key(executor.credentials), executor)

    def lb_transport(self, fresh: Transport, tenant: str) -> Transport:
        """``tenant``'s view of the shared session that ``fresh`` (not yet connected) would
        open; ``fresh`` itself is dropped unless it becomes the shared one."""
        key = session_key(fresh)
        shared = self.sessions.acquire(
            key, lambda: SharedLBSession(fresh, FairGate(fresh.description))
        )
        return TenantTransport(shared, tenant, lambda: self.sessions.release(key, shared))

    async def aclose(self) -> None:
        await self.sessions.aclose()
        await self.executors.aclose()

    def open_connections(self) -> Counter[tuple[str, str]]:
        """(kind, "host:port") -> open connections: "ssh" per host, "lb" per LB session."""
        counts: Counter[tuple[str, str]] = Counter()
        for ex in self.executors.values():
            for host, port in ex.open_hosts():
                counts["ssh", f"{host}:{port}"] += 1
        for s in self.sessions.values():
            if s.inner.connected:
                counts["lb", lb_address(s.inner)] += 1
        return counts


def credentials_key(creds: SSHCredentials) -> tuple[str, str, str, float]:
    """Digests, not the key itself: the registry must not be one more place holding secrets."""
    return (
        creds.username,
        hashlib.sha256(creds.private_key).hexdigest(),
        hashlib.sha256(creds.known_hosts.encode()).hexdigest(),
        creds.connect_timeout,
    )


def session_key(t: Any) -> tuple[Any, ...]:
    # The executor's identity stands for its credentials (one executor per credentials set).
    via = id(t.executor) if isinstance(t, SshUnixTransport) else None
    return (type(t).__name__, t.description, via, t.connect_timeout, t.command_timeout)


def lb_address(t: Any) -> str:
    if isinstance(t, SshUnixTransport):
        return f"{t.host}:{t.port}"
    return str(t.description)


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sharing] = (
    weakref.WeakKeyDictionary()
)


def current() -> Sharing:
    """The registries of the running loop (created on first use)."""
    loop = asyncio.get_running_loop()
    sharing = _BY_LOOP.get(loop)
    if sharing is None:
        sharing = _BY_LOOP[loop] = Sharing()
    return sharing


def open_connections() -> Counter[tuple[str, str]]:
    """Open connections of every loop in this process (read by the metrics exporter's thread:
    it copies the lists it walks, and a count a moment stale is fine for a gauge)."""
    total: Counter[tuple[str, str]] = Counter()
    for sharing in list(_BY_LOOP.values()):
        with contextlib.suppress(RuntimeError):  # a dict changed size mid-walk: skip a beat
            total.update(sharing.open_connections())
    return total

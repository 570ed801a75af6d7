"""Round-robin turns on one shared resource (an LB's admin session) across clusters.

A plain lock serves waiters in arrival order, so a cluster that polls in a tight loop would get
a turn for every waiter of the others: fair in count, but one noisy cluster with many concurrent
commands (a drain poll on every server) could still push the others far back. Here every tenant
(cluster) has its own queue and the turns go round the tenants, so a tenant waits for at most
one command of each other tenant. Each tenant's queue is bounded: a tenant that queues more is
told the LB is busy (LBUnreachable, transient: the caller's retry logic handles it) instead of
growing memory and everybody's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from .errors import LBUnreachable

# Commands one cluster may have waiting for one LB session. A cluster's pool operations issue
# one command per LB at a time, and its observation one more, so a handful is normal.
MAX_QUEUED_PER_TENANT = 64


class FairGate:
    """One holder at a time; waiting tenants are served round-robin, each in FIFO order."""

    def __init__(self, description: str, max_queued: int = MAX_QUEUED_PER_TENANT) -> None:
        self.description = description
        self.max_queued = max_queued
        self._held = False
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        self._order: deque[str] = deque()  # tenants with waiters, next to serve first

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @contextlib.asynccontextmanager
    async def turn(self, tenant: str) -> AsyncIterator[None]:
        """Hold the resource for one command. Cancellation-safe: a turn granted to a waiter
        that was cancelled meanwhile is passed on, never lost."""
        if not self._held and not self._order:
            self._held = True
        else:
            await self._wait(tenant)
        try:
            yield
        finally:
            self._pass_on()

    async def _wait(self, tenant: str) -> None:
        queue = self._queues.setdefault(tenant, deque())
        if len(queue) >= self.max_queued:
            raise LBUnreachable(
                f"{self.description}: busy ({len(queue)} commands of this cluster already "
                "queued); try again"
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(fut)
        if tenant not in self._order:
            self._order.append(tenant)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._pass_on()  # granted just as we were cancelled: the turn goes on
            else:
                self._discard(tenant, fut)
            raise

    def _discard(self, tenant: str, fut: asyncio.Future[None]) -> None:
        queue = self._queues.get(tenant)
        if queue is not None and fut in queue:
            queue.remove(fut)
            if not queue:
                del self._queues[tenant]
                self._order.remove(tenant)

    def _pass_on(self) -> None:
        while self._order:
            tenant = self._order.popleft()
            queue = self._queues[tenant]
            fut = queue.popleft()
            if queue:
                self._order.append(tenant)  # back of the round
            else:
                del self._queues[tenant]
            if not fut.done():
                fut.set_result(None)  # _held stays True: the turn moves to this waiter
                return
        self._held = False

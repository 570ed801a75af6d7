"""One read shared by every concurrent caller, never older than the caller's question.

A rollout of a big cluster has up to ``maxUnavailable`` node tasks, each polling the same
LB backend (drain progress, check warming, re-enable proof) and the observation reading it
too: ten nodes in flight meant ten `show info` + `show stat` + `show servers state` per LB per
poll, each parsed, over one shared admin session. Measured on a 40-node cluster, that was a
quarter of the operator's CPU.

``SharedRead`` runs at most one read at a time and hands its result to every caller that
asked before it started. A caller that asks while a read is running waits for the next one:
a read already under way may have been sent before the caller's own last command (a `set
server state`) reached the LB, and the caller must see its own writes. So every caller gets a
result of a read that started after it asked, and N concurrent callers cost at most two reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRead(Generic[T]):
    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._running: asyncio.Future[T] | None = None
        # The read that starts when the running one ends, shared by everyone who asked since.
        self._next: asyncio.Future[T] | None = None

    async def read(self) -> T:
        if self._running is None:
            self._running = self._start(None)
            fut = self._running
        else:
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            fut = self._next
        # Shielded: one caller giving up must not cancel the read the others wait for.
        return await asyncio.shield(fut)

    def _start(self, into: asyncio.Future[T] | None) -> asyncio.Future[T]:
        task = asyncio.ensure_future(self._fetch())
        task.add_done_callback(lambda t: self._finished(t, into))
        return task if into is None else into

    def _finished(self, task: asyncio.Future[T], into: asyncio.Future[T] | None) -> None:
        if into is not None and not into.done():
            if task.cancelled():
                into.cancel()
            elif (exc := task.exception()) is not None:
                into.set_exception(exc)
            else:
                into.set_result(task.result())
        elif not task.cancelled():
            task.exception()  # retrieved: the callers got it, or nobody waits any more
        self._running = None
        if self._next is not None:
            waiting, self._next = self._next, None
            self._running = self._start(waiting)

"""One run of an action shared by every concurrent caller, never older than the caller allows.

Used where many tasks of one cluster ask for the same thing at once:

* LB reads (``LBClient.servers``): a big cluster has up to ``maxUnavailable`` node tasks, each
  polling the same backend every 0.1 s (drain progress, the re-enable proof) while the soak and
  the observation read it too. Ten nodes in flight meant a hundred `show info` + `show stat` +
  `show servers state` a second per LB, each parsed, over one shared admin session.
* status writes (``ClusterReconciler.persist``): every node task records each step before it
  acts, and ten of them queued behind one another for the status lock, each writing the whole
  status (the apiserver's largest cost in a 40-node rollout).

``Coalesced`` runs the action at most once at a time. Each caller says how old a result it
accepts (``not_before``, a ``time.monotonic()`` instant; by default the moment it asks) and gets
the result of a run that *started* after that instant: the last finished run if it is recent
enough, else the running one if it started late enough, else the next one, which starts when
the running one ends and is shared by everyone who waits for it. So a run always reflects
everything its callers did before they asked (a `set server state` they sent, a step they
recorded in memory), and N concurrent callers cost at most two runs. A poller that only watches
HAProxy's own progress (sessions draining, checks passing) accepts a read one poll interval old,
so N pollers cost about one read per interval. A run that fails fails its waiters too (they
asked while it was finding out: an LB that timed out is not asked again by each of them in
turn), and the next caller starts afresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalesced(Generic[T]):
    def __init__(self, action: Callable[[], Awaitable[T]]) -> None:
        self._action = action
        self._running: asyncio.Future[T] | None = None
        self._running_since = 0.0
        # The run that starts when the running one ends, shared by everyone who asked since.
        self._next: asyncio.Future[T] | None = None
        self._last: tuple[float, T] | None = None  # (start, result) of the last good run

    async def run(self, not_before: float | None = None) -> T:
        """The result of a run that started after ``not_before`` (default: now)."""
        if not_before is None:
            not_before = time.monotonic()
        if self._last is not None and self._last[0] > not_before:
            return self._last[1]
        if self._running is None:
            fut = self._start(None)
        elif self._running_since > not_before:
            fut = self._running
        else:
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            fut = self._next
        # Shielded: one caller giving up must not cancel the read the others wait for.
        return await asyncio.shield(fut)

    def _start(self, into: asyncio.Future[T] | None) -> asyncio.Future[T]:
        since = time.monotonic()
        task = asyncio.ensure_future(self._action())
        task.add_done_callback(lambda t: self._finished(t, into, since))
        self._running = task if into is None else into
        self._running_since = since
        return self._running

    def _finished(
        self, task: asyncio.Future[T], into: asyncio.Future[T] | None, since: float
    ) -> None:
        if not task.cancelled() and task.exception() is None:
            self._last = (since, task.result())
        if into is not None and not into.done():
            if task.cancelled():
                into.cancel()
            elif (exc := task.exception()) is not None:
                into.set_exception(exc)
            else:
                into.set_result(task.result())
        self._running = None
        if self._next is None:
            return
        waiting, self._next = self._next, None
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Those who asked while it ran get its failure, not another attempt each.
            waiting.set_exception(exc)
        else:
            self._start(waiting)

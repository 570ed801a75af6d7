"""Coalesced: concurrent callers share reads, and no caller gets a read older than its question.

Time is counted in event-loop ticks (``asyncio.sleep(0)``), so every schedule hypothesis draws
runs the same way each time.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wso2_operator.coalesce import Coalesced


async def ticks(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Source:
    """A read that takes ``duration`` ticks and returns its own sequence number."""

    def __init__(self, duration: int = 3, fail_on: frozenset[int] = frozenset()) -> None:
        self.started = 0
        self.start_times: dict[int, float] = {}  # read -> time.monotonic() when it began
        self.running = 0
        self.most_at_once = 0
        self.duration = duration
        self.fail_on = fail_on

    async def fetch(self) -> int:
        self.started += 1
        n = self.started
        self.start_times[n] = time.monotonic()
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await ticks(self.duration)
        finally:
            self.running -= 1
        if n in self.fail_on:
            raise RuntimeError(f"read {n} failed")
        return n


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(st.integers(0, 30), min_size=1, max_size=25),
    duration=st.integers(0, 6),
    fail_on=st.frozensets(st.integers(1, 12), max_size=4),
)
def test_every_caller_gets_a_read_that_started_after_it_asked(arrivals, duration, fail_on):
    source = Source(duration, fail_on)
    shared = Coalesced(source.fetch)
    seen: list[tuple[int, int | str]] = []  # (reads started when it asked, what it got)

    async def caller(delay: int) -> None:
        await ticks(delay)
        asked = source.started
        try:
            got: int | str = await shared.run()
        except RuntimeError as e:
            got = str(e)
        seen.append((asked, got))

    async def main() -> None:
        await asyncio.gather(*(caller(d) for d in arrivals))

    asyncio.run(main())
    assert len(seen) == len(arrivals)
    assert source.most_at_once == 1  # one read at a time
    for asked, got in seen:
        if isinstance(got, str):
            # A failure reaches its sharers, and those who asked while that read ran.
            n = int(got.split()[1])
            assert n in fail_on and n >= asked
        else:
            assert got > asked  # data only from a read that started after the question
            assert got not in fail_on
    # Shared: never more reads than callers, and a burst of callers costs at most two.
    assert source.started <= len(arrivals)
    if len(set(arrivals)) == 1:
        assert source.started <= 2


@settings(max_examples=200, deadline=None)
@given(
    callers=st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from([None, 0.0, 1e-4, 1e-3, 10.0])),
        min_size=1,
        max_size=25,
    ),
    duration=st.integers(0, 6),
)
def test_a_caller_that_accepts_an_older_read_still_gets_one_newer_than_it_allows(callers, duration):
    source = Source(duration)
    shared = Coalesced(source.fetch)
    checks: list[tuple[float, int]] = []  # (the instant the read must be newer than, read)

    async def caller(delay: int, allowance: float | None) -> None:
        await ticks(delay)
        now = time.monotonic()
        floor = None if allowance is None else now - allowance
        got = await shared.run(floor)
        checks.append((now if floor is None else floor, got))

    async def main() -> None:
        await asyncio.gather(*(caller(d, a) for d, a in callers))

    asyncio.run(main())
    assert len(checks) == len(callers)
    assert source.most_at_once == 1
    for floor, got in checks:
        assert source.start_times[got] > floor
    assert source.started <= len(callers)


def test_pollers_that_accept_a_recent_read_share_the_last_one() -> None:
    async def main() -> tuple[list[int], int]:
        source = Source(duration=2)
        shared = Coalesced(source.fetch)
        first = await shared.run()
        # Ten pollers that accept a read up to a second old: the one just done serves them.
        later = [await shared.run(time.monotonic() - 1.0) for _ in range(10)]
        # One that just wrote asks for a read newer than its write: a new read.
        return [first, *later, await shared.run()], source.started

    results, reads = asyncio.run(main())
    assert (results, reads) == ([1] * 11 + [2], 2)


def test_a_burst_of_ten_callers_costs_two_reads_at_most() -> None:
    async def main() -> tuple[list[int], int]:
        source = Source(duration=5)
        shared = Coalesced(source.fetch)
        first = asyncio.ensure_future(shared.run())
        await ticks(1)  # the first read is running
        rest = await asyncio.gather(*(shared.run() for _ in range(9)))
        return [await first, *rest], source.started

    results, reads = asyncio.run(main())
    assert reads == 2
    assert results == [1] + [2] * 9


def test_a_cancelled_caller_does_not_cancel_the_read_of_the_others() -> None:
    async def main() -> tuple[int, int, int, bool]:
        source = Source(duration=5)
        shared = Coalesced(source.fetch)
        first = asyncio.ensure_future(shared.run())
        await ticks(1)
        # Both wait for read 2; one gives up.
        quitter = asyncio.ensure_future(shared.run())
        stayer = asyncio.ensure_future(shared.run())
        await ticks(2)
        quitter.cancel()
        got = await stayer
        # Everyone gone while a read runs (read 3): it finishes, and the next caller is served.
        lone = asyncio.ensure_future(shared.run())
        await ticks(1)
        lone.cancel()
        await ticks(10)
        return await first, got, await shared.run(), quitter.cancelled()

    assert asyncio.run(main()) == (1, 2, 4, True)


def test_a_failed_read_is_not_cached() -> None:
    async def main() -> tuple[str, int]:
        source = Source(duration=1, fail_on=frozenset({1}))
        shared = Coalesced(source.fetch)
        with pytest.raises(RuntimeError) as info:
            await shared.run()
        return str(info.value), await shared.run()

    assert asyncio.run(main()) == ("read 1 failed", 2)

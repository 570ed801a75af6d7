"""Pure logic of sharing: fair turns across clusters and reference-counted shared resources."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wso2_operator.errors import LBUnreachable
from wso2_operator.fair_gate import FairGate
from wso2_operator.sharing import RefRegistry, credentials_key
from wso2_operator.ssh import SSHCredentials


async def _serve(gate: FairGate, jobs: list[str]) -> list[str]:
    """Queue ``jobs`` (tenant names) while the gate is held, release it, return service order."""
    served: list[str] = []
    holder = gate.turn("holder")
    await holder.__aenter__()

    async def one(tenant: str) -> None:
        async with gate.turn(tenant):
            served.append(tenant)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(one(t)) for t in jobs]
    await asyncio.sleep(0)  # everybody queued
    await holder.__aexit__(None, None, None)
    await asyncio.gather(*tasks)
    return served


async def test_turns_go_round_the_clusters_not_by_arrival() -> None:
    order = await _serve(FairGate("lb1"), ["a", "a", "a", "a", "b", "c"])
    # "a" queued four commands first, yet "b" and "c" wait for one of them only.
    assert order == ["a", "b", "c", "a", "a", "a"]


async def test_a_cluster_queueing_too_much_is_told_the_lb_is_busy() -> None:
    gate = FairGate("lb1", max_queued=2)
    async with gate.turn("a"):
        waiting = [asyncio.create_task(_hold(gate, "a")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(LBUnreachable, match="busy"):
            await _hold(gate, "a")
        # Another cluster still gets in line: the bound is per cluster.
        other = asyncio.create_task(_hold(gate, "b"))
        await asyncio.sleep(0)
        assert gate.waiting == 3
    await asyncio.gather(*waiting, other)
    assert gate.waiting == 0


async def _hold(gate: FairGate, tenant: str) -> None:
    async with gate.turn(tenant):
        await asyncio.sleep(0)


async def test_a_turn_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    gate = FairGate("lb1")
    served: list[str] = []

    async def one(tenant: str) -> None:
        async with gate.turn(tenant):
            served.append(tenant)

    holder = gate.turn("x")
    await holder.__aenter__()
    first = asyncio.create_task(one("a"))
    second = asyncio.create_task(one("b"))
    await asyncio.sleep(0)
    await holder.__aexit__(None, None, None)  # grants "a" its turn ...
    first.cancel()  # ... which is cancelled before it could run
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled()
    assert served == ["b"]
    async with gate.turn("c"):  # the gate is free again, not stuck with a lost turn
        served.append("c")
    assert served == ["b", "c"]


@settings(max_examples=60, deadline=None)
@given(
    jobs=st.lists(st.sampled_from("abcd"), min_size=1, max_size=30),
    cancel=st.sets(st.integers(0, 29)),
)
def test_every_waiter_is_served_once_and_never_two_at_a_time(
    jobs: list[str], cancel: set[int]
) -> None:
    async def scenario() -> None:
        gate = FairGate("lb1")
        inside = 0
        served: list[int] = []

        async def one(i: int, tenant: str) -> None:
            nonlocal inside
            async with gate.turn(tenant):
                inside += 1
                try:
                    assert inside == 1
                    await asyncio.sleep(0)
                    served.append(i)
                finally:
                    inside -= 1

        tasks = [asyncio.create_task(one(i, t)) for i, t in enumerate(jobs)]
        await asyncio.sleep(0)
        for i in cancel:
            if i < len(tasks):
                tasks[i].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert not [r for r in results if isinstance(r, AssertionError)]
        done = [i for i, t in enumerate(tasks) if not t.cancelled()]
        assert sorted(served) == done
        assert gate.waiting == 0
        async with gate.turn("z"):  # nothing left holding it
            pass

    asyncio.run(scenario())


async def test_a_shared_value_is_closed_only_when_its_last_user_is_gone() -> None:
    closed: list[str] = []

    async def close(v: str) -> None:
        closed.append(v)

    reg: RefRegistry[str] = RefRegistry(close=close, idle=0.05)
    made = iter(["first", "second"])
    a = reg.acquire("k", lambda: next(made))
    b = reg.acquire("k", lambda: next(made))
    assert a == b == "first"
    reg.release("k", a)
    await asyncio.sleep(0.1)
    assert closed == []
    reg.release("k", b)
    # Taken again within the idle time: the close is called off.
    assert reg.acquire("k", lambda: next(made)) == "first"
    await asyncio.sleep(0.1)
    assert closed == []
    reg.release("k", "first")
    reg.release("k", "first")  # a second release of the same use changes nothing
    await asyncio.sleep(0.1)
    assert closed == ["first"]
    assert reg.acquire("k", lambda: next(made)) == "second"


def test_different_credentials_never_share() -> None:
    base = {"username": "u", "private_key": b"k1", "known_hosts": "h key\n"}
    keys = {
        credentials_key(SSHCredentials(**base)),  # type: ignore[arg-type]
        credentials_key(SSHCredentials(**{**base, "private_key": b"k2"})),  # type: ignore[arg-type]
        credentials_key(SSHCredentials(**{**base, "known_hosts": "h other\n"})),  # type: ignore[arg-type]
        credentials_key(SSHCredentials(**{**base, "username": "v"})),  # type: ignore[arg-type]
    }
    assert len(keys) == 4
    same = credentials_key(SSHCredentials(**base))  # type: ignore[arg-type]
    assert same in keys

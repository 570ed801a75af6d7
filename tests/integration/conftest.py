"""Fixtures for tests that need real VM nodes and HAProxy LBs (see wso2_sandbox.fleet)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from wso2_sandbox.fleet import Fleet, FleetConfig


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """A fresh 3-node, 2-LB fleet per test module; lb2 (index 1) also has a TCP admin socket.

    Module scope: tests inside a module may change node state (versions, MAINT, stopped nodes),
    so each module starts from a clean fleet, which costs about a second.
    """
    f = Fleet(FleetConfig(tcp_admin_lbs=(1,)))
    f.start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def make_fleet() -> Iterator[Callable[..., Fleet]]:
    """Factory for fleets with a custom config; every fleet it made is stopped at teardown."""
    made: list[Fleet] = []

    def make(**config: object) -> Fleet:
        f = Fleet(FleetConfig(**config))  # type: ignore[arg-type]
        made.append(f)
        return f.start()

    yield make
    for f in made:
        f.stop()

"""The traffic ramp of a node coming back: its weight on every LB rises from RAMP_START of its
configured weight to all of it over spec.update.rampSeconds (pure schedule + the LB calls).

The configured weight is read from the LB (`get weight` shows it in parentheses), so a weight
is always restored exactly to what haproxy.cfg says, and an HAProxy reload in the middle (which
resets weights to the configured ones) is corrected on the next tick.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .errors import WSO2OperatorError
from .textcap import cap

log = logging.getLogger(__name__)

RAMP_START = 0.1


def ramp_share(elapsed: float, ramp_seconds: float) -> float:
    """The share of its configured weight a node gets ``elapsed`` seconds after re-enable."""
    if ramp_seconds <= 0 or elapsed >= ramp_seconds:
        return 1.0
    return RAMP_START + (1.0 - RAMP_START) * max(0.0, elapsed) / ramp_seconds


def ramp_weight(configured: int, share: float) -> int:
    """A weight of at least 1 (0 would stop traffic, which is not a ramp)."""
    if share >= 1.0 or configured <= 1:
        return configured
    return max(1, round(configured * share))


async def set_share(clients: list[Any], backend: str, server: str, share: float) -> None:
    """Set the server's weight to ``share`` of its configured weight on every LB that answers.

    An LB that fails is logged and retried on the next tick; the ramp is no reason to fail.
    """

    async def one(client: Any) -> None:
        try:
            current, configured = await client.get_weight(backend, server)
            want = ramp_weight(configured, share)
            if current != want:
                await client.set_weight(backend, server, want)
        except WSO2OperatorError as e:
            log.info("weight of %s on LB %s not set: %s", server, client.name, cap(e))

    await asyncio.gather(*(one(c) for c in clients))

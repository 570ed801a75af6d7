"""The LB counter sampler: one `show stat` per LB, turned into analysis.CounterSample.

An LB that does not answer is left out of the sample (its windows are judged on the other
LBs); every value is read anew from the LBs, never carried over from memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from .analysis import CounterSample, ServerCounters
from .errors import WSO2OperatorError
from .textcap import cap

log = logging.getLogger(__name__)

_RESPONSE_CLASSES = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")


def _int(raw: Mapping[str, str], key: str) -> int:
    value = raw.get(key, "")
    return int(value) if value.isdigit() and len(value) <= 19 else 0


def server_counters(raw: Mapping[str, str]) -> ServerCounters:
    """The counters of one `show stat` server row (absent or non-numeric columns read 0)."""
    return ServerCounters(
        requests=_int(raw, "stot"),
        errors=_int(raw, "hrsp_5xx") + _int(raw, "eresp") + _int(raw, "econ"),
        responses=sum(_int(raw, k) for k in _RESPONSE_CLASSES),
        rtime_ms=float(_int(raw, "rtime")),
        lbtot=_int(raw, "lbtot"),
        check_failures=_int(raw, "chkfail"),
    )


async def sample_counters(clients: list[Any], backend: str) -> CounterSample:
    """Every server's counters on every LB that answers, and each LB's worker identity."""

    async def one(client: Any) -> tuple[str, dict[str, ServerCounters] | None, str]:
        try:
            stats = await client.show_stat(backend)
        except WSO2OperatorError as e:
            log.info("counter sample from LB %s failed: %s", client.name, cap(e))
            return client.name, None, ""
        return client.name, {n: server_counters(s.raw) for n, s in stats.items()}, client.worker_id

    servers: dict[tuple[str, str], ServerCounters] = {}
    epochs: dict[str, str] = {}
    for lb, stats, worker in await asyncio.gather(*(one(c) for c in clients)):
        if stats is None:
            continue
        epochs[lb] = worker
        for name, c in stats.items():
            servers[(lb, name)] = c
    return CounterSample(time=time.time(), epochs=epochs, servers=servers)

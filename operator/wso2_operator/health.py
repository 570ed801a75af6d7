"""The operator's own HTTP health check of a node.

HAProxy's check is not enough on its own: the operator must know a node is healthy before it
even asks the LBs to look, and WSO2 opens its port before its services answer.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from .model import HealthSpec


class HealthChecker:
    """One aiohttp session shared by all checks, so checks reuse connections and cost ~1 ms."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No keep-alive: a node that restarts must be checked on a fresh connection.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, ssl=False)
            )
        return self._session

    async def check(self, host: str, spec: HealthSpec) -> tuple[bool, str]:
        """(healthy, detail). Never raises for network errors: those mean unhealthy."""
        url = f"{spec.scheme.lower()}://{_bracket(host)}:{spec.port}{spec.path}"
        try:
            async with self._client().get(
                url,
                timeout=aiohttp.ClientTimeout(total=spec.timeout),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                if resp.status == spec.expected_status:
                    return True, f"HTTP {resp.status}"
                return False, f"HTTP {resp.status} from {url}, expected {spec.expected_status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return False, f"{type(e).__name__} from {url}: {e}".rstrip(": ")

    async def wait_healthy(
        self, host: str, spec: HealthSpec, deadline: float, poll: float | None = None
    ) -> tuple[bool, str]:
        """Poll until healthy or until `deadline` (time.monotonic()); returns the last result."""
        period = poll if poll is not None else spec.period
        while True:
            ok, detail = await self.check(host, spec)
            if ok or time.monotonic() >= deadline:
                return ok, detail
            await asyncio.sleep(min(period, max(0.0, deadline - time.monotonic())))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

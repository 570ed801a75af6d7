"""The operator's own HTTP health check of a node.

HAProxy's check is not enough on its own: the operator must know a node is healthy before it
even asks the LBs to look, and WSO2 opens its port before its services answer.

The node's answer is remote input, so a check costs bounded time and memory whatever the node
sends: at most ``spec.timeout`` seconds, at most ``BODY_PREFIX`` bytes of body (never
decompressed), and a detail of at most ``DETAIL_CAP`` printable characters.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from .haproxy_parse import clip
from .model import HealthSpec

# Body bytes read before the connection is closed: a health endpoint's JSON fits many times
# over, and a node serving a huge file (or one that never ends) costs no more than this.
BODY_PREFIX = 64 * 1024
# Characters of the detail, which goes into the CR status and events. It may quote remote text
# (a reason phrase, a status line or header quoted in an aiohttp parser error).
DETAIL_CAP = 300
# Characters of the reason phrase kept in the detail ("Service Unavailable" is 19).
REASON_CAP = 64


class HealthChecker:
    """One aiohttp session shared by all checks, so checks reuse connections and cost ~1 ms."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No keep-alive: a node that restarts must be checked on a fresh connection.
            # No decompression: a small gzip body can expand to gigabytes (a gzip bomb), and
            # the body is only read to see that the node answers, never parsed.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, ssl=False),
                auto_decompress=False,
            )
        return self._session

    async def check(self, host: str, spec: HealthSpec) -> tuple[bool, str]:
        """(healthy, detail). Never raises for network errors: those mean unhealthy.

        Healthy means: the expected status, and the body either complete or at least
        ``BODY_PREFIX`` bytes of it, all within ``spec.timeout``. The rest of the body is never
        read: the connection is closed instead.
        """
        url = f"{spec.scheme.lower()}://{_bracket(host)}:{spec.port}{spec.path}"
        try:
            # aiohttp's total timeout covers connect, headers and body reads, but it rounds
            # timeouts over 5 s up to a whole second of loop time; this one is exact.
            async with (
                asyncio.timeout(spec.timeout),
                self._client().get(
                    url,
                    timeout=aiohttp.ClientTimeout(total=spec.timeout),
                    allow_redirects=False,
                    # Ask for the body as is; it is not decompressed anyway (see _client).
                    headers={"Accept-Encoding": "identity"},
                ) as resp,
            ):
                try:
                    await _read_prefix(resp.content, BODY_PREFIX)
                finally:
                    # Drop the connection rather than drain (or wait for) the rest.
                    resp.close()
                if resp.status == spec.expected_status:
                    return True, f"HTTP {resp.status}"
                reason = clip(resp.reason or "", REASON_CAP)
                return False, clip(
                    f"HTTP {resp.status} {reason} from {url}, expected {spec.expected_status}"
                    if reason
                    else f"HTTP {resp.status} from {url}, expected {spec.expected_status}",
                    DETAIL_CAP,
                )
        except (
            aiohttp.ClientError,
            TimeoutError,
            OSError,
            ValueError,
        ) as e:  # ValueError: bad name
            # aiohttp's parser errors quote the offending status line or header (up to 8 KiB,
            # with line breaks): remote text, clipped like the rest.
            return False, clip(f"{type(e).__name__} from {url}: {e}".rstrip(": "), DETAIL_CAP)

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


async def _read_prefix(content: aiohttp.StreamReader, limit: int) -> int:
    """Read until EOF or ``limit`` bytes, whichever comes first; the bytes are dropped."""
    got = 0
    while got < limit:
        chunk = await content.read(limit - got)  # whatever has arrived, b"" at EOF
        if not chunk:
            break
        got += len(chunk)
    return got


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

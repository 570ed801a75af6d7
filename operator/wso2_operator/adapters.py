"""The cluster's adapters bundled, and the observation built from them.

`Adapters` holds one SSH executor, one LB pool and one health checker per set of credentials;
`observe()` reads every node's version (SSH), health (HTTP) and state on every LB at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from . import metrics
from .errors import HostKeyMismatch, LBUnreachable, SSHAuthFailed, WSO2OperatorError
from .health import HealthChecker
from .model import ClusterSpec, NodeSpec
from .planner import DOWN, DRAIN, MAINT, MISSING, NOLB, UNREACHABLE, UP, NodeObservation
from .status import SetupProblem

log = logging.getLogger(__name__)


def normalize_lb_state(stat: Any) -> str:
    """One word per server per LB for the planner: admin state first, then operational."""
    admin = str(getattr(stat, "admin_state", "") or "").upper()
    if admin.endswith("MAINT"):
        return MAINT
    if admin.endswith("DRAIN"):
        return DRAIN
    raw = str(stat.status).strip().upper()
    if raw.startswith("MAINT"):
        return MAINT
    if raw.startswith("DRAIN"):
        return DRAIN
    if raw.startswith("NOLB"):
        return NOLB
    if raw.startswith("UP") or raw == "NO CHECK":
        return UP
    if raw.startswith("DOWN"):
        return DOWN
    return raw or DOWN


@contextlib.asynccontextmanager
async def timed(adapter: str) -> AsyncIterator[None]:
    """Records the latency and errors of one LB or SSH call in the Prometheus metrics."""
    t0 = time.monotonic()
    try:
        yield
    except Exception as e:
        metrics.adapter_call(adapter, time.monotonic() - t0, e)
        raise
    metrics.adapter_call(adapter, time.monotonic() - t0)


class Adapters:
    """SSH executor, LB pool and health checker for one cluster's credentials and LBs."""

    def __init__(self, spec: ClusterSpec, key: bytes, known_hosts: str) -> None:
        from .haproxy_pool import build_lb_pool
        from .ssh import SSHCredentials, SSHExecutor

        self.ssh = SSHExecutor(
            SSHCredentials(
                username=spec.ssh_user,
                private_key=key,
                known_hosts=known_hosts,
                connect_timeout=spec.connect_timeout,
            )
        )
        self.pool = build_lb_pool(
            self.ssh,
            [h.as_dict() for h in spec.lb_hosts],
            tolerate_unreachable=spec.tolerate_unreachable,
            poll_interval=0.05,
            connect_timeout=spec.connect_timeout,
        )
        self.health = HealthChecker()

    async def ssh_run(self, *args: Any, **kwargs: Any) -> Any:
        async with timed("ssh"):
            return await self.ssh.run(*args, **kwargs)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.pool.close()
        with contextlib.suppress(Exception):
            await self.ssh.close()
        with contextlib.suppress(Exception):
            await self.health.close()


def adapter_key(spec: ClusterSpec, key: bytes, known_hosts: str) -> str:
    h = hashlib.sha256()
    for part in (
        key,
        known_hosts.encode(),
        spec.ssh_user.encode(),
        repr(
            (spec.connect_timeout, spec.lb_hosts, spec.backend, spec.tolerate_unreachable)
        ).encode(),
    ):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()


async def observe(
    spec: ClusterSpec, adapters: Adapters
) -> tuple[dict[str, NodeObservation], SetupProblem | None]:
    """Every node's version (SSH), health (HTTP) and state on every LB, concurrently."""
    states, versions, health = await asyncio.gather(
        lb_states(spec, adapters),
        asyncio.gather(*(probe_version(spec, adapters, n) for n in spec.nodes)),
        asyncio.gather(*(adapters.health.check(n.host, spec.health) for n in spec.nodes)),
    )
    problem = next((v for v in versions if isinstance(v, SetupProblem)), None)
    out = {}
    for node, v, (ok, _detail) in zip(spec.nodes, versions, health, strict=True):
        out[node.name] = NodeObservation(
            version=v if isinstance(v, str) else None,
            healthy=ok,
            lb=states.get(node.name, {}),
        )
    return out, problem


async def probe_version(
    spec: ClusterSpec, adapters: Adapters, node: NodeSpec
) -> str | SetupProblem | None:
    try:
        r = await adapters.ssh_run(
            node.host,
            node.ssh_port,
            spec.version_command,
            env={"NODE_NAME": node.name},
            timeout=min(60.0, spec.provision_timeout),
        )
        return r.stdout.strip() or None
    except (HostKeyMismatch, SSHAuthFailed) as e:
        return SetupProblem(reason_of(e, "SSHFailed"), f"{node.name}: {e}")
    except WSO2OperatorError as e:
        log.info("version probe of %s failed: %s", node.name, e)
        return None


async def lb_states(spec: ClusterSpec, adapters: Adapters) -> dict[str, dict[str, str]]:
    """node -> LB -> state. An LB that does not answer is Unreachable for every node."""
    result: dict[str, dict[str, str]] = {n: {} for n in spec.node_names}

    async def one(client):
        try:
            async with timed("lb"):
                # show stat alone reports a DOWN server in DRAIN as plain DOWN; the merged view
                # carries the real admin flags.
                stats = await client.servers(spec.backend)
        except LBUnreachable:
            return client.name, None
        except WSO2OperatorError as e:
            log.warning("LB %s: %s", client.name, e)
            return client.name, None
        return client.name, stats

    for lb_name, stats in await asyncio.gather(*(one(c) for c in adapters.pool.clients)):
        for n in spec.node_names:
            if stats is None:
                result[n][lb_name] = UNREACHABLE
            elif n not in stats:
                result[n][lb_name] = MISSING
            else:
                result[n][lb_name] = normalize_lb_state(stats[n])
    return result


def reason_of(e: Exception, default: str) -> str:
    name = type(e).__name__
    return {
        "HostKeyMismatch": "HostKeyMismatch",
        "SSHAuthFailed": "SSHAuthFailed",
        "SSHUnreachable": "SSHUnreachable",
        "LBUnreachable": "LoadBalancerUnreachable",
        "NoSuchBackend": "BackendNotFound",
        "NoSuchServer": "ServerNotFound",
        "NotAdmin": "SocketNotAdmin",
        "PermissionDenied": "SocketNotAdmin",
    }.get(name, default)

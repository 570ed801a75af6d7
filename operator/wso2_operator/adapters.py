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
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from . import metrics, sharing
from .errors import (
    HostKeyMismatch,
    LBProtocolError,
    LBUnreachable,
    SSHAuthFailed,
    WSO2OperatorError,
)
from .health import HealthChecker
from .model import VERSION_RE, ClusterSpec, NodeSpec
from .observation import (
    DOWN,
    DRAIN,
    ERROR,
    MAINT,
    MISSING,
    NOLB,
    UNREACHABLE,
    UP,
    NodeObservation,
)
from .revision import Revision, parse_read, read_command
from .status import SetupProblem
from .textcap import cap

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    """SSH executor, LB pool and health checker for one cluster's credentials and LBs.

    The SSH executor and the LB admin sessions are shared with every other cluster of this
    process that uses the same credentials and LBs (see sharing.py); this cluster's LB commands
    take fair turns with theirs.
    """

    def __init__(self, spec: ClusterSpec, key: bytes, known_hosts: str) -> None:
        from .haproxy_pool import build_lb_pool
        from .ssh import SSHCredentials

        self._sharing = sharing.current()
        self.ssh = self._sharing.executor(
            SSHCredentials(
                username=spec.ssh_user,
                private_key=key,
                known_hosts=known_hosts,
                connect_timeout=spec.connect_timeout,
            )
        )
        try:
            self.pool = build_lb_pool(
                self.ssh,
                [h.as_dict() for h in spec.lb_hosts],
                tolerate_unreachable=spec.tolerate_unreachable,
                poll_interval=0.05,
                connect_timeout=spec.connect_timeout,
            )
        except BaseException:
            self._sharing.release_executor(self.ssh)
            raise
        tenant = f"adapters-{id(self):x}"  # one turn per cluster (an Adapters is one cluster's)
        for client in self.pool.clients:
            client.transport = self._sharing.lb_transport(client.transport, tenant)
        self.health = HealthChecker()

    async def ssh_run(self, *args: Any, **kwargs: Any) -> Any:
        async with timed("ssh"):
            return await self.ssh.run(*args, **kwargs)

    async def close(self) -> None:
        """Give the shared executor and sessions back (closed once nobody uses them)."""
        with contextlib.suppress(Exception):
            await self.pool.close()
        self._sharing.release_executor(self.ssh)
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


# One node's slow version probe, health check or LB must not hold up the others, nor the status
# write and MAINT re-assertion that follow the observation: whatever has not answered by then
# is reported as unknown for this pass (and a cancelled SSH probe is killed on the node).
OBSERVE_DEADLINE = 10.0


@dataclass(frozen=True)
class LBView:
    """node -> LB -> state, plus the first definitive error per LB that answered wrongly."""

    states: dict[str, dict[str, str]]
    errors: dict[str, WSO2OperatorError]


async def observe(
    spec: ClusterSpec,
    adapters: Adapters,
    extra_servers: Iterable[str] = (),
    deadline: float = OBSERVE_DEADLINE,
    known: Mapping[str, NodeObservation] | None = None,
) -> tuple[dict[str, NodeObservation], SetupProblem | None, dict[str, dict[str, str]]]:
    """Every node's version (SSH), health (HTTP) and state on every LB, concurrently.

    The version and revision of a node in ``known`` are taken from there instead of asked
    (probe_cadence.py); its health and LB state are always read.

    Returns the observations, the first problem that stops the operator from acting (a refused
    SSH key or host key, an LB that answers garbage), and the LB states of ``extra_servers``
    (nodes that left the spec, watched until they are back in rotation).
    """

    async def bounded(coro: Awaitable[T], fallback: T) -> T:
        try:
            return await asyncio.wait_for(coro, deadline)
        except TimeoutError:
            return fallback
        except Exception:
            # One node's or LB's surprise must not cost the others their observation.
            log.exception("observation failed")
            return fallback

    late = VersionProblem("VersionProbeTimeout", f"no answer within {deadline:g}s")
    known = known or {}

    def version_of(n: NodeSpec) -> Awaitable[str | VersionProblem | SetupProblem | None]:
        if n.name in known:
            return _ready(known[n.name].version)
        return bounded(probe_version(spec, adapters, n), late)

    def revision_of(n: NodeSpec) -> Awaitable[Revision | None]:
        if n.name in known:
            return _ready(known[n.name].revision)
        return bounded(probe_revision(spec, adapters, n), None)

    view, versions, health, revisions = await asyncio.gather(
        bounded(lb_view(spec, adapters, extra_servers), None),
        asyncio.gather(*(version_of(n) for n in spec.nodes)),
        asyncio.gather(
            *(
                bounded(adapters.health.check(n.host, spec.health), (False, "timed out"))
                for n in spec.nodes
            )
        ),
        asyncio.gather(*(revision_of(n) for n in spec.nodes)),
    )
    if view is None:
        names = [*spec.node_names, *extra_servers]
        view = LBView({n: {c.name: UNREACHABLE for c in adapters.pool.clients} for n in names}, {})
    problem = next((v for v in versions if isinstance(v, SetupProblem)), None)
    if problem is None and view.errors:
        lb, err = next(iter(view.errors.items()))
        problem = SetupProblem(reason_of(err, "LoadBalancerError"), cap(f"LB {lb}: {err}"))
    out = {}
    for node, v, (ok, _detail), rev in zip(spec.nodes, versions, health, revisions, strict=True):
        out[node.name] = NodeObservation(
            version=v if isinstance(v, str) else None,
            healthy=ok,
            lb=view.states.get(node.name, {}),
            version_problem=v.message if isinstance(v, VersionProblem) else None,
            revision=rev,
        )
    extra = {n: view.states.get(n, {}) for n in extra_servers}
    return out, problem, extra


async def _ready(value: T) -> T:
    return value


@dataclass(frozen=True)
class VersionProblem:
    """The node answered, but not with a version (or not in time): the version is unknown."""

    reason: str
    message: str


def parse_version_output(stdout: str, dropped: int = 0) -> str | VersionProblem:
    """The version a versionCommand printed: exactly one line matching the CRD's pattern.

    Anything else (several lines, a banner, megabytes) is not a version, and an unknown version
    is never a reason to drain and reinstall a node.
    """
    text = stdout.strip()
    if dropped or len(text) > 256 or "\n" in text or not VERSION_RE.fullmatch(text):
        size = len(stdout.encode("utf-8", "replace")) + dropped
        shown = cap(text.splitlines()[0] if text else "", 64)
        return VersionProblem(
            "VersionUnparsable",
            f"versionCommand printed {size} bytes that are not one version "
            f"(pattern {VERSION_RE.pattern}): {shown!r}",
        )
    return text


async def probe_version(
    spec: ClusterSpec, adapters: Adapters, node: NodeSpec
) -> str | VersionProblem | SetupProblem:
    try:
        r = await adapters.ssh_run(
            node.host,
            node.ssh_port,
            spec.version_command,
            env={"NODE_NAME": node.name},
            timeout=min(OBSERVE_DEADLINE, spec.provision_timeout),
        )
    except (HostKeyMismatch, SSHAuthFailed) as e:
        return SetupProblem(reason_of(e, "SSHFailed"), cap(f"{node.name}: {e}"))
    except WSO2OperatorError as e:
        log.info("version probe of %s failed: %s", node.name, cap(e))
        return VersionProblem(reason_of(e, "VersionProbeFailed"), cap(e))
    if not r.stdout.strip() and not getattr(r, "stdout_dropped", 0):
        return VersionProblem("VersionEmpty", "versionCommand printed nothing")
    return parse_version_output(r.stdout, getattr(r, "stdout_dropped", 0))


async def probe_revision(spec: ClusterSpec, adapters: Adapters, node: NodeSpec) -> Revision | None:
    """The tokens the node recorded (revision.py); None when the spec asks for none (no extra
    SSH command for clusters that do not use maintenance) or the node does not answer."""
    if not spec.revision.as_dict():
        return None
    try:
        r = await adapters.ssh_run(
            node.host, node.ssh_port, read_command(), timeout=min(OBSERVE_DEADLINE, 10.0)
        )
    except WSO2OperatorError as e:
        log.info("revision probe of %s failed: %s", node.name, cap(e))
        return None
    return parse_read(r.stdout)


async def lb_states(spec: ClusterSpec, adapters: Adapters) -> dict[str, dict[str, str]]:
    """node -> LB -> state. An LB that does not answer is Unreachable for every node."""
    return (await lb_view(spec, adapters)).states


async def lb_view(
    spec: ClusterSpec,
    adapters: Adapters,
    extra_servers: Iterable[str] = (),
    *,
    not_before: float | None = None,
) -> LBView:
    """Every node's state on every LB: Unreachable where an LB does not answer, Error where it
    answers but not usably (garbage, not level admin, no such backend). From reads that started
    after ``not_before`` (``time.monotonic()``; default: now)."""
    names = [*spec.node_names, *extra_servers]
    result: dict[str, dict[str, str]] = {n: {} for n in names}
    errors: dict[str, WSO2OperatorError] = {}

    async def one(client: Any) -> tuple[str, dict[str, Any] | None, str]:
        try:
            async with timed("lb"):
                # show stat alone reports a DOWN server in DRAIN as plain DOWN; the merged view
                # carries the real admin flags.
                return client.name, await client.servers(spec.backend, not_before=not_before), ""
        except LBUnreachable:
            return client.name, None, UNREACHABLE
        except WSO2OperatorError as e:
            log.warning("LB %s: %s", client.name, cap(e))
            errors[client.name] = e
            return client.name, None, ERROR
        except Exception as e:  # a surprise is an LB we cannot use, not a crash of the pass
            log.warning("LB %s: %s: %s", client.name, type(e).__name__, cap(e))
            errors[client.name] = LBProtocolError(f"{type(e).__name__}: {cap(e, 200)}")
            return client.name, None, ERROR

    for lb_name, stats, failed in await asyncio.gather(*(one(c) for c in adapters.pool.clients)):
        for n in names:
            if stats is None:
                result[n][lb_name] = failed
            elif n not in stats:
                result[n][lb_name] = MISSING
            else:
                result[n][lb_name] = normalize_lb_state(stats[n])
    return LBView(result, errors)


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
        "LBProtocolError": "LoadBalancerProtocolError",
        "SSHCommandTimeout": "VersionProbeTimeout",
    }.get(name, default)

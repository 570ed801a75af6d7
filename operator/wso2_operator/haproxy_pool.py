"""All LBs at once (``LBPool``), on top of the single-LB client in haproxy.py (``LBClient``).

Every pool operation acts on all LBs concurrently and succeeds only when each LB confirms the
result by reading state back; HAProxy's replies alone prove nothing (see
/work/shared/notes/haproxy-runtime-api.md).

Safe re-enable (the rule, verified on HAProxy 2.6.12):

* Leaving MAINT with ``state ready`` makes the server UP at once, before any check has run.
* Leaving MAINT with ``state drain`` is not enough either: HAProxy restores ``check_health`` to
  ``rise`` and the server is operational at once, showing the *stale* pre-MAINT
  ``check_status`` (e.g. ``DRAIN 1/2`` + ``L7OK`` while the node's /health answers 503 — it
  only turns ``DOWN`` when the first post-change check fails ~inter later). With ``fall 1`` it
  even shows plain ``DRAIN`` + ``L7OK`` immediately. Nothing in ``show stat`` or
  ``show servers state`` distinguishes that stale L7OK from a fresh one (``last_chk`` is empty,
  the ``* `` in-progress marker lasts ~10 ms and is easily missed by polling).
* So after ``state drain`` we also send ``set server b/s health down``. It drops
  ``check_health`` to 0; from there HAProxy needs ``rise`` consecutive passing checks, all run
  after our command, to make the server operational again. The readiness rule is therefore:
  admin state DRAIN, operational (``srv_op_state`` running), status exactly ``DRAIN`` (full
  health: no check failed since), last check passing and not in progress. Only then
  ``state ready``, and then read back ``UP``. Costs: ~``rise`` check intervals; log lines
  "Server ... is DOWN, changed from CLI" and ``chkdown`` increments; with
  ``on-marked-down shutdown-sessions`` on the server line it would cut sessions still open on a
  DRAIN server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import (
    ConfigError,
    DrainTimeout,
    LBStateMismatch,
    LBUnreachable,
    NoHealthCheck,
    NoSuchServer,
    NotAdmin,
    ReenableTimeout,
)
from .haproxy import LBClient, _check_name, build_lb_client
from .haproxy_parse import AdminState, ServerStat, fresh_pass_after_forced_down
from .ssh import SSHExecutor

log = logging.getLogger(__name__)

T = TypeVar("T")


# ------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class PoolResult:
    """Which LBs confirmed, and which were skipped as unreachable (tolerate_unreachable)."""

    confirmed: list[str]
    skipped: list[str]
    duration: float


@dataclass(frozen=True)
class PreflightResult(PoolResult):
    levels: dict[str, str] = field(default_factory=dict)
    servers: dict[str, dict[str, ServerStat]] = field(default_factory=dict)


@dataclass(frozen=True)
class DrainResult(PoolResult):
    backend: str = ""
    server: str = ""
    already_maint: list[str] = field(default_factory=list)
    # True when the deadline passed and `shutdown sessions` was used (on_timeout="shutdown").
    forced: bool = False
    # scur+qcur per LB at the deadline (forced) and after the shutdown grace period.
    sessions_at_deadline: dict[str, int] = field(default_factory=dict)
    sessions_left: dict[str, int] = field(default_factory=dict)
    # Seconds from the drain command until every LB showed no session.
    wait_seconds: float = 0.0


@dataclass(frozen=True)
class ReenableResult(PoolResult):
    backend: str = ""
    server: str = ""
    already_ready: list[str] = field(default_factory=list)
    # Seconds from `state drain` + `health down` until fresh passing checks on every LB: the
    # HAProxy-inherent part (about rise x inter).
    check_wait_seconds: float = 0.0


# --------------------------------------------------------------------------------------- pool


class _Run:
    """Tracks the LBs still taking part in one pool operation."""

    def __init__(self, pool: LBPool):
        self.pool = pool
        self.active: list[LBClient] = list(pool.clients)
        self.skipped: list[str] = []

    async def each(
        self,
        fn: Callable[[LBClient], Awaitable[T]],
        clients: Iterable[LBClient] | None = None,
    ) -> dict[str, T]:
        targets = [c for c in (self.active if clients is None else clients) if c in self.active]
        if not targets:
            return {}
        results = await asyncio.gather(*(fn(c) for c in targets), return_exceptions=True)
        out: dict[str, T] = {}
        errors: list[Exception] = []
        for client, res in zip(targets, results, strict=True):
            if isinstance(res, BaseException):
                if isinstance(res, LBUnreachable) and self.pool.tolerate_unreachable:
                    log.warning("skipping unreachable LB %s: %s", client.name, res)
                    self.active.remove(client)
                    self.skipped.append(client.name)
                    continue
                if not isinstance(res, Exception):
                    raise res
                errors.append(res)
            else:
                out[client.name] = res
        if errors:
            raise _most_definitive(errors)
        if not self.active:
            raise LBUnreachable(
                f"no LB reachable (skipped: {', '.join(self.skipped)}); nothing confirmed"
            )
        return out

    def names(self) -> list[str]:
        return [c.name for c in self.active]


def _most_definitive(errors: Sequence[Exception]) -> Exception:
    # A definitive problem (wrong name, permission) matters more than a transient one.
    ranked = sorted(errors, key=lambda e: bool(getattr(e, "transient", True)))
    first = ranked[0]
    for other in ranked[1:]:
        first.add_note(f"also: {type(other).__name__}: {other}")
    return first


class LBPool:
    """All LBs in front of one cluster; every operation acts on all of them concurrently.

    ``deadline`` arguments are durations in seconds from the call.
    """

    def __init__(
        self,
        clients: list[LBClient],
        *,
        tolerate_unreachable: bool = False,
        poll_interval: float = 0.1,
    ):
        if not clients:
            raise ConfigError("LBPool needs at least one LB")
        names = [c.name for c in clients]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate LB names: {names}")
        self.clients = list(clients)
        self.tolerate_unreachable = tolerate_unreachable
        self.poll_interval = poll_interval
        # (backend, server) -> LBs where warm() forced the health proof to start over. In memory
        # on purpose: after a restart nothing is known, and reenable() forces it again.
        self._warmed: dict[tuple[str, str], set[str]] = {}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clients]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)

    async def __aenter__(self) -> LBPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------- reading

    async def states(self, backend: str) -> dict[str, dict[str, ServerStat]]:
        """Every server of ``backend`` on every reachable LB (merged stat + admin flags)."""
        run = _Run(self)
        return await run.each(lambda c: c.servers(backend))

    async def preflight(self, backend: str, servers: Sequence[str]) -> PreflightResult:
        """Check admin level, backend and servers on every LB. Changes no state."""
        t0 = time.monotonic()
        _check_name("backend", backend)
        for s in servers:
            _check_name("server", s)
        run = _Run(self)
        levels = await run.each(lambda c: c.cli_level())
        low = {lb: lvl for lb, lvl in levels.items() if lvl != "admin"}
        if low:
            lb, lvl = next(iter(low.items()))
            raise NotAdmin(
                "stats socket not at level admin on "
                + ", ".join(f"LB {n} (level {v!r})" for n, v in low.items())
                + "; state changes need 'level admin' on the stats socket line",
                lb=lb,
                level=lvl,
            )
        found = await run.each(lambda c: c.servers(backend))
        missing = {lb: [s for s in servers if s not in srv] for lb, srv in found.items()}
        missing = {lb: m for lb, m in missing.items() if m}
        if missing:
            lb = next(iter(missing))
            raise NoSuchServer(
                f"backend {backend!r} lacks servers: "
                + "; ".join(f"LB {n}: {', '.join(m)}" for n, m in missing.items()),
                lb=lb,
                backend=backend,
                servers=sorted({s for m in missing.values() for s in m}),
            )
        return PreflightResult(
            confirmed=run.names(),
            skipped=run.skipped,
            duration=time.monotonic() - t0,
            levels=levels,
            servers=found,
        )

    async def _confirm(
        self,
        run: _Run,
        backend: str,
        server: str,
        clients: Sequence[LBClient],
        ok: Callable[[ServerStat], bool],
        what: str,
        within: float = 2.0,
    ) -> dict[str, ServerStat]:
        """Read back until ``ok`` holds on every LB in ``clients`` (normally the first read)."""
        end = time.monotonic() + within
        while True:
            views = await run.each(lambda c: c.server(backend, server), clients)
            bad = {lb: v.status for lb, v in views.items() if not ok(v)}
            if not bad:
                return views
            if time.monotonic() >= end:
                lb = next(iter(bad))
                raise LBStateMismatch(
                    f"{backend}/{server} should be {what}, but reads back as "
                    + ", ".join(f"{n}: {s!r}" for n, s in bad.items()),
                    lb=lb,
                )
            await asyncio.sleep(self.poll_interval)

    async def maint(self, backend: str, server: str) -> PoolResult:
        """Put the server in MAINT on every LB (no draining: in-flight requests still finish)."""
        t0 = time.monotonic()
        _check_name("backend", backend)
        _check_name("server", server)
        run = _Run(self)
        views = await run.each(lambda c: c.server(backend, server))
        todo = [c for c in run.active if views[c.name].admin_state != "MAINT"]
        await run.each(lambda c: c.set_state(backend, server, "maint"), todo)
        await self._confirm(
            run, backend, server, run.active, lambda v: v.admin_state == "MAINT", "MAINT"
        )
        return PoolResult(run.names(), run.skipped, time.monotonic() - t0)

    async def drain(
        self,
        backend: str,
        server: str,
        *,
        deadline: float,
        on_timeout: Literal["fail", "shutdown"] = "fail",
        shutdown_grace: float = 5.0,
    ) -> DrainResult:
        """DRAIN on every LB, wait until no session is left anywhere, then MAINT everywhere.

        At the deadline: ``"fail"`` raises DrainTimeout and leaves the server in DRAIN (not
        MAINT); ``"shutdown"`` cuts the remaining sessions (clients see errors), waits up to
        ``shutdown_grace`` for ``scur`` to reach 0, then sets MAINT. An LB where the server is
        already MAINT is left MAINT (its sessions are still waited for).
        """
        if on_timeout not in ("fail", "shutdown"):
            raise ConfigError(f"invalid on_timeout {on_timeout!r}")
        t0 = time.monotonic()
        end = t0 + deadline
        _check_name("backend", backend)
        _check_name("server", server)
        run = _Run(self)
        views = await run.each(lambda c: c.server(backend, server))
        already_maint = [lb for lb, v in views.items() if v.admin_state == "MAINT"]
        todo = [c for c in run.active if views[c.name].admin_state == "READY"]
        await run.each(lambda c: c.set_state(backend, server, "drain"), todo)
        wrote = time.monotonic()
        forced = False
        at_deadline: dict[str, int] = {}
        while True:
            fresh = self._poll_floor(wrote)
            views = await run.each(lambda c, f=fresh: c.server(backend, server, not_before=f))
            # READY again means the LB reloaded (runtime state lost) or someone re-enabled it.
            back = [c for c in run.active if views[c.name].admin_state == "READY"]
            if back:
                log.warning(
                    "%s/%s is READY again on %s; re-asserting DRAIN",
                    backend,
                    server,
                    [c.name for c in back],
                )
                await run.each(lambda c: c.set_state(backend, server, "drain"), back)
                wrote = time.monotonic()
            busy = {lb: v.sessions for lb, v in views.items() if v.sessions}
            if not busy and not back:
                break
            if time.monotonic() >= end:
                if on_timeout == "fail":
                    raise DrainTimeout(
                        f"{backend}/{server} still has sessions after {deadline:g}s: "
                        + ", ".join(f"{lb}: {n}" for lb, n in busy.items())
                        + "; left in DRAIN",
                        lb=next(iter(busy), None),
                        backend=backend,
                        server=server,
                        sessions=busy,
                    )
                forced = True
                at_deadline = busy
                log.warning("%s/%s drain deadline: cutting sessions %s", backend, server, busy)
                victims = [c for c in run.active if c.name in busy]
                await run.each(lambda c: c.shutdown_sessions(backend, server), victims)
                wrote = time.monotonic()
                break
            await asyncio.sleep(self.poll_interval)
        wait_seconds = time.monotonic() - t0
        left: dict[str, int] = {}
        if forced:
            # `shutdown sessions` is asynchronous: read scur again.
            grace_end = time.monotonic() + shutdown_grace
            while True:
                fresh = self._poll_floor(wrote)
                views = await run.each(lambda c, f=fresh: c.server(backend, server, not_before=f))
                left = {lb: v.sessions for lb, v in views.items() if v.sessions}
                if not left or time.monotonic() >= grace_end:
                    break
                await asyncio.sleep(self.poll_interval)
        todo = [c for c in run.active if views[c.name].admin_state != "MAINT"]
        await run.each(lambda c: c.set_state(backend, server, "maint"), todo)
        await self._confirm(
            run, backend, server, run.active, lambda v: v.admin_state == "MAINT", "MAINT"
        )
        return DrainResult(
            confirmed=run.names(),
            skipped=run.skipped,
            duration=time.monotonic() - t0,
            backend=backend,
            server=server,
            already_maint=already_maint,
            forced=forced,
            sessions_at_deadline=at_deadline,
            sessions_left=left,
            wait_seconds=wait_seconds,
        )

    def _poll_floor(self, wrote: float) -> float:
        """How old a read a polling loop accepts: newer than its own last write, and at most one
        poll interval old (another node's poll of the same backend serves it meanwhile)."""
        return max(wrote, time.monotonic() - self.poll_interval)

    async def _begin_fresh_check(
        self, client: LBClient, backend: str, server: str, admin: AdminState
    ) -> None:
        if admin != "DRAIN":
            await client.set_state(backend, server, "drain")
        await client.force_health_down(backend, server)

    async def warm(self, backend: str, server: str) -> list[str]:
        """Start the health proof of a node that is out of rotation, ahead of reenable().

        MAINT pauses HAProxy's checks, so a node coming back from MAINT waits ~rise x inter for
        fresh passes after reenable() begins. warm() begins them earlier: on every LB where the
        server is MAINT or DRAIN it sets DRAIN + forced health down, the same start as
        reenable()'s, so the rise runs while the node boots and the operator proves it healthy.
        The node stays out: DOWN takes no traffic, and only after `rise` fresh passes can a
        DRAIN server see persistent (cookie) traffic, as in reenable() itself. Call it only once
        the old process is gone (after provisioning): a pass of the old build must not count.
        A READY server is never touched. Returns the LBs warmed.
        """
        _check_name("backend", backend)
        _check_name("server", server)
        run = _Run(self)
        views = await run.each(lambda c: c.server(backend, server))
        todo = [c for c in run.active if views[c.name].admin_state in ("MAINT", "DRAIN")]
        admin = {c.name: views[c.name].admin_state for c in todo}
        await run.each(lambda c: self._begin_fresh_check(c, backend, server, admin[c.name]), todo)
        warmed = {c.name for c in todo}
        self._warmed[(backend, server)] = warmed
        return sorted(warmed)

    async def reenable(self, backend: str, server: str, *, deadline: float) -> ReenableResult:
        """Safely bring the server back: MAINT -> DRAIN + forced DOWN -> fresh passing checks on
        every LB -> READY -> read back UP. Never READY while a check has not passed afresh.

        On the deadline raises ReenableTimeout with the server in DRAIN (no load-balanced
        traffic) on the LBs it had to change. Already READY and UP everywhere: returns at once.
        """
        t0 = time.monotonic()
        end = t0 + deadline
        _check_name("backend", backend)
        _check_name("server", server)
        run = _Run(self)
        views = await run.each(lambda c: c.server(backend, server))
        no_check = [lb for lb, v in views.items() if v.check_configured is False]
        if no_check:
            raise NoHealthCheck(
                f"{backend}/{server} has no health check on {', '.join(no_check)}: HAProxy cannot "
                "prove it healthy, refusing to re-enable (add 'check' to the server line)",
                lb=no_check[0],
            )
        already = [lb for lb, v in views.items() if v.admin_state == "READY" and v.op_running]
        work = [c for c in run.active if views[c.name].admin_state != "READY"]
        # READY but DOWN: HAProxy's own rise logic already guards it; only wait for UP.
        waiting_up = [
            c for c in run.active if views[c.name].admin_state == "READY" and c.name not in already
        ]
        if not work and not waiting_up:
            return ReenableResult(
                run.names(), run.skipped, time.monotonic() - t0, backend, server, already, 0.0
            )
        admin = {c.name: views[c.name].admin_state for c in work}
        # Where warm() already forced the proof to start over and the server is still DRAIN,
        # forcing it again would only restart the rise.
        warmed = self._warmed.pop((backend, server), set())
        begin = [c for c in work if not (c.name in warmed and admin[c.name] == "DRAIN")]
        await run.each(lambda c: self._begin_fresh_check(c, backend, server, admin[c.name]), begin)
        t_changed = wrote = time.monotonic()
        last: dict[str, str] = {}
        while True:
            fresh = self._poll_floor(wrote)
            views = await run.each(
                lambda c, f=fresh: c.server(backend, server, not_before=f), [*work, *waiting_up]
            )
            last = {lb: v.status for lb, v in views.items()}
            # Lost our DRAIN (LB reload or a concurrent actor): start the proof again there.
            lost = [c for c in work if c.name in views and views[c.name].admin_state != "DRAIN"]
            if lost:
                log.warning(
                    "%s/%s left DRAIN on %s during re-enable; restarting the health proof",
                    backend,
                    server,
                    [c.name for c in lost],
                )
                lost_admin = {c.name: views[c.name].admin_state for c in lost}
                await run.each(
                    lambda c, a=lost_admin: self._begin_fresh_check(c, backend, server, a[c.name]),
                    lost,
                )
                wrote = time.monotonic()
            healthy = not lost and all(
                fresh_pass_after_forced_down(views[c.name]) for c in work if c.name in views
            )
            up = all(
                views[c.name].op_running and views[c.name].is_up
                for c in waiting_up
                if c.name in views
            )
            if healthy and up:
                break
            if time.monotonic() >= end:
                raise ReenableTimeout(
                    f"{backend}/{server} showed no fresh passing health check on every LB within "
                    f"{deadline:g}s ("
                    + ", ".join(f"{lb}: {s!r}" for lb, s in last.items())
                    + "); left in DRAIN, not READY",
                    lb=next(iter(last), None),
                    backend=backend,
                    server=server,
                    states=last,
                )
            await asyncio.sleep(self.poll_interval)
        check_wait = time.monotonic() - t_changed
        await run.each(lambda c: c.set_state(backend, server, "ready"), work)
        try:
            await self._confirm(
                run,
                backend,
                server,
                [*work, *waiting_up],
                lambda v: v.admin_state == "READY" and v.is_up,
                "READY and UP",
                within=max(0.5, end - time.monotonic()),
            )
        except LBStateMismatch as exc:
            # A check failed between our observation and `ready`: HAProxy holds it DOWN, which
            # routes nothing, but do not leave it READY behind the caller's back.
            await run.each(lambda c: c.set_state(backend, server, "drain"), work)
            raise ReenableTimeout(
                f"{backend}/{server} did not read back UP after ready ({exc}); set back to DRAIN",
                lb=exc.lb,
                backend=backend,
                server=server,
                states=last,
            ) from exc
        return ReenableResult(
            confirmed=run.names(),
            skipped=run.skipped,
            duration=time.monotonic() - t0,
            backend=backend,
            server=server,
            already_ready=already,
            check_wait_seconds=check_wait,
        )


# ------------------------------------------------------------------------------------ factory


def build_lb_pool(
    executor: SSHExecutor | None,
    lb_specs: Iterable[Mapping[str, Any]],
    *,
    tolerate_unreachable: bool = False,
    poll_interval: float = 0.1,
    connect_timeout: float = 5.0,
    command_timeout: float = 10.0,
) -> LBPool:
    clients = [
        build_lb_client(
            executor, s, connect_timeout=connect_timeout, command_timeout=command_timeout
        )
        for s in lb_specs
    ]
    return LBPool(clients, tolerate_unreachable=tolerate_unreachable, poll_interval=poll_interval)


__all__ = [
    "DrainResult",
    "LBPool",
    "PoolResult",
    "PreflightResult",
    "ReenableResult",
    "build_lb_pool",
]

"""HAProxy runtime-API client for one LB (``LBClient``) and its factory (``build_lb_client``).

All LBs at once (``LBPool``: preflight, drain, maint, safe re-enable) are in haproxy_pool.py; its
docstring holds the safe re-enable rule that ``LBClient.force_health_down`` exists for.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

from .coalesce import Coalesced
from .errors import (
    ConfigError,
    HAProxyError,
    LBProtocolError,
    LBUnreachable,
    NoSuchBackend,
    NoSuchServer,
    NotAdmin,
    PermissionDenied,
    WSO2OperatorError,
)
from .haproxy_parse import (
    FIELD_CAP,
    NAME_RE,
    ServerStat,
    ServerState,
    clip,
    merge_state,
    parse_servers_state,
    parse_show_stat,
    raise_for_error,
)
from .haproxy_transport import SshUnixTransport, TcpTransport, Transport, UnixSocketTransport
from .ssh import SSHExecutor

log = logging.getLogger(__name__)

State = Literal["ready", "drain", "maint"]


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ConfigError(f"invalid HAProxy {kind} name {value!r}")


class LBClient:
    """Typed commands against one LB's stats socket."""

    def __init__(self, name: str, transport: Transport):
        self.name = name
        self.transport = transport
        # The `Pid:` of the worker that answered the last read: counters restart with a new one.
        self.worker_id = ""
        self._server_reads: dict[str, Coalesced[dict[str, ServerStat]]] = {}

    def __repr__(self) -> str:
        return f"<LBClient {self.name} via {self.transport!r}>"

    async def command(self, line: str) -> str:
        """Raw command; LBUnreachable and LBProtocolError are re-raised naming this LB.

        The reply is remote text (bounded by the transport's REPLY_CAP); callers parse it with
        haproxy_parse, which bounds whatever it keeps.
        """
        try:
            return await self.transport.command(line)
        except LBUnreachable as exc:
            raise LBUnreachable(f"LB {self.name}: {exc}", lb=self.name) from exc
        except LBProtocolError as exc:
            raise LBProtocolError(f"LB {self.name}: {exc}", lb=self.name) from exc
        except WSO2OperatorError as exc:
            exc.add_note(f"while talking to LB {self.name}")
            raise

    async def _ensure_current_worker(self) -> None:
        """Make sure the kept connection talks to the live worker, not one that is stopping.

        After a reload (master-worker, SIGUSR2) a kept CLI connection stays attached to the OLD
        worker: it keeps answering, with `Stopping: 1` in `show info`, stale `show stat` data,
        and "Proxy is disabled." for every state change. So every read first checks
        `show info`, and a stopping worker means: reconnect (which reaches the new worker).
        """
        for attempt in (1, 2):
            info = await self.command("show info")
            stopping = re.search(r"^Stopping:[ \t]*([0-9]+)", info, re.M)
            if not stopping or stopping.group(1) == "0":
                pid = re.search(r"^Pid:[ \t]*([0-9]{1,12})", info, re.M)
                self.worker_id = pid.group(1) if pid else ""
                return
            log.info(
                "LB %s: connection is on a stopping (reloaded) worker; reconnecting", self.name
            )
            await self.transport.reset()
            if attempt == 2:
                break
        raise LBUnreachable(f"LB {self.name}: HAProxy is reloading (worker stopping)", lb=self.name)

    async def _write(self, line: str, *, backend: str = "", server: str = "") -> None:
        reply = await self.command(line)
        if reply.strip().startswith("Proxy is disabled"):
            # The kept connection is on an old worker after a reload (see above).
            await self.transport.reset()
            reply = await self.command(line)
            if reply.strip().startswith("Proxy is disabled"):
                raise LBUnreachable(
                    f"LB {self.name}: {line!r}: backend is disabled (HAProxy reloading?)",
                    lb=self.name,
                )
        if not reply.strip():
            return
        try:
            raise_for_error(
                reply, lb=self.name, command=line, backend=backend, server=server, expect_empty=True
            )
        except PermissionDenied:
            level = await self._level_or_none()
            raise NotAdmin(
                f"LB {self.name}: the stats socket is at level {level or 'unknown'!r}, but "
                f"{line.split(' ')[0]!r} needs 'level admin' on the stats socket line",
                lb=self.name,
                level=level or "",
            ) from None

    async def _level_or_none(self) -> str | None:
        try:
            return await self.cli_level()
        except HAProxyError:
            return None

    async def cli_level(self) -> str:
        """The socket's level ("admin", "operator", "user"); remote text, so clipped."""
        reply = await self.command("show cli level")
        raise_for_error(reply, lb=self.name, command="show cli level")
        return clip(reply.strip(), FIELD_CAP)

    async def show_stat(self, backend: str, *, check_worker: bool = True) -> dict[str, ServerStat]:
        _check_name("backend", backend)
        if check_worker:
            await self._ensure_current_worker()
        line = f"show stat {backend} 4 -1"
        reply = await self.command(line)
        if not reply.startswith("#"):
            raise_for_error(reply, lb=self.name, command=line, backend=backend)
        return parse_show_stat(reply, backend=backend, lb=self.name)

    async def show_servers_state(
        self, backend: str, *, check_worker: bool = True
    ) -> dict[str, ServerState]:
        _check_name("backend", backend)
        if check_worker:
            await self._ensure_current_worker()
        line = f"show servers state {backend}"
        reply = await self.command(line)
        if "#" not in reply:
            raise_for_error(reply, lb=self.name, command=line, backend=backend)
        return parse_servers_state(reply, backend=backend, lb=self.name)

    async def servers(
        self, backend: str, *, not_before: float | None = None
    ) -> dict[str, ServerStat]:
        """``show stat`` merged with ``show servers state`` (real admin flags and op state),
        from a read that started after ``not_before`` (``time.monotonic()``; default: now).

        Callers share reads (see coalesce.py): the node tasks of a big cluster poll the same
        backend at once.
        """
        _check_name("backend", backend)
        shared = self._server_reads.get(backend)
        if shared is None:
            shared = self._server_reads[backend] = Coalesced(lambda: self._read_servers(backend))
        return dict(await shared.run(not_before))

    async def _read_servers(self, backend: str) -> dict[str, ServerStat]:
        stats = await self.show_stat(backend)
        states = await self.show_servers_state(backend, check_worker=False)
        return {n: merge_state(s, states.get(n)) for n, s in stats.items()}

    async def server(
        self, backend: str, server: str, *, not_before: float | None = None
    ) -> ServerStat:
        _check_name("server", server)
        found = (await self.servers(backend, not_before=not_before)).get(server)
        if found is None:
            raise NoSuchServer(
                f"LB {self.name}: no server {server!r} in backend {backend!r}",
                lb=self.name,
                backend=backend,
                servers=[server],
            )
        return found

    async def set_state(self, backend: str, server: str, state: State) -> None:
        _check_name("backend", backend)
        _check_name("server", server)
        if state not in ("ready", "drain", "maint"):
            raise ConfigError(f"invalid server state {state!r}")
        await self._write(
            f"set server {backend}/{server} state {state}", backend=backend, server=server
        )

    async def get_weight(self, backend: str, server: str) -> tuple[int, int]:
        """(current, configured) weight: `get weight` answers "<current> (initial <initial>)"."""
        _check_name("backend", backend)
        _check_name("server", server)
        await self._ensure_current_worker()
        line = f"get weight {backend}/{server}"
        reply = await self.command(line)
        m = re.fullmatch(r"\s*([0-9]{1,3}) \((?:initial )?([0-9]{1,3})\)\s*", reply)
        if m is None:
            raise_for_error(reply, lb=self.name, command=line, backend=backend, server=server)
            raise LBProtocolError(f"LB {self.name}: {line!r}: unexpected reply", lb=self.name)
        return int(m.group(1)), int(m.group(2))

    async def set_weight(self, backend: str, server: str, weight: int) -> None:
        _check_name("backend", backend)
        _check_name("server", server)
        if not 0 <= weight <= 256:
            raise ConfigError(f"invalid weight {weight!r}")
        await self._write(f"set weight {backend}/{server} {weight}", backend=backend, server=server)

    async def force_health_down(self, backend: str, server: str) -> None:
        """Mark the server DOWN until ``rise`` new checks pass (see haproxy_pool docstring)."""
        _check_name("backend", backend)
        _check_name("server", server)
        await self._write(
            f"set server {backend}/{server} health down", backend=backend, server=server
        )

    async def shutdown_sessions(self, backend: str, server: str) -> None:
        _check_name("backend", backend)
        _check_name("server", server)
        await self._write(
            f"shutdown sessions server {backend}/{server}", backend=backend, server=server
        )

    async def close(self) -> None:
        await self.transport.close()


# ------------------------------------------------------------------------------------ factory


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"LB address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


def build_lb_client(
    executor: SSHExecutor | None,
    spec: Mapping[str, Any],
    *,
    connect_timeout: float = 5.0,
    command_timeout: float = 10.0,
) -> LBClient:
    """One LB from a spec dict:

    * ``{"name", "host", "sshPort"?: 22, "socket"}``: unix socket on the LB host over SSH;
    * ``{"name", "address": "host:port"}``: TCP stats socket;
    * ``{"name", "socket"}`` without host: a unix socket on this machine.
    """
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"LB spec without a name: {dict(spec)!r}")
    kw: dict[str, Any] = {"connect_timeout": connect_timeout, "command_timeout": command_timeout}
    transport: Transport
    if spec.get("address"):
        host, port = _split_address(str(spec["address"]))
        transport = TcpTransport(host, port, **kw)
    elif spec.get("socket") and spec.get("host"):
        if executor is None:
            raise ConfigError(f"LB {name}: an SSH executor is needed to reach {spec['host']}")
        port = int(spec.get("sshPort", spec.get("ssh_port", 22)))
        transport = SshUnixTransport(executor, str(spec["host"]), port, str(spec["socket"]), **kw)
    elif spec.get("socket"):
        transport = UnixSocketTransport(str(spec["socket"]), **kw)
    else:
        raise ConfigError(f"LB {name}: needs 'address' (TCP) or 'host' + 'socket' (SSH)")
    return LBClient(name, transport)


__all__ = [
    "LBClient",
    "NoSuchBackend",
    "ServerStat",
    "ServerState",
    "SshUnixTransport",
    "TcpTransport",
    "UnixSocketTransport",
    "build_lb_client",
]

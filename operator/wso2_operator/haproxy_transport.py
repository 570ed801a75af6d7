"""Transports to a HAProxy stats socket in interactive ("prompt") mode.

One long-lived connection per LB: in the default mode HAProxy closes the socket after every
reply, and over SSH a new channel per command costs ~46 ms against ~0.2 ms on a kept one.
Commands on one connection are serialized with a lock, because replies are only delimited by
the ``\\n> `` prompt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from typing import Any, Protocol

import asyncssh

from .errors import HostKeyMismatch, LBUnreachable, SSHAuthFailed, SSHUnreachable
from .ssh import SSHExecutor

log = logging.getLogger(__name__)

PROMPT_END = b"\n> "
# HAProxy drops a command longer than tune.bufsize (16 KiB) without any reply.
MAX_LINE = 8192
STREAM_LIMIT = 8 * 1024 * 1024


class Transport(Protocol):
    description: str

    async def command(self, line: str) -> str: ...

    async def reset(self) -> None: ...

    async def close(self) -> None: ...


class _Reader(Protocol):
    async def readuntil(self, separator: bytes) -> bytes: ...


class _InteractiveTransport(ABC):
    """Shared logic: connect, enter prompt mode, send one line, read up to the prompt."""

    description = "haproxy"

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        cli_timeout: int = 30,
    ):
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.cli_timeout = cli_timeout
        self._lock = asyncio.Lock()
        self._reader: Any = None
        self._writer: Any = None
        self._last_used = 0.0

    @abstractmethod
    async def _open_streams(self) -> tuple[Any, Any]:
        """Return (reader, writer) of a fresh byte stream to the socket."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"

    async def _connect(self) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await self._open_streams()
                try:
                    writer.write(b"prompt\n")
                    await reader.readuntil(PROMPT_END)
                    if self.cli_timeout:
                        # Keep the idle connection for longer than the default 10 s stats
                        # timeout; the reply is ignored (older levels may refuse it).
                        writer.write(f"set timeout cli {self.cli_timeout}\n".encode())
                        await reader.readuntil(PROMPT_END)
                except BaseException:
                    writer.close()
                    raise
        except TimeoutError:
            raise LBUnreachable(
                f"{self.description}: no answer within {self.connect_timeout:g}s"
            ) from None
        except SSHUnreachable as exc:
            raise LBUnreachable(f"{self.description}: {exc}") from exc
        except (HostKeyMismatch, SSHAuthFailed):
            raise  # definitive: the caller must see exactly why
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncssh.Error) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise LBUnreachable(f"{self.description}: cannot connect: {reason}") from exc
        self._reader, self._writer = reader, writer
        self._last_used = time.monotonic()
        log.debug("%s: connected in %.3fs", self.description, time.monotonic() - started)

    async def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            try:
                writer.close()
            except (OSError, asyncssh.Error):
                pass

    async def command(self, line: str) -> str:
        """Send one command line; return HAProxy's reply text without the prompt.

        Raises LBUnreachable if the socket cannot be reached or does not answer within
        ``command_timeout``. Error texts such as "No such server." are returned as-is
        (LBClient turns them into typed errors).
        """
        if "\n" in line or "\r" in line or ";" in line:
            # ';' would make HAProxy send several prompts for one line and desync the framing.
            raise ValueError(f"refusing to send a multi-command line to HAProxy: {line!r}")
        if len(line) > MAX_LINE:
            raise ValueError("HAProxy command line too long")
        payload = line.encode() + b"\n"
        async with self._lock:
            for attempt in (1, 2):
                fresh = False
                idle = time.monotonic() - self._last_used
                if self._writer is not None and self.cli_timeout and idle > self.cli_timeout - 2:
                    # HAProxy is about to (or did) close it; reconnect instead of racing it.
                    await self._drop()
                if self._writer is None:
                    await self._connect()
                    fresh = True
                try:
                    async with asyncio.timeout(self.command_timeout):
                        self._writer.write(payload)
                        data: bytes = await self._reader.readuntil(PROMPT_END)
                except TimeoutError:
                    await self._drop()
                    raise LBUnreachable(
                        f"{self.description}: no reply to {line.split(' ')[0]!r} within "
                        f"{self.command_timeout:g}s"
                    ) from None
                except (
                    asyncio.IncompleteReadError,
                    ConnectionError,
                    OSError,
                    asyncssh.Error,
                ) as exc:
                    await self._drop()
                    if attempt == 1 and not fresh:
                        # A kept connection closed under us (idle timeout, LB reload, SSH
                        # reconnect). HAProxy answers every command it runs, so no reply means
                        # it was not run: retrying once on a new connection is safe.
                        log.debug("%s: connection lost (%s), reconnecting", self.description, exc)
                        continue
                    raise LBUnreachable(
                        f"{self.description}: connection lost: {exc or type(exc).__name__}"
                    ) from exc
                except BaseException:
                    # Cancelled between sending and reading the whole reply: the rest of that
                    # reply would be read as the answer to the next command. Start afresh.
                    await self._drop()
                    raise
                self._last_used = time.monotonic()
                reply = data[: -len(PROMPT_END)].decode("utf-8", "replace")
                return reply[:-1] if reply.endswith("\n") else reply
        raise AssertionError("unreachable")  # pragma: no cover

    async def reset(self) -> None:
        """Drop the kept connection; the next command opens a new one."""
        async with self._lock:
            await self._drop()

    async def close(self) -> None:
        await self.reset()


class UnixSocketTransport(_InteractiveTransport):
    """A local unix stats socket (e.g. an LB on this host, or tests)."""

    def __init__(self, path: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.path = path
        self.description = f"unix:{path}"

    async def _open_streams(self) -> tuple[Any, Any]:
        return await asyncio.open_unix_connection(self.path, limit=STREAM_LIMIT)


class TcpTransport(_InteractiveTransport):
    """A ``stats socket ipv4@host:port`` (note: no authentication on HAProxy's side)."""

    def __init__(self, host: str, port: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.host = host
        self.port = port
        self.description = f"tcp:{host}:{port}"

    async def _open_streams(self) -> tuple[Any, Any]:
        return await asyncio.open_connection(self.host, self.port, limit=STREAM_LIMIT)


class SshUnixTransport(_InteractiveTransport):
    """The unix stats socket on the LB host, through an SSH direct-streamlocal channel.

    Shares the executor's connection to host:port; the channel is not a "session", so it does
    not count against sshd's MaxSessions.
    """

    def __init__(self, executor: SSHExecutor, host: str, port: int, path: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.executor = executor
        self.host = host
        self.port = port
        self.path = path
        self.description = f"ssh://{host}:{port}{path}"

    async def _open_streams(self) -> tuple[Any, Any]:
        conn = await self.executor.connection(self.host, self.port)
        try:
            return await conn.open_unix_connection(self.path)
        except asyncssh.ChannelOpenError as exc:
            # sshd says only "open failed" for a missing socket, a refused connect (HAProxy
            # down or reloading) or a permission problem.
            raise LBUnreachable(
                f"{self.description}: sshd could not open the socket ({exc.reason}); is HAProxy "
                "running and the path right?"
            ) from exc


__all__ = ["SshUnixTransport", "TcpTransport", "Transport", "UnixSocketTransport"]

"""Transports to a HAProxy stats socket in interactive ("prompt") mode.

One long-lived connection per LB: in the default mode HAProxy closes the socket after every
reply, and over SSH a new channel per command costs ~46 ms against ~0.2 ms on a kept one.
Commands on one connection are serialized with a lock, because replies are only delimited by
the ``\\n> `` prompt.

The peer is not trusted: a TCP admin socket has no authentication, and anything may listen on a
configured address. So every read is bounded in size (``REPLY_CAP``, ``HANDSHAKE_CAP``) and in
time (``connect_timeout``, ``command_timeout``), and whatever the peer sends ends in a typed
error (LBProtocolError, LBUnreachable) that never quotes the peer's bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from typing import Any, Protocol

import asyncssh

from .errors import (
    HostKeyMismatch,
    LBProtocolError,
    LBUnreachable,
    SSHAuthFailed,
    SSHUnreachable,
)
from .haproxy_parse import clip
from .ssh import SSHExecutor

log = logging.getLogger(__name__)

PROMPT_END = b"\n> "
# HAProxy drops a command longer than tune.bufsize (16 KiB) without any reply.
MAX_LINE = 8192
# Largest reply accepted, prompt included. `show stat <backend> 4 -1` for a backend with
# hundreds of servers is well under 1 MiB (~1 KiB per server row), `show info` ~2 KiB; a peer
# that sends more without a prompt is not a HAProxy we can talk to. Bounds memory per LB.
REPLY_CAP = 2 * 1024 * 1024
# The connect handshake (`prompt`, `set timeout cli`) gets a few bytes back from a real HAProxy.
HANDSHAKE_CAP = 64 * 1024
# Bytes asked for per read. Replies are assembled here, not in the stream, so the stream only
# buffers what arrives between two reads.
READ_CHUNK = 64 * 1024
# asyncio streams pause the socket once 2 * limit bytes are buffered unread.
STREAM_LIMIT = 64 * 1024
# The SSH channel's receive window: asyncssh stops reopening it once this much is buffered
# unread, so that is all a peer can push ahead of our reads (and sshd must respect it). Pinned
# rather than left to asyncssh's default (2 MiB today) so the bound does not move under us.
SSH_WINDOW = 1024 * 1024


class Transport(Protocol):
    description: str

    @property
    def connected(self) -> bool: ...

    async def command(self, line: str) -> str: ...

    async def reset(self) -> None: ...

    async def close(self) -> None: ...


class _Reader(Protocol):
    """What is used of asyncio.StreamReader and asyncssh.SSHReader: ``read(n)`` returns up to
    ``n`` bytes as soon as any are available, and b"" at EOF."""

    async def read(self, n: int) -> bytes: ...


class _TooLong(Exception):
    """Internal: no prompt within the cap."""


class _ExtraData(Exception):
    """Internal: the peer sent bytes after the prompt, unasked (the reply itself is complete)."""

    def __init__(self, reply: bytes):
        super().__init__()
        self.reply = reply


async def _read_until_prompt(reader: _Reader, cap: int) -> bytes:
    """Read up to and including the next prompt, never holding more than ``cap`` + a chunk.

    Not ``readuntil``: asyncio's raises LimitOverrunError/ValueError past the stream limit (after
    buffering up to twice that limit), and asyncssh's raises IncompleteReadError once its window
    is full, which looks like a lost connection. Here a reply over ``cap`` is a _TooLong, and
    EOF an IncompleteReadError without the partial data (it may be large and is never needed).
    Chunks are kept as they come and joined once, at the end of a reply within the cap.
    """
    chunks: list[bytes] = []
    size = 0  # bytes in chunks
    tail = b""  # the last bytes read before this chunk: the prompt may straddle two reads
    while True:
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            raise asyncio.IncompleteReadError(b"", None)
        window = tail + chunk
        found = window.find(PROMPT_END)
        chunks.append(chunk)
        if found >= 0:
            end = size - len(tail) + found + len(PROMPT_END)
            size += len(chunk)
            if end > cap:
                raise _TooLong()
            data = b"".join(chunks)
            if end != size:
                # HAProxy sends nothing unasked in prompt mode; whatever this is would be read
                # as the start of the next reply.
                raise _ExtraData(data[:end])
            return data
        size += len(chunk)
        if size > cap:
            raise _TooLong()
        tail = window[-(len(PROMPT_END) - 1) :]


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

    @property
    def connected(self) -> bool:
        """A session is kept open (it may still turn out dead on the next command)."""
        return self._writer is not None

    async def _connect(self) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await self._open_streams()
                try:
                    writer.write(b"prompt\n")
                    await self._handshake_reply(reader, "prompt")
                    if self.cli_timeout:
                        # Keep the idle connection for longer than the default 10 s stats
                        # timeout; the reply is ignored (older levels may refuse it).
                        writer.write(f"set timeout cli {self.cli_timeout}\n".encode())
                        await self._handshake_reply(reader, "set timeout cli")
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
        except (OSError, ValueError, EOFError, asyncio.IncompleteReadError, asyncssh.Error) as exc:
            raise LBUnreachable(f"{self.description}: cannot connect: {_reason(exc)}") from exc
        self._reader, self._writer = reader, writer
        self._last_used = time.monotonic()
        log.debug("%s: connected in %.3fs", self.description, time.monotonic() - started)

    async def _handshake_reply(self, reader: _Reader, what: str) -> None:
        try:
            await _read_until_prompt(reader, HANDSHAKE_CAP)
        except (_TooLong, _ExtraData):
            raise LBProtocolError(
                f"{self.description}: the reply to {what!r} while connecting is not HAProxy's "
                f"(no prompt within {HANDSHAKE_CAP} bytes, or data after it); is this "
                "address a HAProxy stats socket?"
            ) from None

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
        ``command_timeout``, and LBProtocolError if the reply has no prompt within
        ``REPLY_CAP`` bytes; either way the connection is dropped and the next command opens a
        new one. Error texts such as "No such server." are returned as-is (LBClient turns them
        into typed errors).
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
                verb = " ".join(line.split(" ")[:2])  # e.g. "show stat": names it, not the args
                try:
                    async with asyncio.timeout(self.command_timeout):
                        self._writer.write(payload)
                        data = await _read_until_prompt(self._reader, REPLY_CAP)
                except _TooLong:
                    # Not retried: HAProxy may have run the command. The rest of the reply would
                    # desync the connection, so it goes too.
                    await self._drop()
                    raise LBProtocolError(
                        f"{self.description}: reply to {verb!r} exceeds {REPLY_CAP} bytes "
                        "without a prompt; connection dropped"
                    ) from None
                except _ExtraData as extra:
                    # The reply is whole, but the connection cannot be trusted to stay in step.
                    log.warning(
                        "%s: unexpected data after the reply to %r; reconnecting next time",
                        self.description,
                        verb,
                    )
                    await self._drop()
                    data = extra.reply
                except TimeoutError:
                    await self._drop()
                    raise LBUnreachable(
                        f"{self.description}: no reply to {verb!r} within {self.command_timeout:g}s"
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
                        log.debug(
                            "%s: connection lost (%s), reconnecting",
                            self.description,
                            _reason(exc),
                        )
                        continue
                    raise LBUnreachable(
                        f"{self.description}: connection lost: {_reason(exc)}"
                    ) from exc
                except BaseException:
                    # Cancelled between sending and reading the whole reply: the rest of that
                    # reply would be read as the answer to the next command. Start afresh.
                    await self._drop()
                    raise
                self._last_used = time.monotonic()
                return _decode_reply(data)
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
            return await conn.open_unix_connection(self.path, window=SSH_WINDOW)
        except asyncssh.ChannelOpenError as exc:
            # sshd says only "open failed" for a missing socket, a refused connect (HAProxy
            # down or reloading) or a permission problem.
            raise LBUnreachable(
                f"{self.description}: sshd could not open the socket ({_reason(exc)}); is "
                "HAProxy running and the path right?"
            ) from exc


def _decode_reply(data: bytes) -> str:
    """The reply text without the prompt, and without the reply's own final newline (the prompt
    starts with one more). Decoded from a view: a reply near REPLY_CAP is not copied again."""
    end = len(data) - len(PROMPT_END)
    if end > 0 and data[end - 1] == 0x0A:
        end -= 1
    with memoryview(data) as view:
        return str(view[:end], "utf-8", "replace")


def _reason(exc: BaseException) -> str:
    """An exception's reason for a message. asyncssh reasons (disconnect, channel open failure)
    are the server's text, so they are sanitised and capped like any reply text."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return clip(str(reason))


__all__ = [
    "HANDSHAKE_CAP",
    "REPLY_CAP",
    "SshUnixTransport",
    "TcpTransport",
    "Transport",
    "UnixSocketTransport",
]

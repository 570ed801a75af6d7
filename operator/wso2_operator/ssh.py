"""SSH executor: one reused asyncssh connection per host, bounded channels, safe commands.

Design points (see /work/shared/notes/kopf-asyncssh-crd.md):

* Host keys are always verified against caller-supplied known_hosts text; there is no
  "trust on first use" mode.
* Values reach the remote command as ``env NAME=<quoted> ...`` in the command line, because a
  default sshd drops SSH ``env`` requests (no ``AcceptEnv``).
* asyncssh's ``conn.run(timeout=...)`` leaves the channel open when it times out, and OpenSSH
  does not kill a command whose channel closes without a pty. So every command runs under a
  small remote wrapper (coreutils ``timeout`` plus a watchdog on stdin, see ``_WRAPPER``), and
  a local timeout or cancellation closes the channel, which makes the wrapper kill the command.
* At most ``handshake_limit()`` SSH handshakes run at once in the process, whatever the hosts
  (an operator starting up with 50 clusters would otherwise open 300 at once: on a small machine
  the key exchanges starve each other past their timeouts, and each LB host's sshd drops the
  excess by its ``MaxStartups``). Waiting for a handshake slot is the operator's own queueing,
  not the host's time: it never counts against ``connect_timeout``.
* Nothing waits on the server without a deadline: connect, channel open and exec share
  ``connect_timeout``, the command gets its ``timeout``, and the channel close after a timeout
  or cancellation gets ``CHANNEL_CLOSE_TIMEOUT``, after which the connection is dropped. So
  ``run()`` returns within ``connect_timeout + timeout + CHANNEL_CLOSE_TIMEOUT`` of getting its
  session slot, whatever the server does.
* Output is read as it arrives and only ``OUTPUT_KEEP_BYTES`` per stream is kept, so a command
  that prints gigabytes costs time, not memory.
* Error messages end up in Kubernetes status: they never quote Secret content, and text that
  the remote side controls (disconnect reasons, stderr, signal names) is capped and stripped of
  control characters first.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

import asyncssh
from asyncssh.encryption import get_default_encryption_algs

from .errors import (
    ConfigError,
    HostKeyMismatch,
    SSHAuthFailed,
    SSHCommandFailed,
    SSHCommandTimeout,
    SSHUnreachable,
)
from .textcap import clip

log = logging.getLogger(__name__)

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
STDERR_TAIL_BYTES = 2048
# The remote `timeout` fires this much after the local one so that the local timeout (which
# raises SSHCommandTimeout) normally wins; the remote one is the backstop if the signal and the
# channel close are lost.
REMOTE_TIMEOUT_SLACK = 2.0
# Seconds between SIGTERM and SIGKILL for the remote `timeout -k`.
REMOTE_KILL_AFTER = 2
# Bytes kept per output stream; the rest is read and dropped (and counted). The head of stdout
# is kept because what callers parse (a version, a status line) comes first; the tail of stderr
# because a failing command explains itself last.
OUTPUT_KEEP_BYTES = 64 * 1024
# How long to wait for the server to confirm a channel close after a timeout or cancellation.
# sshd confirms once the wrapper has cleaned up, which takes up to REMOTE_KILL_AFTER (TERM, then
# KILL); a server that has not confirmed by then is not trusted with more channels: the whole
# connection is dropped, and the next call opens a fresh one.
CHANNEL_CLOSE_TIMEOUT = REMOTE_KILL_AFTER + 1.0
# A shared connect attempt bounds itself with connect_timeout; its waiters give up this much later
# in case that bound is ever lost (a coroutine that swallows cancellation), so no caller can hang.
CONNECT_GRACE = 1.0
# SSH handshakes in flight at once per process (see the module docstring).
DEFAULT_HANDSHAKE_LIMIT = 16
# Characters of remote-controlled text (a disconnect reason, a signal name) copied into a message.
REMOTE_TEXT_CHARS = 200
# Characters of stderr in an SSHCommandFailed message (the full tail is on the exception).
MESSAGE_STDERR_CHARS = 500
# Characters of the command name in messages: the name is the caller's, but messages are bounded.
COMMAND_NAME_CHARS = 64
# A connection that received nothing for this long is probed; after this many unanswered probes
# it is closed, and a command on it fails (SSHUnreachable) instead of waiting for its own
# timeout: a host that died mid-install is known within 90 s. Not shorter: an idle cluster's
# passes (every 30 s) already keep its connections busy, and at 15 s the probes of 200 quiet
# connections cost an idle operator a tenth of its CPU.
KEEPALIVE_INTERVAL = 30.0
KEEPALIVE_COUNT_MAX = 3
# AES-GCM before ChaCha20-Poly1305 (asyncssh's first choice): both are AEAD ciphers OpenSSH
# prefers, but asyncssh runs Poly1305 per packet in Python around the cipher, while AES-GCM is
# one OpenSSL call. Measured on a real sshd: 0.62 ms of the operator's CPU per command against
# 1.0 ms, which is a third of an idle fleet's SSH cost. The rest of the default list stays
# as a fallback for servers without GCM.
ENCRYPTION_PREFERENCE = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


@dataclass(frozen=True)
class SSHCredentials:
    """Who we are and whom we trust. ``private_key`` is PEM/OpenSSH bytes (from a Secret)."""

    username: str
    private_key: bytes = field(repr=False)
    known_hosts: str = field(repr=False)
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.username:
            raise ConfigError("SSH username is empty")
        if not self.private_key:
            raise ConfigError("SSH private key is empty")
        entries = [
            ln
            for ln in self.known_hosts.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")
        ]
        if not entries:
            raise ConfigError(
                "SSH known_hosts is empty: host keys must be pinned, unknown keys are never "
                "trusted (provide the LB/node host keys, e.g. from ssh-keyscan, in the Secret)"
            )
        if self.connect_timeout <= 0:
            raise ConfigError("SSH connect_timeout must be positive")


@dataclass(frozen=True)
class CommandResult:
    """What a command left behind.

    ``stdout`` is decoded from at most the first ``OUTPUT_KEEP_BYTES`` bytes of the command's
    standard output and ``stderr`` from at most its last ``OUTPUT_KEEP_BYTES`` bytes of standard
    error, both as UTF-8 with ``errors="replace"`` (a character cut at the boundary becomes
    U+FFFD). ``stdout_dropped``/``stderr_dropped`` count the bytes read and discarded, so the
    stream was ``len(kept bytes) + dropped`` bytes long and ``dropped > 0`` means "truncated".
    """

    exit_status: int
    stdout: str
    stderr: str
    duration: float
    stdout_dropped: int = 0
    stderr_dropped: int = 0


class _BoundedOutput(asyncssh.SSHClientSession[bytes]):
    """Session that keeps the head of stdout and the tail of stderr, and counts the rest.

    Data is handed over by asyncssh as it arrives and the receive window is reopened at once, so
    the server streams at full speed while memory stays at about 2 * ``keep`` bytes.
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stdout_dropped = 0
        self.stderr_dropped = 0
        self.exc: Exception | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr += data
            excess = len(self.stderr) - self._keep
            if excess > 0:
                # bytearray drops a prefix in place without copying the rest
                del self.stderr[:excess]
                self.stderr_dropped += excess
        else:
            kept = data[: self._keep - len(self.stdout)]
            self.stdout += kept
            self.stdout_dropped += len(data) - len(kept)

    def eof_received(self) -> bool:
        # True keeps our side open: answering EOF with EOF would close the command's stdin, which
        # the remote watchdog reads as "channel gone" (see _WRAPPER).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc

    def decoded(self) -> tuple[str, str]:
        return (
            self.stdout.decode("utf-8", "replace"),
            self.stderr.decode("utf-8", "replace"),
        )


# Runs "$1" under coreutils `timeout` and kills it when the SSH channel goes away.
#
# Why the watchdog: OpenSSH does not signal a command when its channel is closed (no pty), and
# it refuses client "signal" requests for root logins ("session signalling requires privilege
# separation"). What sshd does do on channel close is close the command's stdin. So the
# command runs in the background with stdin from /dev/null, while a watchdog blocks reading the
# real stdin (fd 3), which we never write to and never send EOF on. On EOF (channel closed, or
# connection gone) it sends TERM to `timeout`, which passes it on to its own process group and
# sends KILL 2 s later if needed.
#
# The watchdog also sends TERM to that process group directly, and again 0.1 s later: coreutils
# up to 9.1 (Debian 12) has a start-up race in which a TERM arriving around its fork() makes
# `timeout` exit while the freshly forked command survives (seen here when a channel closes
# within milliseconds). Once fired, the watchdog ignores TERM and the wrapper waits for it, so
# the channel closes only after the clean-up; the shell's "Terminated" report of the watchdog
# goes to /dev/null, not into the command's stderr. Without all this, a timed-out `sleep 30`
# keeps its sshd session slot (MaxSessions) until it exits. The remote `timeout` itself is the
# backstop.
_WRAPPER = (
    "exec 3<&0 </dev/null; "
    'timeout -k {kill_after} {limit} sh -c "$1" 3<&- & p=$!; '
    "( while read -r _ <&3; do :; done; trap '' TERM; "
    'kill -s TERM "$p"; kill -s TERM -- "-$p"; sleep 0.1; kill -s TERM -- "-$p" '
    ") >/dev/null 2>&1 & w=$!; "
    'wait "$p"; rc=$?; {{ kill "$w"; wait "$w"; }} 2>/dev/null; exit "$rc"'
)


# Exactly-once for a command that must not run again once it has completed (a provision step):
# the wrapper records a successful exit in a marker file on the host itself, in the same shell
# that ran the command, and skips the command when the marker is already there. The operator's
# own record (status) is written only after the exit reaches it, so an operator killed in that
# gap would otherwise run a completed step again. An interrupted command leaves no marker and
# runs again, as before. Markers are empty files, pruned after 30 days.
ONCE_KEY_RE = re.compile(r"[0-9a-f]{16,64}")
_ONCE_DIR = '"${XDG_STATE_HOME:-$HOME/.local/state}/wso2-operator/done"'
_ONCE_SKIP = (
    "d=" + _ONCE_DIR + "; "
    'if [ -e "$d/{key}" ]; then '
    'echo "wso2-operator: completed before, not run again (marker $d/{key})" >&2; exit 0; fi; '
)
_ONCE_RECORD = (
    'if [ "$rc" = 0 ]; then mkdir -p "$d" && : > "$d/{key}" && '
    'find "$d" -type f -mtime +30 -delete; fi 2>/dev/null; '
)


def build_remote_command(
    command: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    once_key: str | None = None,
) -> str:
    """Return the command line sent to sshd.

    ``env NAME=<quoted> ... sh -c <wrapper> wso2-run <quoted command>``, where the wrapper runs
    ``timeout -k 2 <N> sh -c "$1"``. Each value is one shell word, so spaces, quotes and
    ``$(...)`` arrive verbatim and are never evaluated; the user command is evaluated once, by
    the inner ``sh -c``. The command's stdin is /dev/null (stdin is used to detect channel
    close).
    """
    parts: list[str] = []
    if env:
        parts.append("env")
        for name, value in env.items():
            if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
                raise ConfigError(f"invalid environment variable name {_clip(repr(name), 64)}")
            if not isinstance(value, str):
                raise ConfigError(f"environment value for {name} must be a string")
            if "\x00" in value:
                raise ConfigError(f"environment value for {name} contains a NUL byte")
            parts.append(f"{name}={shlex.quote(value)}")
    limit = max(1.0, timeout + REMOTE_TIMEOUT_SLACK)
    wrapper = _WRAPPER.format(kill_after=REMOTE_KILL_AFTER, limit=f"{limit:g}")
    if once_key is not None:
        if not ONCE_KEY_RE.fullmatch(once_key):
            raise ConfigError(
                f"once_key must be 16-64 lowercase hex digits, got {_clip(repr(once_key), 80)}"
            )
        tail = 'exit "$rc"'
        assert wrapper.endswith(tail), "the wrapper must end with its exit"
        wrapper = (
            _ONCE_SKIP.replace("{key}", once_key)
            + wrapper[: -len(tail)]
            + _ONCE_RECORD.replace("{key}", once_key)
            + tail
        )
    parts += ["sh", "-c", shlex.quote(wrapper), "wso2-run", shlex.quote(command)]
    return " ".join(parts)


def _redact_env(command_line: str) -> str:
    """Replace values of a leading ``env NAME=value ...`` with ``***``."""
    if not command_line.startswith("env "):
        return command_line
    try:
        words = shlex.split(command_line)
    except ValueError:
        return "env <redacted>"
    out = ["env"]
    i = 1
    while i < len(words) and "=" in words[i] and ENV_NAME_RE.fullmatch(words[i].split("=", 1)[0]):
        out.append(words[i].split("=", 1)[0] + "=***")
        i += 1
    return " ".join(out + [shlex.quote(w) for w in words[i:]])


class _RedactCommandFilter(logging.Filter):
    """asyncssh logs every exec request at INFO ("  Command: %s"), which would leak env values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "Command:" in record.msg and record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(_redact_env(a) if isinstance(a, str) else a for a in args)
        return True


def _install_log_redaction() -> None:
    # Filters apply only to records created on the logger they are attached to, and asyncssh
    # logs channel events on "asyncssh.conn" (and a few on the package logger).
    for name in ("asyncssh", "asyncssh.conn"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _RedactCommandFilter) for f in lg.filters):
            lg.addFilter(_RedactCommandFilter())


def _clip(text: object, limit: int = REMOTE_TEXT_CHARS, *, keep_lines: bool = False) -> str:
    """Remote text for a message: bounded, unsafe characters replaced (see textcap.clip)."""
    return clip(text, limit, keep_lines=keep_lines)


def _known_hosts_problem(line: str) -> str:
    """What is wrong with a known_hosts line asyncssh rejected, in words that quote none of it."""
    fields = line.split()
    if len(fields) < 2 or (line.startswith("@") and len(fields) < 3):
        what = "it has too few fields"
    elif line.startswith("@"):
        what = "its @marker is not @cert-authority or @revoked"
    elif fields[0].startswith("|"):
        what = "its hashed host name is malformed"
    else:
        what = "it is not a valid entry"
    return what + " (expected '[@marker] <host patterns> <key type> <base64 key>')"


def _import_known_hosts(text: str) -> asyncssh.SSHKnownHosts:
    """Parse known_hosts text from a Secret; a ConfigError names a line number, never content.

    asyncssh's own message quotes the offending line, which is Secret content (a private key put
    under the known_hosts key by mistake would show up in Kubernetes status). The exception is
    also not chained: a traceback would print it.
    """
    try:
        return asyncssh.import_known_hosts(text)
    except Exception:
        pass  # any failure is reported below, without its text
    bad_line = 0
    for number, line in enumerate(text.splitlines(), 1):
        try:
            asyncssh.import_known_hosts(line)
        except Exception:
            bad_line = number
            break
    if not bad_line:
        # Lines parse one by one but not together: not expected, still reported without content.
        raise ConfigError("cannot parse SSH known_hosts (no single line is at fault)")
    problem = _known_hosts_problem(text.splitlines()[bad_line - 1].strip())
    hint = ""
    if any(ln.lstrip().startswith("-----BEGIN ") for ln in text.splitlines()):
        hint = (
            "; the value looks like a PEM block (a private key or certificate?), check that "
            "the Secret's keys are not swapped"
        )
    raise ConfigError(f"cannot parse SSH known_hosts: line {bad_line}: {problem}{hint}")


def _tail(text: str, limit: int = STDERR_TAIL_BYTES) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[-limit:].decode("utf-8", "replace")


def _command_name(command: str) -> str:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return words[0] if words else ""


_handshake_limit = DEFAULT_HANDSHAKE_LIMIT
_handshake_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _encryption_algs() -> list[str]:
    defaults = [a.decode() for a in get_default_encryption_algs()]
    preferred = [a for a in ENCRYPTION_PREFERENCE if a in defaults]
    return preferred + [a for a in defaults if a not in preferred]


def set_handshake_limit(limit: int) -> None:
    """How many SSH handshakes may run at once in this process (for loops created after)."""
    global _handshake_limit
    if limit < 1:
        raise ConfigError("the SSH handshake limit must be >= 1")
    _handshake_limit = limit


def handshake_limit() -> int:
    return _handshake_limit


def _handshake_gate() -> asyncio.Semaphore:
    """The running loop's handshake semaphore, shared by every executor on it."""
    loop = asyncio.get_running_loop()
    gate = _handshake_gates.get(loop)
    if gate is None:
        gate = _handshake_gates[loop] = asyncio.Semaphore(_handshake_limit)
    return gate


@dataclass(eq=False)
class _ConnectAttempt:
    """One connect attempt to a (host, port), shared by every caller that needs it."""

    future: asyncio.Future[asyncssh.SSHClientConnection]
    started: asyncio.Event = field(default_factory=asyncio.Event)  # holds a handshake slot
    since: float = 0.0  # loop.time() when the handshake began

    async def wait_started(self) -> None:
        """Until the attempt holds a handshake slot (or is over). Never cancels the attempt."""
        if self.started.is_set() or self.future.done():
            return
        waiter = asyncio.ensure_future(self.started.wait())
        try:
            await asyncio.wait({waiter, self.future}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()


class SSHExecutor:
    """Runs commands over one reused SSH connection per (host, port).

    Safe to share between coroutines of one event loop.
    """

    def __init__(self, credentials: SSHCredentials, max_sessions_per_host: int = 8):
        if max_sessions_per_host < 1:
            raise ConfigError("max_sessions_per_host must be >= 1")
        self._creds = credentials
        self._max_sessions = max_sessions_per_host
        key_error = ""
        try:
            self._client_key = asyncssh.import_private_key(credentials.private_key)
        except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
            key_error = type(exc).__name__
        if key_error:
            # Never include the key material, not even a prefix; raised outside the `except` so
            # the original exception (whose text may quote the key) is not even the context.
            raise ConfigError(
                f"cannot load SSH private key ({key_error}; "
                "it must be an unencrypted OpenSSH or PEM private key)"
            )
        self._known_hosts = _import_known_hosts(credentials.known_hosts)
        self._conns: dict[tuple[str, int], asyncssh.SSHClientConnection] = {}
        self._pending: dict[tuple[str, int], _ConnectAttempt] = {}
        self._sems: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._closed = False
        _install_log_redaction()

    @property
    def credentials(self) -> SSHCredentials:
        return self._creds

    def open_hosts(self) -> list[tuple[str, int]]:
        """(host, port) of every connection currently open (for the connection gauge)."""
        return [key for key, conn in list(self._conns.items()) if not conn.is_closed()]

    async def __aenter__(self) -> SSHExecutor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------------- connections

    async def connection(self, host: str, port: int = 22) -> asyncssh.SSHClientConnection:
        """Return the open connection to (host, port), connecting if needed.

        Concurrent callers share one connect attempt; a closed connection is replaced. Raises
        SSHUnreachable if the connection is not up within ``connect_timeout`` (plus
        ``CONNECT_GRACE`` for a caller that joined an attempt already under way).
        """
        return await self._connection(host, port, None)

    async def _connection(
        self, host: str, port: int, deadline: float | None
    ) -> asyncssh.SSHClientConnection:
        """``connection()``, but giving up at ``deadline`` (``loop.time()``) if that is earlier.

        The deadline is moved on by however long the attempt waited for a handshake slot.
        """
        if self._closed:
            raise RuntimeError("SSHExecutor is closed")
        loop = asyncio.get_running_loop()
        key = (host, port)
        conn = self._conns.get(key)
        if conn is not None and not conn.is_closed():
            return conn
        attempt = self._attempt(host, port)
        if not attempt.started.is_set():
            queued = loop.time()
            await attempt.wait_started()
            if deadline is not None:
                deadline += loop.time() - queued
        fut = attempt.future
        timeout = self._creds.connect_timeout
        backstop = (attempt.since or loop.time()) + timeout + CONNECT_GRACE
        try:
            async with asyncio.timeout_at(
                backstop if deadline is None else min(backstop, deadline)
            ):
                # Shield: one caller being cancelled must not abort the attempt others wait on.
                return await asyncio.shield(fut)
        except TimeoutError:
            pass
        if loop.time() >= backstop and self._pending.get(key) is attempt:
            # The attempt outlived its own bound: let the next caller start afresh. It is not
            # cancelled (that would cancel the callers still sharing it); if it ever completes,
            # _connect_done closes the connection it brings.
            log.warning("ssh connect to %s:%d overran its timeout; abandoned", host, port)
            del self._pending[key]
        raise SSHUnreachable(
            f"SSH connect to {host}:{port} timed out after {timeout:g}s", host=host, port=port
        )

    def _attempt(self, host: str, port: int) -> _ConnectAttempt:
        """The connect attempt under way to (host, port), started if there is none."""
        key = (host, port)
        attempt = self._pending.get(key)
        if attempt is None:
            attempt = _ConnectAttempt(asyncio.ensure_future(self._connect(host, port)))
            self._pending[key] = attempt
            attempt.future.add_done_callback(lambda f: self._connect_done(key, attempt))
            attempt.future.add_done_callback(lambda f: attempt.started.set())
        return attempt

    async def _handshake_turn(self, host: str, port: int) -> None:
        """Wait until (host, port) is connected or its connect attempt holds a handshake slot."""
        conn = self._conns.get((host, port))
        if (conn is None or conn.is_closed()) and not self._closed:
            await self._attempt(host, port).wait_started()

    def _connect_done(self, key: tuple[str, int], attempt: _ConnectAttempt) -> None:
        fut = attempt.future
        current = self._pending.get(key) is attempt
        if current:
            del self._pending[key]
        # Retrieve a failure here: it reaches the callers that awaited the attempt, and one that
        # nobody awaits any more must not be logged as "never retrieved".
        if fut.cancelled() or fut.exception() is not None:
            return
        conn = fut.result()
        if not current or self._closed:
            conn.close()  # an abandoned attempt, or the executor closed meanwhile: nobody owns it
            return
        # Registered here rather than in _connect so that an abandoned attempt cannot replace
        # (and close) the connection of the attempt that superseded it.
        old = self._conns.get(key)
        if old is not None and old is not conn:
            old.close()
        self._conns[key] = conn

    async def _connect(self, host: str, port: int) -> asyncssh.SSHClientConnection:
        async with _handshake_gate():
            attempt = self._pending.get((host, port))
            if attempt is not None and attempt.future is asyncio.current_task():
                attempt.since = asyncio.get_running_loop().time()
                attempt.started.set()
            return await self._handshake(host, port)

    async def _handshake(self, host: str, port: int) -> asyncssh.SSHClientConnection:
        timeout = self._creds.connect_timeout
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                conn = await asyncssh.connect(
                    host,
                    port=port,
                    username=self._creds.username,
                    known_hosts=self._known_hosts,
                    client_keys=[self._client_key],
                    agent_path=None,
                    config=None,
                    password=None,
                    kbdint_auth=False,
                    gss_auth=False,
                    host_based_auth=False,
                    preferred_auth="publickey",
                    connect_timeout=timeout,
                    keepalive_interval=KEEPALIVE_INTERVAL,
                    keepalive_count_max=KEEPALIVE_COUNT_MAX,
                    encryption_algs=_encryption_algs(),
                )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyMismatch(
                f"SSH host key of {host}:{port} is not trusted ({_clip(exc.reason)}); refusing to "
                "connect. Update known_hosts only if the host was legitimately re-keyed.",
                host=host,
                port=port,
            ) from None
        except asyncssh.PermissionDenied as exc:
            raise SSHAuthFailed(
                f"SSH authentication as {_clip(repr(self._creds.username), 64)} to "
                f"{host}:{port} failed ({_clip(exc.reason)})",
                host=host,
                port=port,
            ) from None
        except TimeoutError:
            raise SSHUnreachable(
                f"SSH connect to {host}:{port} timed out after {timeout:g}s",
                host=host,
                port=port,
            ) from None
        except (
            OSError,
            ValueError,
            asyncssh.DisconnectError,
        ) as exc:  # ValueError: a bad host name
            raise SSHUnreachable(
                f"SSH connect to {host}:{port} failed: {_clip(exc)}", host=host, port=port
            ) from exc
        log.debug("ssh connected to %s:%d in %.3fs", host, port, time.monotonic() - started)
        return conn

    def _forget(self, host: str, port: int, conn: asyncssh.SSHClientConnection) -> None:
        if self._conns.get((host, port)) is conn:
            del self._conns[(host, port)]
        conn.close()

    def _semaphore(self, host: str, port: int) -> asyncio.Semaphore:
        sem = self._sems.get((host, port))
        if sem is None:
            sem = self._sems[(host, port)] = asyncio.Semaphore(self._max_sessions)
        return sem

    async def close(self) -> None:
        self._closed = True
        for attempt in list(self._pending.values()):
            attempt.future.cancel()
        conns = list(self._conns.values())
        self._conns.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            try:
                async with asyncio.timeout(5):
                    await conn.wait_closed()
            except (TimeoutError, OSError, asyncssh.Error):
                pass

    # ---------------------------------------------------------------------------- commands

    async def run(
        self,
        host: str,
        port: int,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,  # noqa: ASYNC109 - per-command timeout is part of the API
        check: bool = True,
        once_key: str | None = None,
    ) -> CommandResult:
        """Run ``command`` (a shell snippet for ``sh -c``) on host:port; stdin is /dev/null.

        Raises SSHCommandTimeout after ``timeout`` seconds (the channel is closed and the remote
        command killed before this returns), SSHCommandFailed on a non-zero exit when ``check``,
        SSHUnreachable/HostKeyMismatch/SSHAuthFailed on connection problems. If the connection
        drops while the command runs, SSHUnreachable is raised and the command may or may not
        have run: make remote commands idempotent.

        Once a session slot is free, this returns or raises within ``connect_timeout`` (connect,
        channel open and exec together) + ``timeout`` + ``CHANNEL_CLOSE_TIMEOUT``, even against
        a server that stops answering. Output beyond ``OUTPUT_KEEP_BYTES`` per stream is dropped
        (see CommandResult).

        With ``once_key``, a command that once exited 0 under that key on this host is not run
        again: the call succeeds at once (see ``_ONCE_SKIP``).
        """
        if timeout <= 0:
            raise ConfigError("timeout must be positive")
        remote = build_remote_command(command, env, timeout, once_key)
        name = _clip(_command_name(command), COMMAND_NAME_CHARS)
        log.debug("ssh %s:%d run %r (env names %s)", host, port, command, sorted(env or ()))
        async with self._semaphore(host, port):
            # Waiting for the session slot and for a handshake slot is our own queueing; the
            # server's time starts now.
            await self._handshake_turn(host, port)
            start_deadline = asyncio.get_running_loop().time() + self._creds.connect_timeout
            for attempt in (1, 2):
                conn = await self._connection(host, port, start_deadline)
                try:
                    return await self._run_on(
                        conn, host, port, command, name, remote, timeout, check, start_deadline
                    )
                except asyncssh.ChannelOpenError as exc:
                    # The command never started, so one retry on a fresh connection is safe.
                    if attempt == 2 or not conn.is_closed():
                        raise SSHUnreachable(
                            f"SSH channel to {host}:{port} could not be opened: "
                            f"{_clip(exc.reason)}",
                            host=host,
                            port=port,
                        ) from None
                    self._forget(host, port, conn)
                except (asyncssh.DisconnectError, ConnectionError) as exc:
                    self._forget(host, port, conn)
                    raise SSHUnreachable(
                        f"SSH connection to {host}:{port} lost while running {name!r}: "
                        f"{_clip(exc)}",
                        host=host,
                        port=port,
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start(
        self,
        conn: asyncssh.SSHClientConnection,
        host: str,
        port: int,
        name: str,
        remote: str,
        session: _BoundedOutput,
        deadline: float,
    ) -> asyncssh.SSHClientChannel[bytes]:
        """Open a session channel and exec ``remote`` on it, giving up at ``deadline``."""
        # stdin stays open and is never written to: the remote watchdog treats its EOF as
        # "channel closed" (see _WRAPPER).
        opening = asyncio.ensure_future(conn.create_session(lambda: session, remote, encoding=None))
        try:
            async with asyncio.timeout_at(deadline):
                chan, _ = await asyncio.shield(opening)
            return chan
        except BaseException as exc:
            # Timed out or cancelled: the server may still confirm the channel or the exec later.
            # A channel nobody owns would hold a session slot and, once the exec is accepted, run
            # the command with its stdin never closed, so it is closed whenever it opens.
            opening.add_done_callback(_close_unowned_channel)
            if not isinstance(exc, TimeoutError):
                raise
        # The channel's state on the server is unknown and the server is not answering it: drop
        # the connection, so that the next call starts afresh and nothing waits on this one.
        self._forget(host, port, conn)
        what = "the exec request" if session.chan is not None else "the session channel"
        timeout = self._creds.connect_timeout
        raise SSHUnreachable(
            f"SSH server {host}:{port} did not confirm {what} for {name!r} within the connect "
            f"timeout ({timeout:g}s); the connection was dropped",
            host=host,
            port=port,
        )

    async def _close_channel(
        self,
        conn: asyncssh.SSHClientConnection,
        chan: asyncssh.SSHClientChannel[bytes],
        host: str,
        port: int,
    ) -> None:
        """Close ``chan`` and wait (bounded) until the server has closed it too.

        No terminate(): sshd refuses signals for root logins, and for other users it would kill
        the wrapper but not `timeout`'s own process group. Closing the channel triggers the
        watchdog, and sshd confirms the close only once the command is gone, so the session slot
        is free again when this returns.
        """
        chan.close()
        try:
            async with asyncio.timeout(CHANNEL_CLOSE_TIMEOUT):
                await chan.wait_closed()
        except TimeoutError:
            log.warning(
                "ssh %s:%d did not confirm a channel close within %gs; dropping the connection",
                host,
                port,
                CHANNEL_CLOSE_TIMEOUT,
            )
            self._forget(host, port, conn)

    async def _run_on(
        self,
        conn: asyncssh.SSHClientConnection,
        host: str,
        port: int,
        command: str,
        name: str,
        remote: str,
        timeout: float,  # noqa: ASYNC109
        check: bool,
        start_deadline: float,
    ) -> CommandResult:
        started = time.monotonic()
        session = _BoundedOutput(OUTPUT_KEEP_BYTES)
        chan = await self._start(conn, host, port, name, remote, session, start_deadline)
        try:
            async with asyncio.timeout(timeout):
                await chan.wait_closed()
        except TimeoutError:
            await self._close_channel(conn, chan, host, port)
            raise SSHCommandTimeout(
                f"command {name!r} on {host}:{port} timed out after {timeout:g}s",
                host=host,
                port=port,
                command=command,
                timeout=timeout,
            ) from None
        except BaseException:
            # Cancelled: clean up the same way as on a timeout, then let the cancellation go on.
            await self._close_channel(conn, chan, host, port)
            raise
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # A cancellation requested as the command ended is honoured rather than reported as
            # a success (the channel is closed already).
            raise asyncio.CancelledError
        duration = time.monotonic() - started
        status = chan.get_returncode()
        if status is None:
            # The channel closed without an exit status: the connection went away.
            why = f": {_clip(session.exc)}" if session.exc is not None else ""
            raise SSHUnreachable(
                f"SSH connection to {host}:{port} closed before {name!r} finished{why}",
                host=host,
                port=port,
            )
        stdout, stderr = session.decoded()
        result = CommandResult(
            status,
            stdout,
            stderr,
            duration,
            stdout_dropped=session.stdout_dropped,
            stderr_dropped=session.stderr_dropped,
        )
        log.debug(
            "ssh %s:%d %r exited %d in %.3fs (%d+%d output bytes dropped)",
            host,
            port,
            name,
            status,
            duration,
            session.stdout_dropped,
            session.stderr_dropped,
        )
        if check and status != 0:
            tail = _tail(stderr)
            signal = chan.get_exit_signal()
            how = f"killed by signal {_clip(signal[0], 32)}" if signal else f"exited {status}"
            shown = _clip(
                tail.strip()[-MESSAGE_STDERR_CHARS:], MESSAGE_STDERR_CHARS, keep_lines=True
            )
            raise SSHCommandFailed(
                f"command {name!r} on {host}:{port} {how}: {shown}",
                outcome=f"{how}: {shown}" if shown else how,
                host=host,
                port=port,
                command=command,
                exit_status=status,
                stderr_tail=tail,
                stdout_tail=_tail(stdout),
            )
        return result


def _close_unowned_channel(
    opening: asyncio.Future[
        tuple[asyncssh.SSHClientChannel[bytes], asyncssh.SSHClientSession[bytes]]
    ],
) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return  # nothing opened (and the failure is retrieved, so it is not logged as lost)
    opening.result()[0].close()


__all__ = ["CommandResult", "SSHCredentials", "SSHExecutor", "build_remote_command"]

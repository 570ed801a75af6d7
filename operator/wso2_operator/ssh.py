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
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

import asyncssh

from .errors import (
    ConfigError,
    HostKeyMismatch,
    SSHAuthFailed,
    SSHCommandFailed,
    SSHCommandTimeout,
    SSHUnreachable,
)

log = logging.getLogger(__name__)

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
STDERR_TAIL_BYTES = 2048
# The remote `timeout` fires this much after the local one so that the local timeout (which
# raises SSHCommandTimeout) normally wins; the remote one is the backstop if the signal and the
# channel close are lost.
REMOTE_TIMEOUT_SLACK = 2.0
# Seconds between SIGTERM and SIGKILL for the remote `timeout -k`.
REMOTE_KILL_AFTER = 2


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
    exit_status: int
    stdout: str
    stderr: str
    duration: float


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
                raise ConfigError(f"invalid environment variable name {name!r}")
            if not isinstance(value, str):
                raise ConfigError(f"environment value for {name} must be a string")
            if "\x00" in value:
                raise ConfigError(f"environment value for {name} contains a NUL byte")
            parts.append(f"{name}={shlex.quote(value)}")
    limit = max(1.0, timeout + REMOTE_TIMEOUT_SLACK)
    wrapper = _WRAPPER.format(kill_after=REMOTE_KILL_AFTER, limit=f"{limit:g}")
    if once_key is not None:
        if not ONCE_KEY_RE.fullmatch(once_key):
            raise ConfigError(f"once_key must be 16-64 lowercase hex digits, got {once_key!r}")
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


class SSHExecutor:
    """Runs commands over one reused SSH connection per (host, port).

    Safe to share between coroutines of one event loop.
    """

    def __init__(self, credentials: SSHCredentials, max_sessions_per_host: int = 8):
        if max_sessions_per_host < 1:
            raise ConfigError("max_sessions_per_host must be >= 1")
        self._creds = credentials
        self._max_sessions = max_sessions_per_host
        try:
            self._client_key = asyncssh.import_private_key(credentials.private_key)
        except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
            # Never include the key material, not even a prefix.
            raise ConfigError(
                f"cannot load SSH private key ({type(exc).__name__}; "
                "it must be an unencrypted OpenSSH or PEM private key)"
            ) from None
        try:
            self._known_hosts = asyncssh.import_known_hosts(credentials.known_hosts)
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise ConfigError(f"cannot parse SSH known_hosts: {exc}") from None
        self._conns: dict[tuple[str, int], asyncssh.SSHClientConnection] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[asyncssh.SSHClientConnection]] = {}
        self._sems: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._closed = False
        _install_log_redaction()

    @property
    def credentials(self) -> SSHCredentials:
        return self._creds

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

        Concurrent callers share one connect attempt; a closed connection is replaced.
        """
        if self._closed:
            raise RuntimeError("SSHExecutor is closed")
        key = (host, port)
        conn = self._conns.get(key)
        if conn is not None and not conn.is_closed():
            return conn
        fut = self._pending.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._connect(host, port))
            self._pending[key] = fut
            fut.add_done_callback(lambda f, key=key: self._connect_done(key, f))
        # Shield: one caller being cancelled must not abort the attempt others are waiting on.
        return await asyncio.shield(fut)

    def _connect_done(
        self, key: tuple[str, int], fut: asyncio.Future[asyncssh.SSHClientConnection]
    ) -> None:
        if self._pending.get(key) is fut:
            del self._pending[key]
        if not fut.cancelled():
            fut.exception()  # mark retrieved: a failure is reported to the awaiting callers

    async def _connect(self, host: str, port: int) -> asyncssh.SSHClientConnection:
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
                    keepalive_interval=15,
                    keepalive_count_max=3,
                )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyMismatch(
                f"SSH host key of {host}:{port} is not trusted ({exc.reason}); refusing to "
                "connect. Update known_hosts only if the host was legitimately re-keyed.",
                host=host,
                port=port,
            ) from None
        except asyncssh.PermissionDenied as exc:
            raise SSHAuthFailed(
                f"SSH authentication as {self._creds.username!r} to {host}:{port} failed "
                f"({exc.reason})",
                host=host,
                port=port,
            ) from None
        except TimeoutError:
            raise SSHUnreachable(
                f"SSH connect to {host}:{port} timed out after {timeout:g}s",
                host=host,
                port=port,
            ) from None
        except (OSError, asyncssh.DisconnectError) as exc:
            raise SSHUnreachable(
                f"SSH connect to {host}:{port} failed: {exc}", host=host, port=port
            ) from exc
        log.debug("ssh connected to %s:%d in %.3fs", host, port, time.monotonic() - started)
        old = self._conns.get((host, port))
        if old is not None and old is not conn:
            old.close()
        self._conns[(host, port)] = conn
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
        for fut in list(self._pending.values()):
            fut.cancel()
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

        With ``once_key``, a command that once exited 0 under that key on this host is not run
        again: the call succeeds at once (see ``_ONCE_SKIP``).
        """
        if timeout <= 0:
            raise ConfigError("timeout must be positive")
        remote = build_remote_command(command, env, timeout, once_key)
        name = _command_name(command)
        log.debug("ssh %s:%d run %r (env names %s)", host, port, command, sorted(env or ()))
        async with self._semaphore(host, port):
            for attempt in (1, 2):
                conn = await self.connection(host, port)
                try:
                    return await self._run_on(
                        conn, host, port, command, name, remote, timeout, check
                    )
                except asyncssh.ChannelOpenError as exc:
                    # The command never started, so one retry on a fresh connection is safe.
                    if attempt == 2 or not conn.is_closed():
                        raise SSHUnreachable(
                            f"SSH channel to {host}:{port} could not be opened: {exc.reason}",
                            host=host,
                            port=port,
                        ) from None
                    self._forget(host, port, conn)
                except (asyncssh.DisconnectError, ConnectionError) as exc:
                    self._forget(host, port, conn)
                    raise SSHUnreachable(
                        f"SSH connection to {host}:{port} lost while running {name!r}: {exc}",
                        host=host,
                        port=port,
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

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
    ) -> CommandResult:
        started = time.monotonic()
        # stdin stays an open pipe that we never write to: the remote watchdog treats its EOF
        # as "channel closed" (see _WRAPPER).
        async with conn.create_process(remote, encoding="utf-8", errors="replace") as proc:
            try:
                completed = await proc.wait(check=False, timeout=timeout)
            except asyncssh.TimeoutError:
                # No proc.terminate(): sshd refuses signals for root logins, and for other users
                # it would kill the wrapper but not `timeout`'s own process group. Closing the
                # channel triggers the watchdog; leaving the `async with` waits until sshd has
                # really closed the channel, so the session slot is free again.
                proc.close()
                raise SSHCommandTimeout(
                    f"command {name!r} on {host}:{port} timed out after {timeout:g}s",
                    host=host,
                    port=port,
                    command=command,
                    timeout=timeout,
                ) from None
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for can swallow a cancellation that races with the
                # command's end; honour it (leaving the `async with` closes the channel).
                raise asyncio.CancelledError
        duration = time.monotonic() - started
        stdout = completed.stdout if isinstance(completed.stdout, str) else ""
        stderr = completed.stderr if isinstance(completed.stderr, str) else ""
        status = completed.returncode
        if status is None:
            # The channel closed without an exit status: the connection went away.
            raise SSHUnreachable(
                f"SSH connection to {host}:{port} closed before {name!r} finished",
                host=host,
                port=port,
            )
        result = CommandResult(status, stdout, stderr, duration)
        log.debug("ssh %s:%d %r exited %d in %.3fs", host, port, name, status, duration)
        if check and status != 0:
            tail = _tail(stderr)
            how = (
                f"killed by signal {completed.exit_signal[0]}"
                if completed.exit_signal
                else f"exited {status}"
            )
            raise SSHCommandFailed(
                f"command {name!r} on {host}:{port} {how}: {tail.strip()[-500:]}",
                host=host,
                port=port,
                command=command,
                exit_status=status,
                stderr_tail=tail,
                stdout_tail=_tail(stdout),
            )
        return result


__all__ = ["CommandResult", "SSHCredentials", "SSHExecutor", "build_remote_command"]

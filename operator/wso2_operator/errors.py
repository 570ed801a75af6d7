"""Typed errors shared by the SSH and HAProxy adapters and the reconciler.

Every error carries a class attribute ``transient``:

* ``True``: the situation may resolve by itself (host unreachable, timeouts, an LB mid-reload),
  so the caller should retry with backoff.
* ``False``: retrying the same call cannot help (wrong names, permission, host-key mismatch, a
  command that failed); a human or a spec change is needed.

Error messages never contain secrets: no private keys, no values passed through ``env``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class WSO2OperatorError(Exception):
    """Root of every error raised by the operator's adapters."""

    transient: bool = False


class ConfigError(WSO2OperatorError):
    """Invalid configuration (credentials, LB spec, names); fixing the spec is the only cure."""

    transient = False


# --------------------------------------------------------------------------------------- SSH


class SSHError(WSO2OperatorError):
    """Base for SSH failures. ``host``/``port`` identify the target when known."""

    def __init__(self, message: str, *, host: str | None = None, port: int | None = None):
        super().__init__(message)
        self.host = host
        self.port = port


class SSHUnreachable(SSHError):
    """TCP connect failed or timed out, or the connection dropped."""

    transient = True


class HostKeyMismatch(SSHError):
    """The server's host key is not in the trusted known_hosts (unknown or changed key)."""

    transient = False


class SSHAuthFailed(SSHError):
    """The server rejected our user/key."""

    transient = False


class SSHCommandTimeout(SSHError):
    """A remote command did not finish in time; the channel was closed and the command killed."""

    transient = True

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        port: int | None = None,
        command: str = "",
        timeout: float = 0.0,
    ):
        super().__init__(message, host=host, port=port)
        self.command = command
        self.timeout = timeout


class SSHCommandFailed(SSHError):
    """A remote command exited non-zero (or was killed by a signal)."""

    transient = False

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        port: int | None = None,
        command: str = "",
        exit_status: int | None = None,
        stderr_tail: str = "",
        stdout_tail: str = "",
        outcome: str = "",
    ):
        super().__init__(message, host=host, port=port)
        self.command = command
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail
        self.stdout_tail = stdout_tail
        # How it ended and what it said, without the command and host ("exited 1: <stderr>"),
        # for callers that name the command themselves.
        self.outcome = outcome or message


# ----------------------------------------------------------------------------------- HAProxy


class HAProxyError(WSO2OperatorError):
    """Base for HAProxy runtime-API failures. ``lb`` names the load balancer when known."""

    def __init__(self, message: str, *, lb: str | None = None):
        super().__init__(message)
        self.lb = lb


class LBUnreachable(HAProxyError):
    """The admin socket could not be reached or did not answer in time."""

    transient = True


class LBProtocolError(HAProxyError):
    """HAProxy answered something we cannot parse (e.g. a truncated reply)."""

    transient = True


class HAProxyCommandError(HAProxyError):
    """HAProxy rejected a command with an error text. ``reply`` holds that text."""

    transient = False

    def __init__(self, message: str, *, lb: str | None = None, command: str = "", reply: str = ""):
        super().__init__(message, lb=lb)
        self.command = command
        self.reply = reply


class NoSuchBackend(HAProxyCommandError):
    def __init__(
        self,
        message: str,
        *,
        lb: str | None = None,
        backend: str = "",
        command: str = "",
        reply: str = "",
    ):
        super().__init__(message, lb=lb, command=command, reply=reply)
        self.backend = backend


class NoSuchServer(HAProxyCommandError):
    def __init__(
        self,
        message: str,
        *,
        lb: str | None = None,
        backend: str = "",
        servers: Sequence[str] = (),
        command: str = "",
        reply: str = "",
    ):
        super().__init__(message, lb=lb, command=command, reply=reply)
        self.backend = backend
        self.servers = list(servers)


class PermissionDenied(HAProxyCommandError):
    """HAProxy answered ``Permission denied`` (the socket's level is too low)."""


class NotAdmin(PermissionDenied):
    """The stats socket is not at ``level admin``; ``level`` holds what it reports."""

    def __init__(self, message: str, *, lb: str | None = None, level: str = ""):
        super().__init__(message, lb=lb, command="show cli level", reply=level)
        self.level = level


class UnknownCommand(HAProxyCommandError):
    pass


class NoHealthCheck(HAProxyError):
    """The server has no health check, so a safe re-enable cannot prove it is healthy."""

    transient = False


class LBStateMismatch(HAProxyError):
    """A state change was accepted but reading it back did not show it (someone else changed it,
    or the LB reloaded in between)."""

    transient = True


class DrainTimeout(HAProxyError):
    """Sessions were still open at the drain deadline; the server was left in DRAIN.

    ``sessions`` maps LB name to ``scur + qcur`` at the deadline. Transient: the sessions may end
    later, so a retry can succeed.
    """

    transient = True

    def __init__(
        self,
        message: str,
        *,
        lb: str | None = None,
        backend: str = "",
        server: str = "",
        sessions: Mapping[str, int] | None = None,
    ):
        super().__init__(message, lb=lb)
        self.backend = backend
        self.server = server
        self.sessions = dict(sessions or {})


class ReenableTimeout(HAProxyError):
    """No fresh passing health check was seen on every LB before the deadline. The server was
    left in DRAIN (or MAINT), never READY. ``states`` maps LB name to the last raw status seen.
    Transient: the node may become healthy later."""

    transient = True

    def __init__(
        self,
        message: str,
        *,
        lb: str | None = None,
        backend: str = "",
        server: str = "",
        states: Mapping[str, str] | None = None,
    ):
        super().__init__(message, lb=lb)
        self.backend = backend
        self.server = server
        self.states = dict(states or {})


__all__ = [
    "ConfigError",
    "DrainTimeout",
    "HAProxyCommandError",
    "HAProxyError",
    "HostKeyMismatch",
    "LBProtocolError",
    "LBStateMismatch",
    "LBUnreachable",
    "NoHealthCheck",
    "NoSuchBackend",
    "NoSuchServer",
    "NotAdmin",
    "PermissionDenied",
    "ReenableTimeout",
    "SSHAuthFailed",
    "SSHCommandFailed",
    "SSHCommandTimeout",
    "SSHError",
    "SSHUnreachable",
    "UnknownCommand",
    "WSO2OperatorError",
]

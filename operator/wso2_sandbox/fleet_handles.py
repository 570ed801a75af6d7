"""The handles a fleet gives out: one per VM node and one per HAProxy LB host.

Kept apart from `fleet.py`, which starts and stops the processes behind them. A handle only reads
and writes its host's files and admin socket directly, so one rebuilt from fleet.json (`Fleet.load`)
works the same as the one the fleet started with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wso2_sandbox import fleet_procs
from wso2_sandbox.fleet_files import BACKEND
from wso2_sandbox.standin import Fault, parse_faults

# faults.json: {"<version>" or "*": {"errorPercent": .., "errorStatus": .., "latencyMs": ..}}
FaultsJson = Mapping[str, Mapping[str, float | int]]


class FleetError(RuntimeError):
    """The fleet could not be started or stopped cleanly."""


@dataclass
class NodeHandle:
    """One VM node. Reads and writes its files directly (the test's view of the VM's disk)."""

    name: str
    host: str
    ssh_port: int
    http_port: int
    dir: str

    def _path(self, *parts: str) -> Path:
        return Path(self.dir, *parts)

    def events(self) -> list[dict[str, Any]]:
        """The node's event log, oldest first."""
        try:
            text = self._path("log", "events.jsonl").read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def installed_version(self) -> str:
        try:
            return self._path("opt", "VERSION").read_text().strip()
        except FileNotFoundError:
            return ""

    def install_count(self) -> int:
        try:
            return int(self._path("log", "installs.count").read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def set_fail_install(self, versions: Iterable[str]) -> None:
        """Make `wso2ctl install` fail for these versions (an empty list clears it)."""
        write_atomic(self._path("etc", "fail-install"), "".join(f"{v}\n" for v in versions))

    def faults(self) -> dict[str, dict[str, float | int]]:
        """The node's faults.json, normalised (every key present); {} when it has none."""
        try:
            raw = json.loads(self._path("etc", "faults.json").read_text())
        except FileNotFoundError:
            return {}
        return {v: f.as_json() for v, f in parse_faults(raw).items()}

    def set_faults(self, faults: FaultsJson) -> None:
        """Replace the node's per-version faults ({} clears them); the running stand-in picks
        them up on its next request. Raises ValueError (and writes nothing) on a bad mapping."""
        write_faults(self._path("etc", "faults.json"), faults)

    def set_version_fault(
        self,
        version: str,
        *,
        error_percent: float = 0.0,
        error_status: int = 500,
        latency_ms: float = 0.0,
    ) -> None:
        """Add or replace one version's entry ("*" = every version without its own entry)."""
        fault = Fault(float(error_percent), error_status, float(latency_ms))
        self.set_faults({**self.faults(), version: fault.as_json()})

    def clear_faults(self, version: str | None = None) -> None:
        """Remove one version's entry, or all of them."""
        keep = {} if version is None else {k: v for k, v in self.faults().items() if k != version}
        self.set_faults(keep)

    def fail_install_versions(self) -> list[str]:
        """The versions `wso2ctl install` fails for on this node (see set_fail_install)."""
        try:
            text = self._path("etc", "fail-install").read_text()
        except FileNotFoundError:
            return []
        return [v.strip() for v in text.splitlines() if v.strip()]

    def set_timing(
        self,
        boot_seconds: float | None = None,
        ready_gap_seconds: float | None = None,
        install_seconds: float | None = None,
    ) -> None:
        """Change the timing used by the next install / start on this node."""
        path = self._path("etc", "standin.json")
        cfg = json.loads(path.read_text())
        for key, value in (
            ("boot_seconds", boot_seconds),
            ("ready_gap_seconds", ready_gap_seconds),
            ("install_seconds", install_seconds),
        ):
            if value is not None:
                cfg[key] = float(value)
        write_atomic(path, json.dumps(cfg, indent=2) + "\n")

    def timing(self) -> dict[str, float]:
        return json.loads(self._path("etc", "standin.json").read_text())

    def standin_pid(self) -> int | None:
        """Pid of the running stand-in, or None."""
        try:
            pid = int(self._path("run", "standin.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if fleet_procs.is_alive(pid) else None

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.http_port}{path}"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "ssh_port": self.ssh_port,
            "http_port": self.http_port,
            "dir": self.dir,
        }


@dataclass
class LBHandle:
    """One HAProxy LB host."""

    name: str
    host: str
    ssh_port: int
    frontend: tuple[str, int]
    socket: str
    operator_socket: str
    tcp_admin: tuple[str, int] | None
    dir: str
    backend: str = BACKEND

    def url(self, path: str = "/") -> str:
        return f"http://{self.frontend[0]}:{self.frontend[1]}{path}"

    def command(self, line: str, timeout: float = 5.0) -> str:
        """Send one command to the local admin socket and return HAProxy's raw reply."""
        return socket_command(self.socket, line, timeout)

    def servers(self, backend: str | None = None) -> dict[str, dict[str, str]]:
        """`show stat` rows of ``backend``'s servers by server name; without it, of every
        backend (a fleet's server names are unique: they are its node names)."""
        which = backend or "-1"
        return {row["svname"]: row for row in parse_stat(self.command(f"show stat {which} 4 -1"))}

    def worker_pid(self) -> int:
        """Pid of the HAProxy worker currently answering the admin socket."""
        m = re.search(r"^Pid: (\d+)$", self.command("show info"), re.M)
        if not m:
            raise FleetError(f"{self.name}: no Pid in 'show info'")
        return int(m.group(1))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "ssh_port": self.ssh_port,
            "frontend": f"{self.frontend[0]}:{self.frontend[1]}",
            "socket": self.socket,
            "operator_socket": self.operator_socket,
            "tcp_admin": f"{self.tcp_admin[0]}:{self.tcp_admin[1]}" if self.tcp_admin else None,
            "backend": self.backend,
            "dir": self.dir,
        }


def socket_command(path: str, line: str, timeout: float = 5.0) -> str:
    """One command on a HAProxy unix stats socket (non-interactive: HAProxy closes after reply)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def parse_stat(text: str) -> list[dict[str, str]]:
    """Parse `show stat` CSV by its header names (column positions change between versions)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise FleetError(f"unexpected 'show stat' reply: {text[:200]!r}")
    header = lines[0][2:].split(",")
    return [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:]]


def write_faults(path: Path, faults: FaultsJson) -> None:
    """Validate and write a faults.json atomically (a stand-in never reads half a file)."""
    parsed = parse_faults(faults)
    write_atomic(path, json.dumps({v: f.as_json() for v, f in parsed.items()}, indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

"""What both sandbox fleets do alike: start and stop, the files of every "VM", the processes.

`wso2_sandbox.fleet.Fleet` (a few nodes, a stand-in process each) and
`wso2_sandbox.fleet_scale.ScaleFleet` (many clusters, shared stand-in hosts) differ in how they
lay out their hosts and run their products; the rest lives here once:

- the lifecycle: validate, prepare the base directory, plan, write files, launch, and on any
  failure stop what was started; `stop()` kills every process carrying the fleet's marker;
- every host's sshd (host key, known_hosts, sshd_config with the VM's environment), every
  node's product files and `wso2ctl`, every LB's HAProxy;
- waiting for sshd, the products and the LBs to be ready.

A subclass provides `_validate`, `_clear_leftovers`, `_plan`, `_write_files` and `_launch`.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from wso2_sandbox import fleet_procs
from wso2_sandbox.fleet_files import sshd_config, wso2ctl_script
from wso2_sandbox.fleet_handles import (
    FleetError,
    LBHandle,
    NodeHandle,
    parse_stat,
    write_atomic,
    write_faults,
)

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
HAPROXY = "/usr/sbin/haproxy"
SSH_PORT = 22
HTTP_PORT = 8243
# sun_path holds 107 bytes, and HAProxy first binds "<path>.<pid>.tmp" and renames it, so the
# configured path needs about 20 bytes of headroom.
MAX_SOCKET_PATH = 80
# Set to 1 to keep a temporary fleet directory (logs, event files) after stop().
KEEP_ENV = "W2F_KEEP"
KEYGEN_PARALLEL = 32

Host = NodeHandle | LBHandle


@dataclass
class ProductConfig:
    """What both fleets' configs say about the base directory and the products on the nodes."""

    initial_version: str = "1.0.0"
    boot_seconds: float = 3.0
    ready_gap_seconds: float = 2.0
    install_seconds: float = 0.5
    base_dir: str | None = None
    # Per-version faults of the stand-in (etc/faults.json on every node; see standin.parse_faults).
    faults: dict[str, dict[str, float | int]] | None = None


class FleetBase:
    """The lifecycle and the per-host files and processes shared by the sandbox fleets."""

    # Names the temporary base directory and the host keys' comments.
    PREFIX = "w2f-"
    START_TIMEOUT = 30.0

    def __init__(self, config: ProductConfig, *, stop_at_exit: bool = True) -> None:
        self.config = config
        self.base_dir = ""
        self.description: dict[str, Any] = {}
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._pids: dict[str, int] = {}
        self._logs: dict[str, str] = {}
        self._socket_dir: str | None = None
        self._owns_base = False
        self._stop_at_exit = stop_at_exit
        self._state = "new"  # new -> running -> stopped

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start everything; returns once every product is ready and every LB sees it UP."""
        if self._state == "running":
            return self
        if self._state == "stopped":
            raise FleetError(
                f"a stopped fleet cannot be started again; create a new {type(self).__name__}"
            )
        self._validate()
        t0 = time.monotonic()
        self._state = "running"
        if self._stop_at_exit:
            atexit.register(self.stop)
        try:
            self._prepare_base()
            self._plan()
            self._write_files()
            self._launch()
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        self.description["start_seconds"] = round(self.start_seconds, 3)
        write_atomic(
            Path(self.base_dir, "fleet.json"), json.dumps(self.description, indent=2) + "\n"
        )
        return self

    def stop(self) -> None:
        """Kill every process of the fleet and wait until none is left. Idempotent."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        t0 = time.monotonic()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        left = fleet_procs.kill_fleet(self.base_dir, self._leaders()) if self.base_dir else set()
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=5)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self.base_dir:
            if self._owns_base and os.environ.get(KEEP_ENV) != "1":
                shutil.rmtree(self.base_dir, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.base_dir, "fleet.json"))
        self.stop_seconds = time.monotonic() - t0
        if left:
            raise FleetError(f"fleet processes survived SIGKILL: {sorted(left)}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._state == "running"

    def processes(self) -> set[int]:
        """Pids of every live process of this fleet, SSH sessions included (for leak checks)."""
        if not self.base_dir:
            return set()
        return fleet_procs.fleet_processes(self.base_dir, self._leaders())

    def _leaders(self) -> set[int]:
        return set(self._pids.values())

    # ----------------------------------------------------------------- the subclass's steps

    def _validate(self) -> None:
        raise NotImplementedError

    def _clear_leftovers(self) -> None:
        """Make an existing base_dir ready for a new fleet (an earlier one's files must not
        mix in)."""
        raise NotImplementedError

    def _plan(self) -> None:
        raise NotImplementedError

    def _write_files(self) -> None:
        raise NotImplementedError

    def _launch(self) -> None:
        raise NotImplementedError

    def _prepare_base(self) -> None:
        if self.config.base_dir is None:
            self.base_dir = tempfile.mkdtemp(prefix=self.PREFIX, dir="/tmp")
            self._owns_base = True
        else:
            self.base_dir = os.path.realpath(self.config.base_dir)
            self._clear_leftovers()
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir

    # ----------------------------------------------------------------- files

    def _write_ssh_keys(self, ssh: Mapping[str, str], hosts: list[Host]) -> dict[str, str]:
        """The client key, every host's host key, authorized_keys and known_hosts; returns
        who -> private key path."""
        os.makedirs(os.path.dirname(ssh["private_key_path"]), mode=0o700)
        keys = {"client": ssh["private_key_path"]}
        for h in hosts:
            os.makedirs(f"{h.dir}/sshd")
            keys[h.name] = f"{h.dir}/sshd/ssh_host_ed25519_key"
        _keygen(keys, self.PREFIX)
        Path(ssh["authorized_keys_path"]).write_text(Path(ssh["public_key_path"]).read_text())
        known = []
        for h in hosts:
            key = " ".join(Path(f"{keys[h.name]}.pub").read_text().split()[:2])
            who = h.host if h.ssh_port == 22 else f"[{h.host}]:{h.ssh_port}"
            known.append(f"{who} {key}\n")
        Path(ssh["known_hosts_path"]).write_text("".join(known))
        return keys

    def _write_node_files(self, n: NodeHandle, *, standin_endpoint: str | None = None) -> None:
        """A node's "disk": timing, installed version, install count, faults and `wso2ctl`."""
        c = self.config
        for sub in ("bin", "etc", "opt", "run", "log"):
            os.makedirs(f"{n.dir}/{sub}", exist_ok=True)
        timing = {
            "boot_seconds": c.boot_seconds,
            "ready_gap_seconds": c.ready_gap_seconds,
            "install_seconds": c.install_seconds,
        }
        Path(n.dir, "etc", "standin.json").write_text(json.dumps(timing, indent=2) + "\n")
        Path(n.dir, "opt", "VERSION").write_text(c.initial_version + "\n")
        Path(n.dir, "log", "installs.count").write_text("0\n")
        write_faults(Path(n.dir, "etc", "faults.json"), c.faults or {})
        ctl = Path(n.dir, "bin", "wso2ctl")
        ctl.write_text(
            wso2ctl_script(
                node_home=n.dir,
                node_name=n.name,
                node_addr=n.host,
                http_port=n.http_port,
                python=sys.executable,
                standin_endpoint=standin_endpoint,
            )
        )
        ctl.chmod(0o755)

    def _write_sshd_configs(
        self, ssh: Mapping[str, str], hosts: list[Host], keys: Mapping[str, str]
    ) -> None:
        for h in hosts:
            home_var = "NODE_HOME" if isinstance(h, NodeHandle) else "LB_HOME"
            # A VM's login user has its own home. Without one, bash (started by sshd for every
            # command) would source this machine's ~/.bashrc: ~0.1 s a command with pyenv there,
            # which would be charged to the operator and the seed alike.
            Path(h.dir, "home").mkdir(exist_ok=True)
            env = {
                "HOME": f"{h.dir}/home",
                "PATH": f"{h.dir}/bin:/usr/local/bin:/usr/bin:/bin",
                home_var: h.dir,
                fleet_procs.MARKER_VAR: self.base_dir,
            }
            Path(h.dir, "sshd", "sshd_config").write_text(
                sshd_config(
                    name=h.name,
                    host=h.host,
                    port=h.ssh_port,
                    host_key=keys[h.name],
                    pid_file=f"{h.dir}/sshd/sshd.pid",
                    authorized_keys=ssh["authorized_keys_path"],
                    env=env,
                )
            )

    # ----------------------------------------------------------------- processes

    def _env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env[fleet_procs.MARKER_VAR] = self.base_dir
        env.update(extra)
        return env

    def _spawn(self, key: str, argv: list[str], log_path: str, cwd: str) -> None:
        # Own session per child: the fleet survives the process that started it (CLI `up`), and
        # stop() can kill each child's whole process group.
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=cwd,
                start_new_session=True,
            )
        self._procs[key] = proc
        self._pids[key] = proc.pid
        self._logs[key] = log_path

    def _check_children(self) -> None:
        for key, proc in self._procs.items():
            if proc.poll() is not None:
                raise FleetError(
                    f"{key} exited with {proc.returncode} during start: {tail(self._logs[key])}"
                )

    def _spawn_sshds(self, hosts: Iterable[Host]) -> None:
        for h in hosts:
            argv = [SSHD, "-D", "-e", "-f", f"{h.dir}/sshd/sshd_config"]
            self._spawn(f"{h.name}.sshd", argv, f"{h.dir}/sshd/sshd.log", h.dir)

    def _spawn_haproxies(self, lbs: Iterable[LBHandle]) -> None:
        for lb in lbs:
            argv = [HAPROXY, "-W", "-db", "-f", f"{lb.dir}/haproxy.cfg"]
            self._spawn(f"{lb.name}.haproxy", argv, f"{lb.dir}/haproxy.log", lb.dir)

    def _wait_for_products(
        self,
        nodes: Iterable[NodeHandle],
        *,
        probe_timeout: float = 1.0,
        check_node: Callable[[NodeHandle], None] | None = None,
    ) -> None:
        """Until every node's /health answers 200; `check_node` may raise for a node that is
        not (to fail fast on a product that died)."""
        pending = {n.name: n for n in nodes}

        def ready() -> bool:
            for name, n in list(pending.items()):
                if http_status(n.host, n.http_port, "/health", timeout=probe_timeout) == 200:
                    del pending[name]
                elif check_node:
                    check_node(n)
            return not pending

        poll("stand-ins to be ready", ready, self.START_TIMEOUT, self._check_children)

    def _wait_for_sshd(self, hosts: Iterable[Host]) -> None:
        pending = {h.name: h for h in hosts}

        def accepting() -> bool:
            for name, h in list(pending.items()):
                if ssh_banner(h.host, h.ssh_port):
                    del pending[name]
            return not pending

        poll("sshd to accept connections", accepting, self.START_TIMEOUT, self._check_children)

    def _wait_for_lbs(self, want: Mapping[str, tuple[LBHandle, Mapping[str, set[str]]]]) -> None:
        """Until each LB (by name: its handle, backend -> server names) holds exactly those
        servers in each backend, every one UP after a passed check."""
        pending = dict(want)

        def steady() -> bool:
            # Servers start out UP before any check has run, so insist on a passed check too.
            for name, (lb, backends) in list(pending.items()):
                try:
                    rows = lb_servers(lb)
                except (OSError, FleetError):
                    continue
                if all(
                    set(rows.get(be, {})) == names
                    and all(
                        r["status"] == "UP" and r["check_status"].lstrip("* ") == "L7OK"
                        for r in rows[be].values()
                    )
                    for be, names in backends.items()
                ):
                    del pending[name]
            return not pending

        poll("every LB to see every server UP", steady, self.START_TIMEOUT, self._check_children)


# --------------------------------------------------------------------- helpers


def lb_servers(lb: LBHandle) -> dict[str, dict[str, dict[str, str]]]:
    """`show stat` of every backend of one LB host in one command: backend -> server -> row."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for row in parse_stat(lb.command("show stat -1 4 -1")):
        out.setdefault(row["pxname"], {})[row["svname"]] = row
    return out


def _keygen(keys: Mapping[str, str], prefix: str) -> None:
    """ssh-keygen for every host, KEYGEN_PARALLEL at a time (one run is a few ms)."""
    items = list(keys.items())
    for i in range(0, len(items), KEYGEN_PARALLEL):
        gens = {
            who: subprocess.Popen(
                [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"{prefix}{who}", "-f", path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for who, path in items[i : i + KEYGEN_PARALLEL]
        }
        for who, proc in gens.items():
            _, err = proc.communicate(timeout=30)
            if proc.returncode:
                raise FleetError(f"ssh-keygen for {who} failed: {err.decode().strip()}")


def tail(path: str, n: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:].strip() or "(empty log)"
    except OSError:
        return f"(no log at {path})"


def poll(
    what: str,
    done: Callable[[], bool],
    timeout: float,
    check: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check:
            check()
        if done():
            return
        if time.monotonic() > deadline:
            raise FleetError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def bind_errno(host: str, port: int) -> int | None:
    """None if (host, port) can be bound right now, else the errno."""
    # SO_REUSEADDR like sshd, HAProxy and the stand-in: TIME_WAIT leftovers don't count as busy.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno
    return None


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_or_free(host: str, port: int) -> int:
    return port if bind_errno(host, port) is None else free_port(host)


def http_status(host: str, port: int, path: str, timeout: float = 1.0) -> int | None:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def ssh_banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False

"""The local fleet: WSO2 "VMs" and HAProxy LBs as real processes on loopback addresses.

Each node is a real OpenSSH sshd on its own 127.A.B.x address with its own directory standing for
the VM's disk, and a product stand-in (`wso2_sandbox.standin`) on port 8243 that the operator
stops, installs and starts over SSH with `<node>/bin/wso2ctl`. Each LB is a real HAProxy 2.6 in
master-worker mode with admin sockets, plus its own sshd so the socket can be reached over SSH.

    with Fleet(FleetConfig(nodes=3, lbs=2)) as fleet:
        print(fleet.description)

    python -m wso2_sandbox.fleet up --dir .sandbox/fleet     # detached; writes fleet.json
    python -m wso2_sandbox.fleet down --dir .sandbox/fleet
    python -m wso2_sandbox.fleet faults --dir .sandbox/fleet 2.0.0 --error-percent 10  # bad build
    python -m wso2_sandbox.fleet fail-install node2 4.0.0    # its `wso2ctl install` of 4.0.0 fails
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import getpass
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wso2_sandbox import fleet_procs
from wso2_sandbox.fleet_files import BACKEND, haproxy_config, sshd_config, wso2ctl_script
from wso2_sandbox.fleet_handles import (
    FaultsJson,
    FleetError,
    LBHandle,
    NodeHandle,
    write_atomic,
    write_faults,
)
from wso2_sandbox.standin import parse_faults

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
HAPROXY = "/usr/sbin/haproxy"
SSH_PORT = 22
HTTP_PORT = 8243
FRONTEND_PORT = 80
TCP_ADMIN_PORT = 9999
# sun_path holds 107 bytes, and HAProxy first binds "<path>.<pid>.tmp" and renames it, so the
# configured path needs about 20 bytes of headroom.
MAX_SOCKET_PATH = 80
START_TIMEOUT = 30.0
STANDIN_SOURCE = Path(__file__).with_name("standin.py")
# Set to 1 to keep a temporary fleet directory (logs, event files) after stop().
KEEP_ENV = "W2F_KEEP"


@dataclass
class FleetConfig:
    nodes: int = 3
    lbs: int = 2
    initial_version: str = "1.0.0"
    boot_seconds: float = 3.0
    ready_gap_seconds: float = 2.0
    install_seconds: float = 0.5
    tcp_admin_lbs: tuple[int, ...] = ()  # indexes of LBs that also expose a TCP admin socket
    base_dir: str | None = None
    # Per-version faults of the stand-in (etc/faults.json on every node; see standin.parse_faults).
    faults: dict[str, dict[str, float | int]] | None = None
    # More than 1: the nodes are split in order into that many backends on every LB, one per
    # cluster, as at a site where many clusters share one LB pair (see backend_groups).
    backends: int = 1


class Fleet:
    """N nodes and L LBs on a random loopback /24. Synchronous: from async code, use a thread."""

    def __init__(self, config: FleetConfig | None = None, *, stop_at_exit: bool = True) -> None:
        self.config = config or FleetConfig()
        self.description: dict[str, Any] = {}
        self.nodes: list[NodeHandle] = []
        self.lbs: list[LBHandle] = []
        self.base_dir = ""
        self.start_seconds: float | None = None
        self._user = getpass.getuser()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._pids: dict[str, int] = {}
        self._socket_dir: str | None = None
        self._owns_base = False
        self._stop_at_exit = stop_at_exit
        self._state = "new"  # new -> running -> stopped

    # ----------------------------------------------------------------- public API

    def start(self) -> Fleet:
        """Start everything; returns once every stand-in is ready and every LB sees it UP."""
        if self._state == "running":
            return self
        if self._state == "stopped":
            raise FleetError("a stopped fleet cannot be started again; create a new Fleet")
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
        self._write_description()
        return self

    def stop(self) -> None:
        """Kill every process of the fleet and wait until none is left. Idempotent."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
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
        if left:
            raise FleetError(f"fleet processes survived SIGKILL: {sorted(left)}")

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._state == "running"

    def node(self, name: str) -> NodeHandle:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in this fleet")

    def lb(self, name: str) -> LBHandle:
        for lb in self.lbs:
            if lb.name == name:
                return lb
        raise KeyError(f"no LB {name!r} in this fleet")

    def set_faults(self, faults: FaultsJson, nodes: Iterable[str] | None = None) -> None:
        """Replace the per-version faults on every node (or the named ones); {} clears them."""
        parse_faults(faults)  # all or nothing: a bad mapping must not reach some nodes only
        for n in self._select(nodes):
            n.set_faults(faults)

    def set_version_fault(
        self,
        version: str,
        *,
        error_percent: float = 0.0,
        error_status: int = 500,
        latency_ms: float = 0.0,
        nodes: Iterable[str] | None = None,
    ) -> None:
        """Add or replace one version's fault on every node (or the named ones)."""
        for n in self._select(nodes):
            n.set_version_fault(
                version,
                error_percent=error_percent,
                error_status=error_status,
                latency_ms=latency_ms,
            )

    def clear_faults(self, version: str | None = None, nodes: Iterable[str] | None = None) -> None:
        """Remove one version's fault, or all faults, on every node (or the named ones)."""
        for n in self._select(nodes):
            n.clear_faults(version)

    def _select(self, nodes: Iterable[str] | None) -> list[NodeHandle]:
        return list(self.nodes) if nodes is None else [self.node(name) for name in nodes]

    def reload_lb(self, index: int) -> None:
        """Reload LB `index` like `systemctl reload haproxy` (SIGUSR2 to the master).

        Runtime state such as MAINT is lost. Returns once a new worker answers the admin socket.
        """
        lb = self.lbs[index]
        master = self._pids[f"{lb.name}.haproxy"]
        old = lb.worker_pid()
        os.kill(master, signal.SIGUSR2)

        def new_worker() -> bool:
            try:
                return lb.worker_pid() != old
            except (OSError, FleetError):
                return False

        _poll(f"{lb.name} to reload", new_worker, 15.0)

    def client_private_key(self) -> bytes:
        return Path(self.description["ssh"]["private_key_path"]).read_bytes()

    def known_hosts(self) -> str:
        return Path(self.description["ssh"]["known_hosts_path"]).read_text()

    def ssh_argv(self, host_name: str, command: str) -> list[str]:
        """argv for OpenSSH's client to run `command` on a node or LB host with strict host keys."""
        h = self._host(host_name)
        ssh = self.description["ssh"]
        return [
            "ssh",
            "-F", "/dev/null",
            "-i", ssh["private_key_path"],
            "-o", f"UserKnownHostsFile={ssh['known_hosts_path']}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=10",
            "-p", str(h.ssh_port),
            f"{ssh['user']}@{h.host}",
            command,
        ]  # fmt: skip

    def is_alive(self) -> bool:
        """True if every recorded sshd and HAProxy master is still running."""
        pids = set(self._pids.values())
        return bool(pids) and pids <= fleet_procs.fleet_processes(self.base_dir, pids)

    def processes(self) -> set[int]:
        """Pids of every live process of this fleet, SSH sessions included (for leak checks)."""
        if not self.base_dir:
            return set()
        return fleet_procs.fleet_processes(self.base_dir, self._leaders())

    def _leaders(self) -> set[int]:
        leaders = set(self._pids.values())
        leaders |= {p for n in self.nodes if (p := n.standin_pid()) is not None}
        return leaders

    @classmethod
    def load(cls, base_dir: str | os.PathLike[str]) -> Fleet:
        """Re-attach to a fleet from its fleet.json (e.g. to stop it from another process)."""
        path = Path(base_dir, "fleet.json")
        try:
            desc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FleetError(f"no fleet recorded in {base_dir} ({path} is missing)") from None
        raw = dict(desc["config"])
        raw["tcp_admin_lbs"] = tuple(raw.get("tcp_admin_lbs", ()))
        fleet = cls(FleetConfig(**raw), stop_at_exit=False)
        fleet._attach(desc)
        return fleet

    # ----------------------------------------------------------------- start, step by step

    def _validate(self) -> None:
        c = self.config
        if c.nodes < 1 or c.nodes > 80 or c.lbs < 0 or c.lbs > 80:
            raise FleetError("need 1..80 nodes and 0..80 LBs")
        if not 1 <= c.backends <= c.nodes:
            raise FleetError("need 1..nodes backends")
        if any(i < 0 or i >= c.lbs for i in c.tcp_admin_lbs):
            raise FleetError(f"tcp_admin_lbs {c.tcp_admin_lbs} out of range for {c.lbs} LBs")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", c.initial_version):
            raise FleetError(f"invalid initial_version {c.initial_version!r}")
        try:
            parse_faults(c.faults or {})
        except ValueError as e:
            raise FleetError(f"invalid faults: {e}") from None

    def _prepare_base(self) -> None:
        c = self.config
        if c.base_dir is None:
            self.base_dir = tempfile.mkdtemp(prefix="w2f-", dir="/tmp")
            self._owns_base = True
        else:
            self.base_dir = os.path.realpath(c.base_dir)
            os.makedirs(self.base_dir, exist_ok=True)
            # Leftovers of an earlier fleet in the same place would mix old keys and logs in.
            for entry in os.listdir(self.base_dir):
                if re.fullmatch(r"ssh|node\d+|lb\d+|fleet\.json", entry):
                    p = os.path.join(self.base_dir, entry)
                    if os.path.isdir(p):
                        shutil.rmtree(p)
                    else:
                        os.unlink(p)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir

    def _plan(self) -> None:
        c = self.config
        subnet, ports = _pick_subnet(c.nodes, c.lbs, set(c.tcp_admin_lbs))
        b = self.base_dir
        for i in range(1, c.nodes + 1):
            host = f"{subnet}.{10 + i}"
            self.nodes.append(
                NodeHandle(f"node{i}", host, ports[host]["ssh"], HTTP_PORT, f"{b}/node{i}")
            )
        if len(f"{b}/lb{c.lbs}/operator.sock") > MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="w2s-", dir="/tmp")
        for j in range(1, c.lbs + 1):
            host, name = f"{subnet}.{100 + j}", f"lb{j}"
            sdir = self._socket_dir or f"{b}/{name}"
            stem = f"{name}-" if self._socket_dir else ""
            tcp = (host, ports[host]["tcp_admin"]) if (j - 1) in c.tcp_admin_lbs else None
            self.lbs.append(
                LBHandle(
                    name=name,
                    host=host,
                    ssh_port=ports[host]["ssh"],
                    frontend=(host, ports[host]["frontend"]),
                    socket=f"{sdir}/{stem}haproxy.sock",
                    operator_socket=f"{sdir}/{stem}operator.sock",
                    tcp_admin=tcp,
                    dir=f"{b}/{name}",
                )
            )
        ssh_dir = f"{b}/ssh"
        self.description = {
            "base_dir": b,
            "subnet": f"{subnet}.0/24",
            "backend": BACKEND if c.backends == 1 else f"{BACKEND}_1",
            "backends": backend_groups([n.name for n in self.nodes], c.backends),
            "nodes": [n.describe() for n in self.nodes],
            "lbs": [lb.describe() for lb in self.lbs],
            "ssh": {
                "user": self._user,
                "private_key_path": f"{ssh_dir}/id_ed25519",
                "public_key_path": f"{ssh_dir}/id_ed25519.pub",
                "known_hosts_path": f"{ssh_dir}/known_hosts",
                "authorized_keys_path": f"{ssh_dir}/authorized_keys",
            },
            "config": asdict(self.config),
            "socket_dir": self._socket_dir,
            "owns_base_dir": self._owns_base,
            "python": sys.executable,
            "pids": self._pids,
        }

    def _hosts(self) -> list[NodeHandle | LBHandle]:
        return [*self.nodes, *self.lbs]

    def _host(self, name: str) -> NodeHandle | LBHandle:
        for h in self._hosts():
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in this fleet")

    def _write_files(self) -> None:
        ssh = self.description["ssh"]
        os.makedirs(os.path.dirname(ssh["private_key_path"]), mode=0o700)
        keys = {"client": ssh["private_key_path"]}
        for h in self._hosts():
            os.makedirs(f"{h.dir}/sshd")
            keys[h.name] = f"{h.dir}/sshd/ssh_host_ed25519_key"
        # ssh-keygen in parallel: one run is a few ms, but there are N+L+1 of them.
        gens = {
            who: subprocess.Popen(
                [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"w2f-{who}", "-f", path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for who, path in keys.items()
        }
        for who, proc in gens.items():
            _, err = proc.communicate(timeout=30)
            if proc.returncode:
                raise FleetError(f"ssh-keygen for {who} failed: {err.decode().strip()}")

        pub = Path(ssh["public_key_path"]).read_text()
        Path(ssh["authorized_keys_path"]).write_text(pub)
        kh = []
        for h in self._hosts():
            key = " ".join(Path(f"{keys[h.name]}.pub").read_text().split()[:2])
            who = h.host if h.ssh_port == 22 else f"[{h.host}]:{h.ssh_port}"
            kh.append(f"{who} {key}\n")
        Path(ssh["known_hosts_path"]).write_text("".join(kh))

        c = self.config
        for n in self.nodes:
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
            shutil.copyfile(STANDIN_SOURCE, f"{n.dir}/opt/standin.py")
            ctl = Path(n.dir, "bin", "wso2ctl")
            ctl.write_text(
                wso2ctl_script(
                    node_home=n.dir,
                    node_name=n.name,
                    node_addr=n.host,
                    http_port=n.http_port,
                    python=sys.executable,
                )
            )
            ctl.chmod(0o755)
        for lb in self.lbs:
            os.makedirs(f"{lb.dir}/bin", exist_ok=True)
            Path(lb.dir, "haproxy.cfg").write_text(
                haproxy_config(
                    name=lb.name,
                    frontend=lb.frontend,
                    admin_socket=lb.socket,
                    operator_socket=lb.operator_socket,
                    tcp_admin=lb.tcp_admin,
                    servers=[(n.name, n.host, n.http_port) for n in self.nodes],
                    backends=self.description["backends"],
                )
            )
        for h in self._hosts():
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

    def _check_children(self) -> None:
        for key, proc in self._procs.items():
            if proc.poll() is not None:
                name, what = key.split(".")
                log = (
                    f"{self._host(name).dir}/sshd/sshd.log"
                    if what == "sshd"
                    else f"{self._host(name).dir}/haproxy.log"
                )
                raise FleetError(f"{key} exited with {proc.returncode} during start: {_tail(log)}")

    def _launch(self) -> None:
        for h in self._hosts():
            self._spawn(
                f"{h.name}.sshd",
                [SSHD, "-D", "-e", "-f", f"{h.dir}/sshd/sshd_config"],
                f"{h.dir}/sshd/sshd.log",
                h.dir,
            )
        # The first boot skips the simulated boot delay (STANDIN_INSTANT_BOOT): nobody watches it,
        # and the fleet should reach its steady state fast.
        starts = {
            n.name: subprocess.Popen(
                [f"{n.dir}/bin/wso2ctl", "start"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(NODE_HOME=n.dir, STANDIN_INSTANT_BOOT="1"),
                cwd=n.dir,
            )
            for n in self.nodes
        }
        for name, proc in starts.items():
            out, err = proc.communicate(timeout=30)
            if proc.returncode:
                raise FleetError(f"wso2ctl start on {name} failed: {(err or out).decode()}")

        pending = {n.name for n in self.nodes}

        def standins_ready() -> bool:
            for n in [self.node(name) for name in pending]:
                if _http_status(n.host, n.http_port, "/health") == 200:
                    pending.discard(n.name)
                elif n.standin_pid() is None:
                    raise FleetError(
                        f"stand-in on {n.name} died: {_tail(f'{n.dir}/log/standin.log')}"
                    )
            return not pending

        _poll("stand-ins to be ready", standins_ready, START_TIMEOUT, self._check_children)

        # HAProxy starts after the stand-ins so its first health checks already pass.
        for lb in self.lbs:
            self._spawn(
                f"{lb.name}.haproxy",
                [HAPROXY, "-W", "-db", "-f", f"{lb.dir}/haproxy.cfg"],
                f"{lb.dir}/haproxy.log",
                lb.dir,
            )
        pending_ssh = {h.name for h in self._hosts()}

        def sshd_accepting() -> bool:
            for name in list(pending_ssh):
                h = self._host(name)
                if _ssh_banner(h.host, h.ssh_port):
                    pending_ssh.discard(name)
            return not pending_ssh

        _poll("sshd to accept connections", sshd_accepting, START_TIMEOUT, self._check_children)
        pending_lbs = {lb.name for lb in self.lbs}
        want = {n.name for n in self.nodes}

        def lbs_steady() -> bool:
            # Servers start out UP before any check has run, so insist on a passed check too.
            for name in list(pending_lbs):
                try:
                    rows = self.lb(name).servers()
                except (OSError, FleetError):
                    continue
                if set(rows) == want and all(
                    r["status"] == "UP" and r["check_status"].lstrip("* ") == "L7OK"
                    for r in rows.values()
                ):
                    pending_lbs.discard(name)
            return not pending_lbs

        _poll("every LB to see every server UP", lbs_steady, START_TIMEOUT, self._check_children)

    def _write_description(self) -> None:
        write_atomic(
            Path(self.base_dir, "fleet.json"), json.dumps(self.description, indent=2) + "\n"
        )

    def _attach(self, desc: dict[str, Any]) -> None:
        self.description = desc
        self.base_dir = desc["base_dir"]
        self.nodes = [NodeHandle(**n) for n in desc["nodes"]]
        self.lbs = []
        for d in desc["lbs"]:
            fh, fp = d["frontend"].rsplit(":", 1)
            tcp = None
            if d.get("tcp_admin"):
                th, tp = d["tcp_admin"].rsplit(":", 1)
                tcp = (th, int(tp))
            self.lbs.append(
                LBHandle(
                    name=d["name"],
                    host=d["host"],
                    ssh_port=d["ssh_port"],
                    frontend=(fh, int(fp)),
                    socket=d["socket"],
                    operator_socket=d["operator_socket"],
                    tcp_admin=tcp,
                    dir=d["dir"],
                    backend=d.get("backend", BACKEND),
                )
            )
        self._pids = {k: int(v) for k, v in desc.get("pids", {}).items()}
        self.description["pids"] = self._pids
        self._socket_dir = desc.get("socket_dir")
        self._owns_base = bool(desc.get("owns_base_dir"))
        self.start_seconds = desc.get("start_seconds")
        self._state = "running"


# --------------------------------------------------------------------- helpers


def backend_groups(nodes: list[str], count: int) -> dict[str, list[str]]:
    """Backend name -> its nodes: all in BACKEND for one, else BACKEND_1..BACKEND_<count>
    holding consecutive, nearly equal shares."""
    if count <= 1:
        return {BACKEND: list(nodes)}
    size, extra = divmod(len(nodes), count)
    out, start = {}, 0
    for k in range(count):
        end = start + size + (1 if k < extra else 0)
        out[f"{BACKEND}_{k + 1}"] = nodes[start:end]
        start = end
    return out


def _tail(path: str, n: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:].strip() or "(empty log)"
    except OSError:
        return f"(no log at {path})"


def _poll(
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


def _bind_errno(host: str, port: int) -> int | None:
    """None if (host, port) can be bound right now, else the errno."""
    # SO_REUSEADDR like sshd, HAProxy and the stand-in: TIME_WAIT leftovers don't count as busy.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno
    return None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pick_subnet(
    nodes: int, lbs: int, tcp_admin: set[int]
) -> tuple[str, dict[str, dict[str, int]]]:
    """A random unused 127.A.B (A, B in 20..250) and the ports each host will use there.

    Every fleet listens on <subnet>.11:8243, so a busy node HTTP port means the subnet belongs to
    another fleet: try another. SSH, frontend and TCP-admin ports that cannot be bound (not root,
    or a wildcard listener elsewhere) fall back to a free port on that address.
    """
    rng = secrets.SystemRandom()
    for _ in range(100):
        subnet = f"127.{rng.randint(20, 250)}.{rng.randint(20, 250)}"
        node_hosts = [f"{subnet}.{10 + i}" for i in range(1, nodes + 1)]
        errs = [_bind_errno(h, HTTP_PORT) for h in node_hosts]
        if errno.EADDRINUSE in errs:
            continue
        for h, err in zip(node_hosts, errs, strict=True):
            if err is not None:
                raise FleetError(f"cannot bind {h}:{HTTP_PORT}: {os.strerror(err)}")
        ports: dict[str, dict[str, int]] = {}
        for h in node_hosts:
            ports[h] = {"http": HTTP_PORT, "ssh": _port_or_free(h, SSH_PORT)}
        for j in range(1, lbs + 1):
            h = f"{subnet}.{100 + j}"
            ports[h] = {
                "ssh": _port_or_free(h, SSH_PORT),
                "frontend": _port_or_free(h, FRONTEND_PORT),
            }
            if j - 1 in tcp_admin:
                ports[h]["tcp_admin"] = _port_or_free(h, TCP_ADMIN_PORT)
        return subnet, ports
    raise FleetError("found no unused loopback /24 in 100 tries")


def _port_or_free(host: str, port: int) -> int:
    return port if _bind_errno(host, port) is None else _free_port(host)


def _http_status(host: str, port: int, path: str, timeout: float = 1.0) -> int | None:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _ssh_banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


if __name__ == "__main__":
    # The CLI lives in fleet_cli; this keeps `python -m wso2_sandbox.fleet` its entry point.
    from wso2_sandbox.fleet_cli import main

    sys.exit(main())

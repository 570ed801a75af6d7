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

import errno
import getpass
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wso2_sandbox import fleet_procs
from wso2_sandbox.fleet_base import (
    HTTP_PORT,
    MAX_SOCKET_PATH,
    SSH_PORT,
    FleetBase,
    ProductConfig,
    bind_errno,
    poll,
    port_or_free,
    tail,
)
from wso2_sandbox.fleet_files import BACKEND, haproxy_config
from wso2_sandbox.fleet_handles import FaultsJson, FleetError, LBHandle, NodeHandle
from wso2_sandbox.standin import parse_faults

FRONTEND_PORT = 80
TCP_ADMIN_PORT = 9999
STANDIN_SOURCE = Path(__file__).with_name("standin.py")
REBOOT_SOURCE = Path(__file__).with_name("reboot_node.py")


@dataclass
class FleetConfig(ProductConfig):
    nodes: int = 3
    lbs: int = 2
    tcp_admin_lbs: tuple[int, ...] = ()  # indexes of LBs that also expose a TCP admin socket
    # More than 1: the nodes are split in order into that many backends on every LB, one per
    # cluster, as at a site where many clusters share one LB pair (see backend_groups).
    backends: int = 1


class Fleet(FleetBase):
    """N nodes and L LBs on a random loopback /24. Synchronous: from async code, use a thread."""

    config: FleetConfig

    def __init__(self, config: FleetConfig | None = None, *, stop_at_exit: bool = True) -> None:
        super().__init__(config or FleetConfig(), stop_at_exit=stop_at_exit)
        self.nodes: list[NodeHandle] = []
        self.lbs: list[LBHandle] = []
        self._user = getpass.getuser()

    # ----------------------------------------------------------------- public API

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

        poll(f"{lb.name} to reload", new_worker, 15.0)

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

    def _leaders(self) -> set[int]:
        # Each stand-in runs in a session of its own (wso2ctl's setsid).
        return super()._leaders() | {p for n in self.nodes if (p := n.standin_pid()) is not None}

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

    def _clear_leftovers(self) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        # Leftovers of an earlier fleet in the same place would mix old keys and logs in.
        for entry in os.listdir(self.base_dir):
            if re.fullmatch(r"ssh|node\d+|lb\d+|fleet\.json", entry):
                p = os.path.join(self.base_dir, entry)
                if os.path.isdir(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)

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
        keys = self._write_ssh_keys(ssh, self._hosts())
        for n in self.nodes:
            self._write_node_files(n)
            shutil.copyfile(STANDIN_SOURCE, f"{n.dir}/opt/standin.py")
            shutil.copyfile(REBOOT_SOURCE, f"{n.dir}/opt/reboot_node.py")
            Path(n.dir, "run", "boot_id").write_text(f"{uuid.uuid4()}\n")
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
        self._write_sshd_configs(ssh, self._hosts(), keys)

    def _launch(self) -> None:
        self._spawn_sshds(self._hosts())
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

        def died(n: NodeHandle) -> None:
            if n.standin_pid() is None:
                raise FleetError(f"stand-in on {n.name} died: {tail(f'{n.dir}/log/standin.log')}")

        self._wait_for_products(self.nodes, check_node=died)
        # HAProxy starts after the stand-ins so its first health checks already pass.
        self._spawn_haproxies(self.lbs)
        self._wait_for_sshd(self._hosts())
        backends = {be: set(names) for be, names in self.description["backends"].items()}
        self._wait_for_lbs({lb.name: (lb, backends) for lb in self.lbs})

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
        errs = [bind_errno(h, HTTP_PORT) for h in node_hosts]
        if errno.EADDRINUSE in errs:
            continue
        for h, err in zip(node_hosts, errs, strict=True):
            if err is not None:
                raise FleetError(f"cannot bind {h}:{HTTP_PORT}: {os.strerror(err)}")
        ports: dict[str, dict[str, int]] = {}
        for h in node_hosts:
            ports[h] = {"http": HTTP_PORT, "ssh": port_or_free(h, SSH_PORT)}
        for j in range(1, lbs + 1):
            h = f"{subnet}.{100 + j}"
            ports[h] = {
                "ssh": port_or_free(h, SSH_PORT),
                "frontend": port_or_free(h, FRONTEND_PORT),
            }
            if j - 1 in tcp_admin:
                ports[h]["tcp_admin"] = port_or_free(h, TCP_ADMIN_PORT)
        return subnet, ports
    raise FleetError("found no unused loopback /24 in 100 tries")


if __name__ == "__main__":
    # The CLI lives in fleet_cli; this keeps `python -m wso2_sandbox.fleet` its entry point.
    from wso2_sandbox.fleet_cli import main

    sys.exit(main())

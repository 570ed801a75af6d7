"""The scale fleet: many clusters of "VMs" at low cost, still real sshd and real HAProxy 2.6.

Shaped like a platform team's site: C clusters of N nodes each, behind one shared LB pair that
holds one frontend and one backend per cluster (`lb_mode="shared"`), or behind a pair of its own
per cluster (`lb_mode="per-cluster"`).

What stays real, per node: its own sshd on its own 127.x address with its own host key (so the
operator's connections, host-key checks and commands are what they would be on a VM), its own
directory standing for its disk, its own `wso2ctl`, and its own product listener on :8243 with
its own version, timing, faults and event log. What is shared to keep 200 nodes cheap: the
product stand-in process (`wso2_sandbox.standin_host`, one per `nodes_per_standin` nodes), which
`wso2ctl` drives over a local TCP control channel instead of spawning a process per node.

    with ScaleFleet(ScaleFleetConfig(clusters=50, nodes_per_cluster=4)) as fleet:
        for c in fleet.clusters:
            fleet_manifests(c.description(), name=c.name, ...)

    python -m wso2_sandbox.fleet_scale up --dir .sandbox/fleet-scale --clusters 50 --nodes 4
    python -m wso2_sandbox.fleet_scale down --dir .sandbox/fleet-scale
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import getpass
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wso2_sandbox import fleet_procs
from wso2_sandbox.fleet import (
    HAPROXY,
    HTTP_PORT,
    MAX_SOCKET_PATH,
    SSH_KEYGEN,
    SSH_PORT,
    SSHD,
    _bind_errno,
    _http_status,
    _poll,
    _port_or_free,
    _ssh_banner,
    _tail,
)
from wso2_sandbox.fleet_files import haproxy_global, haproxy_site, sshd_config, wso2ctl_script
from wso2_sandbox.fleet_handles import FleetError, LBHandle, NodeHandle, parse_stat, write_faults
from wso2_sandbox.standin import parse_faults

LB_MODES = ("shared", "per-cluster")
FIRST_FRONTEND_PORT = 8001
NODES_PER_BLOCK = 200  # node addresses .11-.210 of each /24
START_TIMEOUT = 60.0
KEYGEN_PARALLEL = 32


@dataclass
class ScaleFleetConfig:
    clusters: int = 3
    nodes_per_cluster: int = 4
    lb_mode: str = "shared"
    initial_version: str = "1.0.0"
    boot_seconds: float = 3.0
    ready_gap_seconds: float = 2.0
    install_seconds: float = 0.5
    # One stand-in host process per this many nodes: a single asyncio loop answers HAProxy's
    # checks (2 LBs x 2 a second per node) and its share of the load. At 50 a host stalled past
    # HAProxy's 500 ms check timeout on this shared 2-core machine (load 20) when ten loaded
    # clusters' nodes sat in one host; 25 per host, spread round robin, keeps up.
    nodes_per_standin: int = 25
    base_dir: str | None = None
    faults: dict[str, dict[str, float | int]] | None = None

    @property
    def nodes(self) -> int:
        return self.clusters * self.nodes_per_cluster


@dataclass
class ClusterSlice:
    """One cluster of the fleet: its nodes, and its view of its LBs (its own backend and port)."""

    name: str
    backend: str
    nodes: list[NodeHandle]
    lbs: list[LBHandle]
    ssh: dict[str, str] = field(default_factory=dict)

    def description(self) -> dict[str, Any]:
        """Shaped like fleet.json, for `fleet_manifests` and `load.targets_from_fleet`."""
        return {
            "backend": self.backend,
            "nodes": [n.describe() for n in self.nodes],
            "lbs": [lb.describe() for lb in self.lbs],
            "ssh": self.ssh,
        }


class ScaleFleet:
    """C clusters x N nodes and their LBs on random loopback /24s. Synchronous."""

    def __init__(self, config: ScaleFleetConfig | None = None, *, stop_at_exit: bool = True):
        self.config = config or ScaleFleetConfig()
        self.clusters: list[ClusterSlice] = []
        self.nodes: list[NodeHandle] = []
        self.lb_hosts: list[LBHandle] = []  # one per LB host (its first site's view)
        self.base_dir = ""
        self.description: dict[str, Any] = {}
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, str] = {}
        self._socket_dir: str | None = None
        self._owns_base = False
        self._stop_at_exit = stop_at_exit
        self._state = "new"

    # ----------------------------------------------------------------- public API

    def start(self) -> ScaleFleet:
        if self._state != "new":
            raise FleetError("a ScaleFleet starts once; create a new one")
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
        Path(self.base_dir, "fleet.json").write_text(json.dumps(self.description, indent=1))
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
        leaders = {p.pid for p in self._procs.values()}
        left = fleet_procs.kill_fleet(self.base_dir, leaders) if self.base_dir else set()
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=5)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._owns_base and os.environ.get("W2F_KEEP") != "1":
            shutil.rmtree(self.base_dir, ignore_errors=True)
        elif self.base_dir:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.base_dir, "fleet.json"))
        self.stop_seconds = time.monotonic() - t0
        if left:
            raise FleetError(f"fleet processes survived SIGKILL: {sorted(left)}")

    def __enter__(self) -> ScaleFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cluster(self, name: str) -> ClusterSlice:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(f"no cluster {name!r} in this fleet")

    def processes(self) -> set[int]:
        """Pids of every live process of this fleet (for leak checks)."""
        leaders = {p.pid for p in self._procs.values()}
        return fleet_procs.fleet_processes(self.base_dir, leaders) if self.base_dir else set()

    def lb_servers(self, lb: LBHandle) -> dict[str, dict[str, dict[str, str]]]:
        """`show stat` of every backend of one LB host in one command: backend -> server -> row."""
        out: dict[str, dict[str, dict[str, str]]] = {}
        for row in parse_stat(lb.command("show stat -1 4 -1")):
            out.setdefault(row["pxname"], {})[row["svname"]] = row
        return out

    # ----------------------------------------------------------------- start, step by step

    def _validate(self) -> None:
        c = self.config
        if c.clusters < 1 or c.nodes_per_cluster < 1 or c.nodes > 2000:
            raise FleetError("need >= 1 cluster of >= 1 node, at most 2000 nodes")
        if c.lb_mode not in LB_MODES:
            raise FleetError(f"lb_mode must be one of {LB_MODES}, not {c.lb_mode!r}")
        if c.lb_mode == "per-cluster" and c.clusters > 100:
            raise FleetError("per-cluster LB pairs: at most 100 clusters")
        if c.nodes_per_standin < 1:
            raise FleetError("nodes_per_standin must be >= 1")
        try:
            parse_faults(c.faults or {})
        except ValueError as e:
            raise FleetError(f"invalid faults: {e}") from None

    def _prepare_base(self) -> None:
        if self.config.base_dir is None:
            self.base_dir = tempfile.mkdtemp(prefix="w2s-", dir="/tmp")
            self._owns_base = True
        else:
            self.base_dir = os.path.realpath(self.config.base_dir)
            if os.path.exists(self.base_dir):
                shutil.rmtree(self.base_dir)  # an earlier fleet's keys and logs must not mix in
            os.makedirs(self.base_dir)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def _plan(self) -> None:
        c = self.config
        lb_count = 2 if c.lb_mode == "shared" else 2 * c.clusters
        node_addrs, lb_addrs = _pick_addresses(c.nodes, lb_count)
        b = self.base_dir
        if len(f"{b}/lb{lb_count}/operator.sock") > MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="w2s-", dir="/tmp")
        sock_dir = self._socket_dir or b
        ssh = {
            "user": getpass.getuser(),
            "private_key_path": f"{b}/ssh/id_ed25519",
            "public_key_path": f"{b}/ssh/id_ed25519.pub",
            "known_hosts_path": f"{b}/ssh/known_hosts",
            "authorized_keys_path": f"{b}/ssh/authorized_keys",
        }
        hosts = []
        for j, addr in enumerate(lb_addrs, start=1):
            name = f"lb{j}"
            hosts.append(
                LBHandle(
                    name=name,
                    host=addr,
                    ssh_port=_port_or_free(addr, SSH_PORT),
                    frontend=(addr, 0),
                    socket=f"{sock_dir}/{name}-admin.sock",
                    operator_socket=f"{sock_dir}/{name}-operator.sock",
                    tcp_admin=None,
                    dir=f"{b}/{name}",
                )
            )
        self.lb_hosts = hosts
        width = len(str(c.clusters))
        for ci in range(c.clusters):
            cname = f"c{ci + 1:0{width}d}"
            nodes = []
            for k in range(c.nodes_per_cluster):
                addr = node_addrs[ci * c.nodes_per_cluster + k]
                name = f"{cname}-node{k + 1}"
                nodes.append(
                    NodeHandle(name, addr, _port_or_free(addr, SSH_PORT), HTTP_PORT, f"{b}/{name}")
                )
            pair = hosts[:2] if c.lb_mode == "shared" else hosts[2 * ci : 2 * ci + 2]
            port = FIRST_FRONTEND_PORT + (ci if c.lb_mode == "shared" else 0)
            views = [
                LBHandle(
                    name=lb.name,
                    host=lb.host,
                    ssh_port=lb.ssh_port,
                    frontend=(lb.host, port),
                    socket=lb.socket,
                    operator_socket=lb.operator_socket,
                    tcp_admin=None,
                    dir=lb.dir,
                    backend=f"be_{cname}",
                )
                for lb in pair
            ]
            self.clusters.append(ClusterSlice(cname, f"be_{cname}", nodes, views, ssh))
            self.nodes.extend(nodes)
        self.description = {
            "kind": "scale",
            "base_dir": b,
            "config": asdict(c),
            "ssh": ssh,
            "socket_dir": self._socket_dir,
            "clusters": [{"name": cl.name, **cl.description()} for cl in self.clusters],
            "lb_hosts": [lb.describe() for lb in self.lb_hosts],
        }

    def _standin_groups(self) -> list[list[NodeHandle]]:
        # Round robin, not in blocks: a cluster's nodes (and the load of clusters behind load,
        # which are usually neighbours) spread over every stand-in host.
        hosts = -(-len(self.nodes) // self.config.nodes_per_standin)
        return [self.nodes[g::hosts] for g in range(hosts)]

    def _standin_endpoint(self, group: int) -> str:
        return f"{self.base_dir}/standin{group + 1}.endpoint"

    def _write_files(self) -> None:
        ssh = self.description["ssh"]
        os.makedirs(f"{self.base_dir}/ssh", mode=0o700)
        hosts: list[NodeHandle | LBHandle] = [*self.nodes, *self.lb_hosts]
        keys = {"client": ssh["private_key_path"]}
        for h in hosts:
            os.makedirs(f"{h.dir}/sshd")
            keys[h.name] = f"{h.dir}/sshd/ssh_host_ed25519_key"
        _keygen(keys)
        Path(ssh["authorized_keys_path"]).write_text(Path(ssh["public_key_path"]).read_text())
        known = []
        for h in hosts:
            key = " ".join(Path(f"{keys[h.name]}.pub").read_text().split()[:2])
            who = h.host if h.ssh_port == 22 else f"[{h.host}]:{h.ssh_port}"
            known.append(f"{who} {key}\n")
        Path(ssh["known_hosts_path"]).write_text("".join(known))

        c = self.config
        timing = {
            "boot_seconds": c.boot_seconds,
            "ready_gap_seconds": c.ready_gap_seconds,
            "install_seconds": c.install_seconds,
        }
        for g, group in enumerate(self._standin_groups()):
            for n in group:
                for sub in ("bin", "etc", "opt", "run", "log", "home"):
                    os.makedirs(f"{n.dir}/{sub}", exist_ok=True)
                Path(n.dir, "etc", "standin.json").write_text(json.dumps(timing) + "\n")
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
                        standin_endpoint=self._standin_endpoint(g),
                    )
                )
                ctl.chmod(0o755)
        for lb in self.lb_hosts:
            os.makedirs(f"{lb.dir}/bin", exist_ok=True)
            os.makedirs(f"{lb.dir}/home", exist_ok=True)
            Path(lb.dir, "haproxy.cfg").write_text(self._haproxy_config(lb))
        for h in hosts:
            env = {
                "HOME": f"{h.dir}/home",  # not this machine's ~/.bashrc (see fleet.py)
                "PATH": f"{h.dir}/bin:/usr/local/bin:/usr/bin:/bin",
                "NODE_HOME" if isinstance(h, NodeHandle) else "LB_HOME": h.dir,
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

    def _haproxy_config(self, lb: LBHandle) -> str:
        text = haproxy_global(
            name=lb.name,
            admin_socket=lb.socket,
            operator_socket=lb.operator_socket,
            tcp_admin=None,
        )
        for cl in self.clusters:
            for view in cl.lbs:
                if view.name == lb.name:
                    text += haproxy_site(
                        frontend=f"fe_{cl.name}",
                        bind=view.frontend,
                        backend=cl.backend,
                        servers=[(n.name, n.host, n.http_port) for n in cl.nodes],
                    )
        return text

    def _spawn(self, key: str, argv: list[str], log_path: str, cwd: str) -> None:
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env[fleet_procs.MARKER_VAR] = self.base_dir
        self._logs[key] = log_path
        with open(log_path, "ab") as log:
            self._procs[key] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )

    def _check_children(self) -> None:
        for key, proc in self._procs.items():
            if proc.poll() is not None:
                raise FleetError(
                    f"{key} exited with {proc.returncode} during start: {_tail(self._logs[key])}"
                )

    def _launch(self) -> None:
        for h in [*self.nodes, *self.lb_hosts]:
            self._spawn(
                f"{h.name}.sshd",
                [SSHD, "-D", "-e", "-f", f"{h.dir}/sshd/sshd_config"],
                f"{h.dir}/sshd/sshd.log",
                h.dir,
            )
        for g, group in enumerate(self._standin_groups()):
            argv = [sys.executable, "-I", "-m", "wso2_sandbox.standin_host"]
            argv += ["--endpoint", self._standin_endpoint(g), "--port", str(HTTP_PORT)]
            for n in group:
                argv += ["--node", f"{n.name}={n.host}={n.dir}"]
            self._spawn(f"standin{g + 1}.host", argv, f"{self.base_dir}/standin{g + 1}.log", "/")
        pending = {n.name: n for n in self.nodes}

        def standins_ready() -> bool:
            for name, n in list(pending.items()):
                if _http_status(n.host, n.http_port, "/health", timeout=0.5) == 200:
                    del pending[name]
            return not pending

        _poll("stand-ins to be ready", standins_ready, START_TIMEOUT, self._check_children)
        # HAProxy starts after the stand-ins so its first health checks already pass.
        for lb in self.lb_hosts:
            self._spawn(
                f"{lb.name}.haproxy",
                [HAPROXY, "-W", "-db", "-f", f"{lb.dir}/haproxy.cfg"],
                f"{lb.dir}/haproxy.log",
                lb.dir,
            )
        pending_ssh = {h.name: h for h in [*self.nodes, *self.lb_hosts]}

        def sshd_accepting() -> bool:
            for name, h in list(pending_ssh.items()):
                if _ssh_banner(h.host, h.ssh_port):
                    del pending_ssh[name]
            return not pending_ssh

        _poll("sshd to accept connections", sshd_accepting, START_TIMEOUT, self._check_children)
        # lb host -> backend -> the servers it must hold
        want: dict[str, dict[str, set[str]]] = {}
        for cl in self.clusters:
            for view in cl.lbs:
                want.setdefault(view.name, {})[cl.backend] = {n.name for n in cl.nodes}
        pending_lbs = {lb.name: lb for lb in self.lb_hosts}

        def lbs_steady() -> bool:
            # Servers start out UP before any check has run, so insist on a passed check too.
            for name, lb in list(pending_lbs.items()):
                try:
                    rows = self.lb_servers(lb)
                except (OSError, FleetError):
                    continue
                if all(
                    set(rows.get(be, {})) == names
                    and all(
                        r["status"] == "UP" and r["check_status"].lstrip("* ") == "L7OK"
                        for r in rows[be].values()
                    )
                    for be, names in want[name].items()
                ):
                    del pending_lbs[name]
            return not pending_lbs

        _poll("every LB to see every server UP", lbs_steady, START_TIMEOUT, self._check_children)


def _keygen(keys: dict[str, str]) -> None:
    """ssh-keygen for every host, KEYGEN_PARALLEL at a time (one run is a few ms)."""
    items = list(keys.items())
    for i in range(0, len(items), KEYGEN_PARALLEL):
        gens = {
            who: subprocess.Popen(
                [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"w2s-{who}", "-f", path],
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


def _pick_addresses(nodes: int, lbs: int) -> tuple[list[str], list[str]]:
    """Node and LB addresses on consecutive unused loopback /24s (127.A.B, A and B random).

    A /24 whose node port is taken belongs to another fleet (a scale fleet or `Fleet`'s): try
    other ones.
    """
    blocks = math.ceil(nodes / NODES_PER_BLOCK) + 1  # the last one holds the LBs
    if lbs > NODES_PER_BLOCK:
        raise FleetError(f"at most {NODES_PER_BLOCK} LB hosts")
    rng = secrets.SystemRandom()
    for _ in range(100):
        a, b = rng.randint(20, 250), rng.randint(20, 250 - blocks)
        node_addrs = [
            f"127.{a}.{b + i // NODES_PER_BLOCK}.{11 + i % NODES_PER_BLOCK}" for i in range(nodes)
        ]
        lb_addrs = [f"127.{a}.{b + blocks - 1}.{11 + j}" for j in range(lbs)]
        errs = [_bind_errno(h, HTTP_PORT) for h in node_addrs + lb_addrs]
        if errno.EADDRINUSE in errs:
            continue
        for h, err in zip(node_addrs + lb_addrs, errs, strict=True):
            if err is not None:
                raise FleetError(f"cannot bind {h}:{HTTP_PORT}: {os.strerror(err)}")
        return node_addrs, lb_addrs
    raise FleetError("found no unused loopback /24s in 100 tries")


# --------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wso2_sandbox.fleet_scale")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a scale fleet detached; writes <dir>/fleet.json")
    up.add_argument("--dir", required=True)
    up.add_argument("--clusters", type=int, default=50)
    up.add_argument("--nodes", type=int, default=4, help="nodes per cluster")
    up.add_argument("--lb-mode", choices=LB_MODES, default="shared")
    up.add_argument("--boot-seconds", type=float, default=3.0)
    up.add_argument("--ready-gap-seconds", type=float, default=2.0)
    up.add_argument("--install-seconds", type=float, default=0.5)
    down = sub.add_parser("down", help="stop the scale fleet recorded in <dir>")
    down.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    base = os.path.realpath(a.dir)
    if a.cmd == "down":
        return _down(base)
    if os.path.exists(f"{base}/fleet.json"):
        _down(base)
    cfg = ScaleFleetConfig(
        clusters=a.clusters,
        nodes_per_cluster=a.nodes,
        lb_mode=a.lb_mode,
        boot_seconds=a.boot_seconds,
        ready_gap_seconds=a.ready_gap_seconds,
        install_seconds=a.install_seconds,
        base_dir=base,
    )
    fleet = ScaleFleet(cfg, stop_at_exit=False).start()
    print(
        f"scale fleet up in {fleet.start_seconds:.1f}s: {len(fleet.clusters)} clusters, "
        f"{len(fleet.nodes)} nodes, {len(fleet.lb_hosts)} LB hosts ({cfg.lb_mode}); "
        f"{base}/fleet.json"
    )
    return 0


def _down(base: str) -> int:
    """Kill everything a scale fleet in `base` started (its processes carry the marker)."""
    t0 = time.monotonic()
    socket_dir = None
    with contextlib.suppress(OSError, ValueError):
        socket_dir = json.loads(Path(base, "fleet.json").read_text()).get("socket_dir")
    sshd_pids = set()
    for pid_file in Path(base).glob("*/sshd/sshd.pid"):
        with contextlib.suppress(OSError, ValueError):
            sshd_pids.add(int(pid_file.read_text().strip()))
    left = fleet_procs.kill_fleet(base, sshd_pids)
    if socket_dir:
        shutil.rmtree(socket_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{base}/fleet.json")
    print(f"scale fleet in {base} stopped in {time.monotonic() - t0:.1f}s")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())

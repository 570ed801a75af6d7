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
import contextlib
import errno
import getpass
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
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
    lb_servers,
    port_or_free,
)
from wso2_sandbox.fleet_files import haproxy_global, haproxy_site
from wso2_sandbox.fleet_handles import FleetError, LBHandle, NodeHandle
from wso2_sandbox.standin import parse_faults

LB_MODES = ("shared", "per-cluster")
FIRST_FRONTEND_PORT = 8001
NODES_PER_BLOCK = 200  # node addresses .11-.210 of each /24


@dataclass
class ScaleFleetConfig(ProductConfig):
    clusters: int = 3
    nodes_per_cluster: int = 4
    lb_mode: str = "shared"
    # One stand-in host process per this many nodes: a single asyncio loop answers HAProxy's
    # checks (2 LBs x 2 a second per node) and its share of the load. At 50 a host stalled past
    # HAProxy's 500 ms check timeout on this shared 2-core machine (load 20) when ten loaded
    # clusters' nodes sat in one host; 25 per host, spread round robin, keeps up.
    nodes_per_standin: int = 25

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


class ScaleFleet(FleetBase):
    """C clusters x N nodes and their LBs on random loopback /24s. Synchronous."""

    PREFIX = "w2s-"
    START_TIMEOUT = 60.0
    config: ScaleFleetConfig

    def __init__(self, config: ScaleFleetConfig | None = None, *, stop_at_exit: bool = True):
        super().__init__(config or ScaleFleetConfig(), stop_at_exit=stop_at_exit)
        self.clusters: list[ClusterSlice] = []
        self.nodes: list[NodeHandle] = []
        self.lb_hosts: list[LBHandle] = []  # one per LB host (its first site's view)

    # ----------------------------------------------------------------- public API

    def cluster(self, name: str) -> ClusterSlice:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(f"no cluster {name!r} in this fleet")

    def lb_servers(self, lb: LBHandle) -> dict[str, dict[str, dict[str, str]]]:
        """`show stat` of every backend of one LB host in one command: backend -> server -> row."""
        return lb_servers(lb)

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

    def _clear_leftovers(self) -> None:
        if os.path.exists(self.base_dir):
            shutil.rmtree(self.base_dir)  # an earlier fleet's keys and logs must not mix in
        os.makedirs(self.base_dir)

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
                    ssh_port=port_or_free(addr, SSH_PORT),
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
                    NodeHandle(name, addr, port_or_free(addr, SSH_PORT), HTTP_PORT, f"{b}/{name}")
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
        hosts: list[NodeHandle | LBHandle] = [*self.nodes, *self.lb_hosts]
        keys = self._write_ssh_keys(ssh, hosts)
        for g, group in enumerate(self._standin_groups()):
            for n in group:
                self._write_node_files(n, standin_endpoint=self._standin_endpoint(g))
        for lb in self.lb_hosts:
            os.makedirs(f"{lb.dir}/bin", exist_ok=True)
            Path(lb.dir, "haproxy.cfg").write_text(self._haproxy_config(lb))
        self._write_sshd_configs(ssh, hosts, keys)

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

    def _launch(self) -> None:
        hosts: list[NodeHandle | LBHandle] = [*self.nodes, *self.lb_hosts]
        self._spawn_sshds(hosts)
        for g, group in enumerate(self._standin_groups()):
            argv = [sys.executable, "-I", "-m", "wso2_sandbox.standin_host"]
            argv += ["--endpoint", self._standin_endpoint(g), "--port", str(HTTP_PORT)]
            for n in group:
                argv += ["--node", f"{n.name}={n.host}={n.dir}"]
            self._spawn(f"standin{g + 1}.host", argv, f"{self.base_dir}/standin{g + 1}.log", "/")
        self._wait_for_products(self.nodes, probe_timeout=0.5)
        # HAProxy starts after the stand-ins so its first health checks already pass.
        self._spawn_haproxies(self.lb_hosts)
        self._wait_for_sshd(hosts)
        # lb host -> backend -> the servers it must hold
        want: dict[str, tuple[LBHandle, dict[str, set[str]]]] = {
            lb.name: (lb, {}) for lb in self.lb_hosts
        }
        for cl in self.clusters:
            for view in cl.lbs:
                want[view.name][1][cl.backend] = {n.name for n in cl.nodes}
        self._wait_for_lbs(want)


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
        errs = [bind_errno(h, HTTP_PORT) for h in node_addrs + lb_addrs]
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

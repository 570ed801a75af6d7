"""A real Argo CD in the sandbox: redis-server, argocd-repo-server, argocd-application-controller
and (for resource actions and the CLI) argocd-server, run as plain processes against the sandbox's
kube-apiserver, with a local Git repository served to the repo-server by a file:// URL.

    python -m wso2_sandbox.gitops up --dir .sandbox/argocd --kubeconfig .sandbox/kubeconfig
    python -m wso2_sandbox.gitops down --dir .sandbox/argocd

There are no pods here (no kubelet, no controller manager), so Argo CD cannot run as its own
install does. What it needs from the cluster is installed by hand (`install()`): its CRDs, the
`argocd` namespace, the ConfigMaps and `argocd-secret` of its `core-install.yaml`, our health
check and resource actions merged into `argocd-cm` (manifests/argocd/), and the AppProject
`default`. `ARGOCD_FAKE_IN_CLUSTER=true` makes `https://kubernetes.default.svc` mean the
kubeconfig's server. The binary is built once from Go modules and cached (hack/build-argocd.sh).
See ../shared/notes/argocd-sandbox.md for the facts this rests on.

Every process carries the fleet's marker variable with the Argo CD dir as its value, so the
teardown also finds the git processes the repo-server forks (they may get their own process
group) and nothing is left running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wso2_sandbox import fleet_procs
from wso2_sandbox.controlplane import _alive, _kill_group, free_port, wait_established

REPO_ROOT = Path(__file__).resolve().parents[2]
ARGOCD_MANIFESTS = REPO_ROOT / "manifests" / "argocd"
NAMESPACE = "argocd"
IN_CLUSTER = "https://kubernetes.default.svc"
GROUP, VERSION = "argoproj.io", "v1alpha1"
READY_TIMEOUT = 90.0
# The app resync period here. Argo CD's default is 3 min (plus up to 1 min of jitter); the
# sandbox polls Git every 10 s, and the demo and tests also trigger a refresh right after a
# commit, as a Git webhook would.
APP_RESYNC_SECONDS = 10


class GitOpsError(RuntimeError):
    """Argo CD could not be built, installed or started; the message says where to look."""


def build_argocd() -> Path:
    """Build (or find cached) the argocd binary; return its directory (also holds install/)."""
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-argocd.sh")],
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode:
        raise GitOpsError(f"hack/build-argocd.sh failed ({proc.returncode}); see its output above")
    return Path(proc.stdout.strip().splitlines()[-1])


def ensure_packages() -> None:
    """redis-server and git come from apt (hack/apt-deps.sh installs only what is missing)."""
    if shutil.which("redis-server") and shutil.which("git"):
        return
    subprocess.run(["bash", str(REPO_ROOT / "hack" / "apt-deps.sh")], check=True)
    if not shutil.which("redis-server"):
        raise GitOpsError("redis-server not found after hack/apt-deps.sh")


# --------------------------------------------------------------------- the Git repository


@dataclass
class GitRepo:
    """A local repository the repo-server reads by its file:// URL (no Git server process).

    Commits go straight into its branch `main`, as a merged pull request would.
    """

    path: Path
    branch: str = "main"

    @property
    def url(self) -> str:
        return f"file://{self.path.resolve()}"

    def git(self, *args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True,
            text=True,
            # No user or system config: the result does not depend on the machine's ~/.gitconfig.
            env={
                **os.environ,
                "GIT_CONFIG_GLOBAL": "/dev/null",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_AUTHOR_NAME": "wso2 sandbox",
                "GIT_AUTHOR_EMAIL": "sandbox@wso2-operator.invalid",
                "GIT_COMMITTER_NAME": "wso2 sandbox",
                "GIT_COMMITTER_EMAIL": "sandbox@wso2-operator.invalid",
            },
            timeout=30,
        )
        if proc.returncode:
            raise GitOpsError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout}")
        return proc.stdout

    def init(self) -> GitRepo:
        if (self.path / ".git").exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", self.branch)
        return self

    def write(self, relpath: str, content: str | Mapping[str, Any] | Sequence[Any]) -> Path:
        """Write a file (a mapping: one YAML document; a list: several) into the work tree."""
        p = self.path / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            text = content
        elif isinstance(content, Mapping):
            text = yaml.safe_dump(dict(content), sort_keys=False)
        else:
            text = yaml.safe_dump_all(list(content), sort_keys=False)
        p.write_text(text)
        return p

    def commit(self, message: str) -> str:
        """Commit every change in the work tree; return the new commit's full SHA."""
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()


# --------------------------------------------------------------------- Argo CD


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (free_port() twice in a row may return the same one)."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def argocd_cm(core_install: Path) -> list[dict[str, Any]]:
    """The ConfigMaps and argocd-secret of Argo CD's core-install.yaml, in namespace argocd,
    with our WSO2Cluster health check and resource actions merged into argocd-cm's data."""
    docs = [d for d in yaml.safe_load_all(core_install.read_text()) if d]
    ours: dict[str, str] = {}
    for name in ("argocd-cm-health.yaml", "argocd-cm-actions.yaml"):
        ours.update(yaml.safe_load((ARGOCD_MANIFESTS / name).read_text())["data"])
    out = []
    for d in docs:
        if d.get("kind") not in ("ConfigMap", "Secret"):
            continue
        d["metadata"]["namespace"] = NAMESPACE
        if d["metadata"]["name"] == "argocd-cm":
            d["data"] = {**(d.get("data") or {}), **ours}
        out.append(d)
    return out


DEFAULT_PROJECT: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "AppProject",
    "metadata": {"name": "default", "namespace": NAMESPACE},
    "spec": {
        "sourceRepos": ["*"],
        "destinations": [{"server": "*", "namespace": "*"}],
        "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
    },
}


def application(
    name: str,
    repo_url: str,
    path: str,
    dest_namespace: str,
    *,
    automated: bool = True,
    revision: str = "main",
) -> dict[str, Any]:
    """An Application over a plain-YAML folder (recursive) of `repo_url`.

    The source type is set explicitly to Directory, so a kustomization.yaml in the folder (as in
    manifests/crds/) is excluded rather than turning the folder into a kustomize build, which
    would need the kustomize binary on the repo-server's PATH. (Argo CD's globs have no path
    separator: `*` crosses folders.)
    """
    spec: dict[str, Any] = {
        "project": "default",
        "source": {
            "repoURL": repo_url,
            "targetRevision": revision,
            "path": path,
            "directory": {"recurse": True, "exclude": "*kustomization.yaml"},
        },
        "destination": {"server": IN_CLUSTER, "namespace": dest_namespace},
    }
    if automated:
        # selfHeal: a live change to a field Git sets is put back; prune: deleted in Git, deleted.
        spec["syncPolicy"] = {"automated": {"prune": True, "selfHeal": True}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Application",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


@dataclass
class ArgoCD:
    """Argo CD's processes on free loopback ports; `start()` returns once they answer."""

    workdir: Path
    kubeconfig: Path
    with_server: bool = True  # argocd-server: the CLI and resource actions go through it
    bin_dir: Path | None = None
    app_resync: int = APP_RESYNC_SECONDS
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    start_seconds: float | None = None

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def argocd(self) -> Path:
        assert self.bin_dir is not None
        return self.bin_dir / "argocd"

    @property
    def server_address(self) -> str:
        return f"127.0.0.1:{self.ports['server']}"

    # ------------------------------------------------------------ start / stop

    def start(self) -> ArgoCD:
        t0 = time.monotonic()
        self.workdir = self.workdir.resolve()
        self.kubeconfig = self.kubeconfig.resolve()
        ensure_packages()
        self.bin_dir = self.bin_dir or build_argocd()
        for d in ("logs", "tls", "ssh", "gnupg", "gpg", "tmp", "redis", "home"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        (self.workdir / "gnupg").chmod(0o700)
        try:
            self.install()
            self._spawn_all()
            self._save_state()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def install(self) -> None:
        """What Argo CD expects in the cluster: CRDs, namespace, ConfigMaps/secret, project."""
        assert self.bin_dir is not None
        install = self.bin_dir / "install"
        # Server-side: client-side apply fails on the Application CRD's size (the
        # last-applied-configuration annotation would exceed 256 KiB).
        # The CRD files only: the folder's kustomization.yaml is not an object.
        crds = [f"--filename={f}" for f in sorted((install / "crds").glob("*-crd.yaml"))]
        self.kubectl("apply", "--server-side", "--force-conflicts", *crds, timeout=120)
        wait_established(
            self.kubectl,
            [
                "crd/applications.argoproj.io",
                "crd/appprojects.argoproj.io",
                "crd/applicationsets.argoproj.io",
            ],
            GitOpsError,
        )
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        items = [ns, *argocd_cm(install / "core-install.yaml"), DEFAULT_PROJECT]
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def _env(self, component: str) -> dict[str, str]:
        w = self.workdir
        return {
            **os.environ,
            "ARGOCD_BINARY_NAME": component,  # the multi-call binary's personality
            "ARGOCD_FAKE_IN_CLUSTER": "true",
            "KUBECONFIG": str(self.kubeconfig),
            "ARGOCD_TLS_DATA_PATH": str(w / "tls"),
            "ARGOCD_SSH_DATA_PATH": str(w / "ssh"),
            "ARGOCD_GNUPGHOME": str(w / "gnupg"),
            "ARGOCD_GPG_DATA_PATH": str(w / "gpg"),
            "ARGOCD_GPG_ENABLED": "false",
            # The repo-server's clones go here, not into the machine's /tmp.
            "TMPDIR": str(w / "tmp"),
            "HOME": str(w / "home"),
            fleet_procs.MARKER_VAR: str(w),
        }

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        with (self.workdir / "logs" / f"{name}.log").open("ab") as out:
            # A session of its own: stop() kills the group, and our Ctrl-C does not reach it.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.workdir,
                start_new_session=True,
            )
        self.pids[name] = proc.pid
        # Recorded at once, so `down` finds it even if the start-up fails half-way.
        self._save_state()

    def _spawn_all(self) -> None:
        names = ["redis", "repo-server", "repo-metrics", "controller-metrics"]
        if self.with_server:
            names += ["server", "server-metrics"]
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        p = self.ports
        redis = f"127.0.0.1:{p['redis']}"
        w = self.workdir
        self._spawn(
            "redis",
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(p["redis"]),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(w / "redis"),
            ],
            self._env("redis"),
        )
        argocd = str(self.argocd)
        self._spawn(
            "repo-server",
            [
                argocd,
                "--address",
                "127.0.0.1",
                "--port",
                str(p["repo-server"]),
                "--metrics-address",
                "127.0.0.1",
                "--metrics-port",
                str(p["repo-metrics"]),
                "--redis",
                redis,
                # Resolved branch heads are cached this long (default 3 min): no longer than the
                # resync, or a commit is seen only minutes later.
                "--revision-cache-expiration",
                f"{self.app_resync}s",
                "--loglevel",
                "info",
            ],
            self._env("argocd-repo-server"),
        )
        self._spawn(
            "application-controller",
            [
                argocd,
                "--kubeconfig",
                str(self.kubeconfig),
                "--namespace",
                NAMESPACE,
                "--redis",
                redis,
                "--repo-server",
                f"127.0.0.1:{p['repo-server']}",
                "--metrics-port",
                str(p["controller-metrics"]),
                "--app-resync",
                str(self.app_resync),
                "--app-resync-jitter",
                "0",
                # v3 writes each resource's health into the Application only with this flag
                # (the Application's own .status.health is always there).
                "--persist-resource-health",
                "--loglevel",
                "info",
            ],
            self._env("argocd-application-controller"),
        )
        if self.with_server:
            self._spawn(
                "server",
                [
                    argocd,
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--namespace",
                    NAMESPACE,
                    # Plain HTTP/gRPC on loopback, and no login: the CLI's --core mode needs
                    # real pods, so `argocd app ...` goes through this server instead.
                    "--insecure",
                    "--disable-auth",
                    "--address",
                    "127.0.0.1",
                    "--port",
                    str(p["server"]),
                    "--metrics-address",
                    "127.0.0.1",
                    "--metrics-port",
                    str(p["server-metrics"]),
                    "--redis",
                    redis,
                    "--repo-server",
                    f"127.0.0.1:{p['repo-server']}",
                    "--loglevel",
                    "info",
                ],
                self._env("argocd-server"),
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        wanted = ["redis", "repo-server", "controller-metrics"]
        if self.with_server:
            wanted.append("server")
        while True:
            for name, pid in self.pids.items():
                if not _alive(pid):
                    raise GitOpsError(
                        f"{name} exited during start-up; see {self.workdir}/logs/{name}.log:\n"
                        + self.log_tail(name)
                    )
            missing = [n for n in wanted if not _port_open(self.ports[n])]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise GitOpsError(
                    f"Argo CD not up after {READY_TIMEOUT:.0f}s: no answer on {missing};"
                    f" see {self.workdir}/logs"
                )
            time.sleep(0.2)

    def _save_state(self) -> None:
        self.state_file.write_text(
            json.dumps(
                {
                    "pids": self.pids,
                    "ports": self.ports,
                    "kubeconfig": str(self.kubeconfig),
                    "bin_dir": str(self.bin_dir),
                }
            )
        )

    def _is_ours(self, name: str, pid: int) -> bool:
        """A recorded pid is still our process, not a recycled one."""
        if not fleet_procs.is_alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        if name == "redis":
            # redis-server rewrites its process title over its argv and environment:
            # "redis-server 127.0.0.1:PORT" is all that is left to recognise it by.
            return f"127.0.0.1:{self.ports.get('redis')}".encode() in cmdline
        return f"{fleet_procs.MARKER_VAR}={self.workdir}".encode() in environ.split(b"\0")

    def processes(self) -> set[int]:
        """Every live process of this Argo CD: the recorded ones, their children, marked ones."""
        own = {pid for name, pid in self.pids.items() if self._is_ours(name, pid)}
        return own | fleet_procs.fleet_processes(str(self.workdir), own)

    def stop(self) -> set[int]:
        """Stop every process (the server and controller first); return pids still alive."""
        for name in ("server", "application-controller", "repo-server", "redis"):
            pid = self.pids.get(name)
            if pid and self._is_ours(name, pid):
                _kill_group(pid)
        left = fleet_procs.kill_fleet(str(self.workdir), self.pids.values())
        self.pids.clear()
        self.state_file.unlink(missing_ok=True)
        return left

    def __enter__(self) -> ArgoCD:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    def load(cls, workdir: Path) -> ArgoCD | None:
        try:
            data = json.loads((workdir / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return cls(
            workdir=workdir.resolve(),
            kubeconfig=Path(data["kubeconfig"]),
            bin_dir=Path(data["bin_dir"]) if data.get("bin_dir") else None,
            ports={k: int(v) for k, v in data.get("ports", {}).items()},
            pids={k: int(v) for k, v in data.get("pids", {}).items()},
        )

    def log_tail(self, name: str, n: int = 3000) -> str:
        try:
            return (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------ using it

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        kubectl = Path(sys.executable).parent / "kubectl"
        proc = subprocess.run(
            [str(kubectl) if kubectl.exists() else "kubectl", *args],
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            timeout=timeout,
        )
        if proc.returncode:
            raise GitOpsError(f"kubectl {' '.join(args)}: {proc.stderr.strip() or proc.stdout}")
        return proc.stdout

    def apply_application(self, app: Mapping[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(app))

    def get_application(self, name: str) -> dict[str, Any]:
        out = self.kubectl("get", "applications.argoproj.io", name, "-n", NAMESPACE, "-o", "json")
        return json.loads(out)

    def refresh(self, name: str, hard: bool = False) -> None:
        """Ask the controller to compare with Git now (what a Git webhook or `argocd app get
        --refresh` does); `hard` also drops cached manifests."""
        self.kubectl(
            "annotate",
            "applications.argoproj.io",
            name,
            "-n",
            NAMESPACE,
            f"argocd.argoproj.io/refresh={'hard' if hard else 'normal'}",
            "--overwrite",
        )

    def cli(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        """The real `argocd` CLI against our argocd-server (no login: auth is off)."""
        if not self.with_server:
            raise GitOpsError("the argocd CLI needs argocd-server (with_server=True)")
        proc = subprocess.run(
            [
                str(self.argocd),
                *args,
                "--server",
                self.server_address,
                "--plaintext",
                "--config",
                str(self.workdir / "home" / "cli-config"),
            ],
            capture_output=True,
            text=True,
            env={**self._env("argocd"), "KUBECONFIG": str(self.kubeconfig)},
            timeout=timeout,
        )
        if check and proc.returncode:
            raise GitOpsError(f"argocd {' '.join(args)}: {proc.stderr.strip() or proc.stdout}")
        return proc.stdout + proc.stderr if not check else proc.stdout


# --------------------------------------------------------------------- reading an Application


def app_sync(app: Mapping[str, Any]) -> str:
    return ((app.get("status") or {}).get("sync") or {}).get("status", "")


def app_revision(app: Mapping[str, Any]) -> str:
    return ((app.get("status") or {}).get("sync") or {}).get("revision", "")


def app_health(app: Mapping[str, Any]) -> str:
    return ((app.get("status") or {}).get("health") or {}).get("status", "")


def resource_health(app: Mapping[str, Any], kind: str, name: str) -> dict[str, Any]:
    """The health Argo CD computed for one resource (with --persist-resource-health)."""
    for r in (app.get("status") or {}).get("resources") or []:
        if r.get("kind") == kind and r.get("name") == name:
            return r.get("health") or {}
    return {}


def app_summary(app: Mapping[str, Any], kind: str = "WSO2Cluster", name: str = "") -> str:
    """One line, as `argocd app get` shows it: sync (revision), health, the resource's message."""
    rev = app_revision(app)[:7] or "-"
    op = (app.get("status") or {}).get("operationState") or {}
    line = f"sync {app_sync(app) or '-'} ({rev})  health {app_health(app) or '-'}"
    if op.get("phase") and op.get("phase") != "Succeeded":
        line += f"  operation {op['phase']}"
    if name:
        msg = resource_health(app, kind, name).get("message", "")
        if msg:
            line += f"  {kind} {name}: {msg}"
    return line


# --------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wso2_sandbox.gitops")
    p.add_argument("action", choices=["up", "down", "build"])
    p.add_argument("--dir", default=".sandbox/argocd", type=Path)
    p.add_argument("--kubeconfig", default=".sandbox/kubeconfig", type=Path)
    args = p.parse_args(argv)
    if args.action == "build":
        print(build_argocd())
        return 0
    existing = ArgoCD.load(args.dir)
    if args.action == "down":
        if existing is None:
            print("argocd: not running")
            return 0
        left = existing.stop()
        print(f"argocd: still running: {sorted(left)}" if left else "argocd: stopped")
        return 1 if left else 0
    if existing is not None and existing.pids and all(_alive(x) for x in existing.pids.values()):
        print(f"argocd: already up (server {existing.server_address})")
        return 0
    a = ArgoCD(workdir=args.dir, kubeconfig=args.kubeconfig).start()
    print(f"argocd: up in {a.start_seconds:.1f}s; logs in {a.workdir / 'logs'}")
    if a.with_server:
        print(f"  argocd app list --server {a.server_address} --plaintext")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real, local Kubernetes control plane: etcd + kube-apiserver built from Go modules.

There is no Docker or kind here, so we run the two binaries the way envtest does. Only a real
apiserver checks structural schemas, CEL rules, the status subresource and printer columns.

    python -m wso2_sandbox.controlplane up --dir .sandbox/cluster --kubeconfig .sandbox/kubeconfig
    python -m wso2_sandbox.controlplane down --dir .sandbox/cluster
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0


def build_binaries() -> Path:
    """Build (or find cached) kube-apiserver and etcd; return the directory holding them."""
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-kube.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_established(
    kubectl: Callable[..., Any],
    crds: Sequence[str],
    retry_on: type[Exception],
    timeout: float = 60,
) -> None:
    """`kubectl wait --for=condition=Established` on new CRDs, through the caller's kubectl.

    It fails at once (rather than waiting) while a new CRD has no conditions yet ("accessor
    error: <nil>"), so it is retried until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            kubectl("wait", "--for=condition=Established", *crds, "--timeout=30s")
            return
        except retry_on:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _make_pki(d: Path) -> None:
    """A throwaway CA and a serving certificate for 127.0.0.1, so clients verify TLS for real."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wso2-sandbox-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(d / "ca.key", ca_key)
    (d / "apiserver.crt").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    _write_key(d / "apiserver.key", srv_key)
    _write_key(d / "sa.key", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class ControlPlane:
    """etcd + kube-apiserver on free loopback ports; `start()` returns once it is usable."""

    workdir: Path
    kubeconfig: Path | None = None
    bin_dir: Path | None = None
    etcd_port: int = 0
    api_port: int = 0
    token: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    def start(self) -> ControlPlane:
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = (self.kubeconfig or self.workdir / "kubeconfig").resolve()
        self.bin_dir = self.bin_dir or build_binaries()
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        _make_pki(pki)
        self.token = secrets.token_hex(16)
        (pki / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        self.etcd_port, peer_port, self.api_port = free_port(), free_port(), free_port()
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        try:
            self._spawn(
                "etcd",
                [
                    str(self.bin_dir / "etcd"),
                    f"--data-dir={self.workdir / 'etcd-data'}",
                    f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
                logs / "etcd.log",
            )
            self._spawn(
                "kube-apiserver",
                [
                    str(self.bin_dir / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.api_port}",
                    f"--cert-dir={pki}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--token-auth-file={pki / 'tokens.csv'}",
                    "--authorization-mode=RBAC",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    f"--service-account-issuer=https://127.0.0.1:{self.api_port}/",
                    f"--service-account-key-file={pki / 'sa.key'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--allow-privileged=true",
                    "--disable-admission-plugins=ServiceAccount",
                    "--v=0",
                ],
                logs / "kube-apiserver.log",
            )
            self._write_kubeconfig()
            self._save_state()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        with log.open("ab") as out:
            # A new session per process: stop() kills the whole group and leaves nothing behind.
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir
            )
        self.pids[name] = proc.pid

    def _write_kubeconfig(self) -> None:
        assert self.kubeconfig is not None
        ca = (self.workdir / "pki" / "ca.crt").resolve()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "sandbox",
                    "cluster": {"server": self.server, "certificate-authority": str(ca)},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "admin"}}],
            "current-context": "sandbox",
        }
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        # JSON is valid YAML, and kubectl and the Python client both read it.
        self.kubeconfig.write_text(json.dumps(cfg, indent=2))
        self.kubeconfig.chmod(0o600)

    def _save_state(self) -> None:
        self.state_file.write_text(
            json.dumps(
                {
                    "pids": self.pids,
                    "server": self.server,
                    "kubeconfig": str(self.kubeconfig),
                    "api_port": self.api_port,
                    "etcd_port": self.etcd_port,
                }
            )
        )

    def _get(self, path: str) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        req = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            for name, pid in self.pids.items():
                if not _alive(pid):
                    raise RuntimeError(f"{name} exited during start-up; see {self.workdir}/logs")
            try:
                code, body = self._get("/readyz")
                last = f"/readyz {code}: {body[:200]}"
                if code == 200:
                    code, _ = self._get("/api/v1/namespaces/default")
                    if code == 200:
                        return
                    last = f"namespace default: HTTP {code}"
            except (OSError, ssl.SSLError) as e:
                last = str(e)
            time.sleep(0.25)
        raise TimeoutError(f"control plane not ready after {READY_TIMEOUT:.0f}s: {last}")

    def stop(self) -> None:
        # apiserver first, so it does not log a storm of etcd errors while going down.
        for name in ("kube-apiserver", "etcd"):
            pid = self.pids.get(name)
            if pid:
                _kill_group(pid)
        self.pids.clear()
        if self.state_file.exists():
            self.state_file.unlink()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    def load(cls, workdir: Path) -> ControlPlane | None:
        state = workdir / "state.json"
        if not state.exists():
            return None
        data = json.loads(state.read_text())
        return cls(
            workdir=workdir,
            kubeconfig=Path(data["kubeconfig"]),
            api_port=data["api_port"],
            etcd_port=data["etcd_port"],
            pids={k: int(v) for k, v in data["pids"].items()},
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _kill_group(pid: int, grace: float = 5.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _alive(pid):
            break
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wso2_sandbox.controlplane")
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--dir", default=".sandbox/cluster", type=Path)
    p.add_argument("--kubeconfig", default=None, type=Path)
    args = p.parse_args(argv)
    workdir = args.dir.resolve()
    existing = ControlPlane.load(workdir)
    if args.action == "down":
        if existing is None:
            print("control plane: not running")
            return 0
        existing.stop()
        print("control plane: stopped")
        return 0
    if existing is not None and all(_alive(p) for p in existing.pids.values()):
        print(f"control plane: already up at {existing.server}")
        _print_exports(existing.kubeconfig)
        return 0
    kept = (workdir / "etcd-data").exists()
    t0 = time.monotonic()
    cp = ControlPlane(workdir=workdir, kubeconfig=args.kubeconfig).start()
    print(f"control plane: up at {cp.server} in {time.monotonic() - t0:.1f}s")
    if kept:
        # cluster-down keeps etcd's data, so objects of the last session are back (make reset).
        print("control plane: kept the objects of the last run (make reset starts empty)")
    _print_exports(cp.kubeconfig)
    return 0


def _print_exports(kubeconfig: Path | None) -> None:
    """The two lines to paste: this kubeconfig, and the venv's kubectl (the apiserver's minor
    version) ahead of any older one on PATH."""
    print(f"export KUBECONFIG={kubeconfig}")
    print(f"export PATH={Path(sys.executable).parent}:$PATH")


if __name__ == "__main__":
    sys.exit(main())

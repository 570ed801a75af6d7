"""The operator's OCI image, built from the Dockerfile and run as the Deployment runs it.

`hack/image.sh` (what `make image` runs) builds wso2-operator:dev with buildah, installing buildah,
podman and the base image first when they are missing. A warm build reuses every layer (seconds),
so the tests always call it and never test a stale image.

The rollout test runs the image under podman with the Deployment's securityContext translated
field by field (a field the translation does not know fails the test), the Deployment's args and
env, and a TokenRequest token of the operator's ServiceAccount mounted where a pod has it, against
a private control plane (`--all-namespaces` would otherwise act on other tests' objects) and a
fleet under load. Host networking: the apiserver and the fleet listen on loopback addresses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Kube, ready_at, wait_for
from tests.e2e.conftest import FAST, LBSampler
from tests.e2e.test_ansible import ansible_spec, roles_tarball
from tests.integration.test_manifests import NS, SA, find, install, rendered
from wso2_sandbox.controlplane import ControlPlane, free_port
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.load import LoadConfig, LoadGenerator, LoadThread, summarize, targets_from_fleet
from wso2_sandbox.manifest import fleet_manifests

pytestmark = pytest.mark.e2e

TAG = "wso2-operator:dev"
# Every container these tests start is named with this prefix, so teardown can find them all.
PREFIX = "wso2-image-test-"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Limits this sandbox accepts (podman's defaults for root get EPERM here), and runc because crun
# fails on its hybrid cgroups; neither changes what the image does.
ENGINE_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=8192:8192", "--ulimit", "nproc=4096:4096"]
# What the operator must never log: RBAC refusals, and any write that a read-only root filesystem
# or uid 10001 would refuse.
BAD_LOG = (
    "forbidden",
    "not enough permissions",
    "traceback",
    "failed to post an event",
    "read-only file system",
    "permission denied",
    "[errno 30]",
    "[errno 13]",
)

Obj = dict[str, Any]


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
    return proc


def remove_test_containers() -> list[str]:
    """Kill and remove every container these tests named; returns the names that were left."""
    names = podman("ps", "-a", "--filter", f"name=^{PREFIX}", "--format", "{{.Names}}").stdout
    left = names.split()
    for name in left:
        podman("rm", "--force", "--ignore", "--time", "0", name, check=False)
    return left


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Obj]:
    """The image built from this tree by hack/image.sh; its `podman image inspect` record. The
    tests use its ID, never the tag, which a build from another checkout may move meanwhile."""
    iidfile = tmp_path_factory.mktemp("image") / "iid"
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "image.sh")],
        capture_output=True, text=True, timeout=1500,
        env={**os.environ, "IMAGE": TAG, "IIDFILE": str(iidfile)},
    )  # fmt: skip
    assert proc.returncode == 0, f"hack/image.sh failed:\n{proc.stderr[-6000:]}{proc.stdout}"
    (info,) = json.loads(podman("image", "inspect", iidfile.read_text().strip()).stdout)
    yield info
    # Every test removes its own container, even when it fails; this is the last word.
    left = remove_test_containers()
    assert not left, f"containers left behind (now removed): {left}"


def deployment_container(objs: list[Obj] | None = None) -> tuple[Obj, Obj]:
    """The pod spec and the operator container of manifests/operator/deployment.yaml, rendered."""
    pod = find(objs or rendered(), "Deployment", "wso2-operator")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in the forms the Deployment uses (64Mi, 512Mi) as bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", quantity)
    assert m, f"quantity {quantity!r}: extend quantity_bytes"
    return int(m.group(1)) * {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, None: 1}[m.group(2)]


def security_flags(pod: Obj, container: Obj) -> list[str]:
    """podman flags for the pod's and container's securityContext and volumes. Each field is
    translated or fails the test, so a new field in the Deployment cannot be silently ignored."""
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    known_pod = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
    known_container = {
        "runAsNonRoot", "runAsUser", "runAsGroup", "allowPrivilegeEscalation",
        "readOnlyRootFilesystem", "privileged", "capabilities", "seccompProfile",
    }  # fmt: skip
    assert set(psc) <= known_pod, f"translate pod securityContext {set(psc) - known_pod}"
    assert set(csc) <= known_container, f"translate {set(csc) - known_container}"
    sc = {**psc, **csc}  # the container's fields win, as in Kubernetes
    uid, gid = sc["runAsUser"], sc.get("runAsGroup", 0)
    if sc.get("runAsNonRoot"):
        assert uid != 0, "runAsNonRoot with runAsUser 0 would not start"
    flags = ["--user", f"{uid}:{gid}"]
    if "fsGroup" in psc:
        flags += ["--group-add", str(psc["fsGroup"])]  # the kubelet adds it to every process
    # RuntimeDefault is podman's default seccomp profile too; anything else needs translating.
    for where in (psc, csc):
        assert where.get("seccompProfile", {}).get("type", "RuntimeDefault") == "RuntimeDefault"
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    assert not sc.get("privileged"), "a privileged operator is not something to test here"
    caps = sc.get("capabilities", {})
    assert set(caps) <= {"drop", "add"}, caps
    flags += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    flags += [f"--cap-add={c}" for c in caps.get("add", [])]
    if sc.get("readOnlyRootFilesystem"):
        # Only what the Deployment mounts is writable: not podman's extra /var/tmp and /run.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        vol = volumes[mount["name"]]
        assert set(vol) == {"name", "emptyDir"}, f"translate volume {vol}"
        size = vol["emptyDir"].get("sizeLimit")
        opts = "rw,nosuid,nodev,mode=0777" + (f",size={quantity_bytes(size)}" if size else "")
        flags += ["--tmpfs", f"{mount['mountPath']}:{opts}"]
    return flags


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def memory_limit(pid: int) -> int:
    """The memory limit of the cgroup pid is in (cgroup v1 or v2), in bytes."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":
            return int(Path(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read_text())
        if controllers == "" and Path(f"/sys/fs/cgroup{path}/memory.max").exists():
            return int(Path(f"/sys/fs/cgroup{path}/memory.max").read_text())
    raise AssertionError(f"no memory cgroup for {pid}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError as e:
        return 0, str(e)


# ------------------------------------------------------------------------- what is in the image

PROBE = """
import importlib, importlib.metadata as m, importlib.util as u, json, pkgutil, shutil
import wso2_operator
for mod in pkgutil.walk_packages(wso2_operator.__path__, "wso2_operator."):
    if mod.name != "wso2_operator.__main__":
        importlib.import_module(mod.name)
print(json.dumps({
    "file": wso2_operator.__file__,
    "direct_url": m.distribution("wso2-operator").read_text("direct_url.json"),
    "versions": {d.metadata["Name"]: d.version for d in m.distributions()},
    "modules": {n: u.find_spec(n) is not None for n in
                ("pip", "setuptools", "wheel", "wso2_sandbox", "tests", "ensurepip")},
    "tools": {t: shutil.which(t) for t in ("gcc", "cc", "make", "pip", "pip3")},
}))
"""


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.timeout(1800)  # a cold machine: apt, the base image, the build
def test_image_holds_the_operator_its_pins_and_nothing_to_build_with(image: Obj) -> None:
    """The image's config matches the Deployment; inside, under the Deployment's security flags,
    every module of the operator imports with the pyproject.toml pins, installed non-editable,
    and there is no pip, setuptools, wheel, compiler, source tree, test or sandbox package."""
    pod, container = deployment_container()
    cfg = image["Config"]
    uid, _, gid = cfg["User"].partition(":")
    # Numeric, so that the kubelet can check runAsNonRoot, and the Deployment's own.
    assert (uid, gid) == (str(container["securityContext"]["runAsUser"]),
                          str(container["securityContext"]["runAsGroup"])), cfg["User"]  # fmt: skip
    assert cfg["Entrypoint"] == ["python", "-m", "wso2_operator"]
    assert cfg["Cmd"] == container["args"]  # the Deployment spells out the image's default
    assert "PYTHONDONTWRITEBYTECODE=1" in cfg["Env"]  # nothing to write on a read-only root

    run = ["run", "--rm", *ENGINE_FLAGS, "--network", "none", *security_flags(pod, container)]
    iid = image["Id"]
    help_ = podman(*run, iid, "--help")
    assert "Usage: wso2-operator run [OPTIONS] [PATHS]..." in help_.stdout, help_.stdout
    for arg in container["args"]:
        flag = arg.split("=")[0]
        assert re.search(rf"(^|\s){re.escape(flag)}\b", help_.stdout, re.M), flag

    out = podman(*run, "--entrypoint", "python", iid, "-c", PROBE).stdout
    info = json.loads(out)
    assert info["file"].startswith("/opt/venv/lib/python3.11/site-packages/wso2_operator/")
    assert '"editable": true' not in (info["direct_url"] or "")
    versions = {canonical(k): v for k, v in info["versions"].items()}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name, pin = dep.split("==")
        assert versions.get(canonical(name)) == pin, (dep, versions.get(canonical(name)))
    assert not [d for d in ("pip", "setuptools", "wheel") if d in versions], versions
    assert info["modules"] == {
        "pip": False, "setuptools": False, "wheel": False, "wso2_sandbox": False,
        "tests": False, "ensurepip": info["modules"]["ensurepip"],  # the base's own business
    }, info["modules"]  # fmt: skip
    assert info["tools"] == dict.fromkeys(info["tools"]), info["tools"]

    # The image's files, seen from the host.
    root = Path(podman("image", "mount", iid).stdout.strip())
    try:
        for gone in ("src", "root/.cache", "opt/venv/bin/pip"):
            assert not (root / gone).exists(), gone
        # uid 10001 is neither owner nor group of the venv: it must be readable by others, the
        # byte code included (an unreadable .pyc is silently recompiled at every start).
        venv = root / "opt" / "venv"
        unreadable = [
            str(p.relative_to(root))
            for p in venv.rglob("*")
            if not p.is_symlink()
            and (p.stat().st_mode & 0o005 != 0o005 if p.is_dir() else p.stat().st_mode & 0o004 == 0)
        ]
        assert not unreadable, unreadable[:20]
        pyc = list(venv.rglob("wso2_operator/__pycache__/*.cpython-311.pyc"))
        assert len(pyc) >= len(list(venv.rglob("wso2_operator/*.py"))) > 0
    finally:
        podman("image", "unmount", iid, check=False)


# ---------------------------------------------------------------------- the rollout in a container


@dataclass
class Container:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    live_port: int
    metrics_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        return self.log()[-6000:]

    def pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout)


def service_account_dir(admin: Kube, cp: ControlPlane, where: Path) -> Path:
    """token, ca.crt and namespace, as the kubelet projects them into a pod: a token from the
    TokenRequest API (`kubectl create token`) for the operator's ServiceAccount."""
    token = admin.run("create", "token", "wso2-operator", "-n", NS, "--duration=1h").stdout.strip()
    where.mkdir()
    (where / "token").write_text(token)
    (where / "ca.crt").write_bytes((cp.workdir / "pki" / "ca.crt").read_bytes())
    (where / "namespace").write_text(NS)
    for f in where.iterdir():
        f.chmod(0o644)  # the projected volume's defaultMode
    where.chmod(0o755)
    return where


@contextlib.contextmanager
def operator_container(
    iid: str, cp: ControlPlane, sa_dir: Path, pod: Obj, container: Obj, log_path: Path
) -> Iterator[Container]:
    """The image on the Deployment's args (its two ports moved to free ones: with host networking
    8080 and 9090 are the host's) and env, as the ServiceAccount, until it is healthy."""
    live, metrics = free_port(), free_port()
    args = [
        a.replace("0.0.0.0:8080/", f"0.0.0.0:{live}/").replace(
            "--metrics-port=9090", f"--metrics-port={metrics}"
        )
        for a in container["args"]
    ]
    assert [a for a in args if a not in container["args"]] == [
        f"--liveness=http://0.0.0.0:{live}/healthz", f"--metrics-port={metrics}"
    ], "the Deployment's ports changed: adapt the port move above"  # fmt: skip
    env = [f"{e['name']}={e['value']}" for e in container.get("env", [])]
    env += [
        # What the kubelet sets for the `kubernetes` Service; here the apiserver itself.
        "KUBERNETES_SERVICE_HOST=127.0.0.1",
        f"KUBERNETES_SERVICE_PORT={cp.api_port}",
        "WSO2_OBSERVE_PERIOD=2",  # a shorter idle observation period, for the test's pace only
    ]
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    argv = [
        "podman", "run", "--rm", "--name", name, *ENGINE_FLAGS, "--network", "host",
        *security_flags(pod, container),
        "--cpus", str(container["resources"]["limits"]["cpu"]),
        "--memory", str(quantity_bytes(container["resources"]["limits"]["memory"])),
        "-v", f"{sa_dir}:{SA_DIR}:ro",
        *(x for e in env for x in ("-e", e)),
        iid, *args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    c = Container(name, proc, log_path, live, metrics)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the container exited ({proc.returncode}):\n{c.tail()}")
        return http_get(f"http://127.0.0.1:{live}/healthz")[0] == 200

    try:
        wait_for("/healthz", healthy, 120, c.tail)  # the startupProbe allows 24 x 5 s
        yield c
    finally:
        podman("rm", "--force", "--ignore", "--time", "0", name, check=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(1800)  # a cold machine: apt, the base image, the build
def test_container_rolls_out_under_load_as_the_deployment_runs_it(
    image: Obj, tmp_path: Path
) -> None:
    """The image, with the Deployment's security settings, args and env and the ServiceAccount's
    token, takes a WSO2Cluster to Ready at 1.0.0 and then rolls it to 2.0.0 under load: no failed
    request, never more than one node out, Ready at 2.0.0, /healthz and /metrics answer, nothing
    forbidden or unwritable in its log, and it stops cleanly within the grace period."""
    objs = rendered()
    pod, container = deployment_container(objs)
    with ControlPlane(workdir=tmp_path / "cp") as cp:
        assert cp.kubeconfig is not None
        admin = Kube(cp.kubeconfig)
        install(admin)  # kubectl apply -k manifests/: CRDs, ServiceAccount, RBAC, Deployment
        assert admin.get_json("serviceaccount", "wso2-operator", "-n", NS)
        sa_dir = service_account_dir(admin, cp, tmp_path / "serviceaccount")
        with Fleet(FleetConfig(**FAST)) as fleet:
            ns = admin.new_namespace("image")
            for doc in fleet_manifests(fleet.description, namespace=ns, version="1.0.0"):
                admin.apply(doc)

            def get() -> Obj:
                return admin.get_json("w2c", "wso2ei", "-n", ns)

            with operator_container(
                image["Id"], cp, sa_dir, pod, container, tmp_path / "op.log"
            ) as op:
                # The process is the Deployment's: uid/gid, fsGroup, no capabilities, no new
                # privileges, seccomp on, its memory limit, and a read-only root.
                pid = op.pid()
                st = proc_status(pid)
                sc = {**pod["securityContext"], **container["securityContext"]}
                assert st["Uid"].split() == [str(sc["runAsUser"])] * 4, st["Uid"]
                assert st["Gid"].split() == [str(sc["runAsGroup"])] * 4, st["Gid"]
                assert str(pod["securityContext"]["fsGroup"]) in st["Groups"].split()
                assert int(st["CapEff"], 16) == int(st["CapBnd"], 16) == 0, st
                assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
                limit = quantity_bytes(container["resources"]["limits"]["memory"])
                assert memory_limit(pid) == limit  # the rollout below runs within it
                mounts = {
                    ln.split()[4]: ln.split()[5]
                    for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                }
                assert "ro" in mounts["/"].split(","), mounts["/"]
                assert "rw" in mounts["/tmp"].split(","), mounts["/tmp"]
                # /var/run is a symlink to /run in the image, as in most distributions.
                sa_mount = mounts.get(SA_DIR) or mounts[SA_DIR.replace("/var/run/", "/run/", 1)]
                assert "ro" in sa_mount.split(","), sa_mount
                # Its only credential is the mounted token, and that token is the ServiceAccount's.
                review = admin.run("create", "-o", "json", "-f", "-", input=json.dumps({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "spec": {"token": (sa_dir / "token").read_text()},
                }))  # fmt: skip
                assert json.loads(review.stdout)["status"]["user"]["username"] == SA

                wait_for("Ready at 1.0.0", lambda: ready_at(get(), "1.0.0"), 120, op.tail)
                gen = LoadGenerator(
                    targets_from_fleet(fleet.description),
                    LoadConfig(rate=50.0, long_ms=(1000, 2000), max_seconds=240, seed=12),
                )
                with LBSampler(fleet) as sampler, LoadThread(gen) as load:
                    time.sleep(1.5)  # requests already in flight when the rollout begins
                    admin.run(
                        "patch", "w2c", "wso2ei", "-n", ns, "--type=merge",
                        "-p", '{"spec": {"version": "2.0.0"}}',
                    )  # fmt: skip
                    wait_for("Ready at 2.0.0", lambda: ready_at(get(), "2.0.0"), 180, op.tail)
                    time.sleep(0.5)
                records = load.records
                totals = summarize(records)
                assert totals["failed"] == 0, f"{totals['failures']}\n{op.tail()}"
                assert totals["total"] > 100 and totals["long_total"] > 0, totals
                assert sampler.max_out() == 1, "never more than one node out of rotation"
                assert sampler.ever_out() == {"node1", "node2", "node3"}
                for n in ("node1", "node2", "node3"):
                    assert fleet.node(n).installed_version() == "2.0.0"
                assert get()["status"]["history"][-1]["result"] == "Succeeded"

                code, body = http_get(f"http://127.0.0.1:{op.live_port}/healthz")
                assert code == 200, body
                code, body = http_get(f"http://127.0.0.1:{op.metrics_port}/metrics")
                assert code == 200, body
                started = re.search(
                    rf'^wso2_rollouts_started_total{{[^}}]*namespace="{ns}"[^}}]*}} (\S+)$',
                    body, re.M,
                )  # fmt: skip
                assert started and float(started.group(1)) >= 1, body[-3000:]
                assert "process_resident_memory_bytes" in body
                events = admin.get_json("events", "-n", ns)["items"]
                reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "wso2ei"}
                assert {"NodeUpdateStarted", "RolloutSucceeded"} <= reasons, reasons
                peering = admin.get_json("clusterkopfpeering", "wso2-operator")
                assert len(peering.get("status") or {}) == 1, peering  # its own keep-alive

                ansible_rollout(admin, ns, fleet, op, get)

                # As the kubelet stops a pod: SIGTERM, then the grace period, then SIGKILL.
                grace = pod["terminationGracePeriodSeconds"]
                t0 = time.monotonic()
                podman("stop", "--time", str(grace), op.name, timeout=grace + 30)
                rc = op.proc.wait(timeout=30)
                assert time.monotonic() - t0 < grace, "not stopped by SIGTERM within the grace"
                assert rc in (0, 143), f"exit {rc}\n{op.tail()}"

            # --rm removed it: nothing is left behind in podman.
            left = podman("ps", "-a", "--filter", f"name=^{op.name}$", "--format", "{{.Names}}")
            assert not left.stdout.strip(), left.stdout

    text = op.log()
    assert "created ClusterKopfPeering 'wso2-operator'" in text, text[-6000:]
    for bad in BAD_LOG:
        assert bad not in text.lower(), f"{bad!r} in the operator's log:\n{text[-6000:]}"


def ansible_rollout(admin: Kube, ns: str, fleet: Fleet, op: Container, get: Any) -> None:
    """The same container rolls the cluster to 3.0.0 with provision.ansible (the seed's role
    from a ConfigMap): ansible-playbook runs under the read-only root, its private data dir is
    on the writable /tmp while a play runs and is gone after."""
    admin.apply({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "wso2ei-play", "namespace": ns},
        "binaryData": {"roles.tar.gz": roles_tarball()},
    })  # fmt: skip
    work = Path(f"/proc/{op.pid()}/root/tmp/wso2-operator")
    provision = {"commands": None, "ansible": ansible_spec({"configMap": {"name": "wso2ei-play"}})}
    admin.run("patch", "w2c", "wso2ei", "-n", ns, "--type=merge",
              "-p", json.dumps({"spec": {"version": "3.0.0", "provision": provision}}))  # fmt: skip
    seen: set[str] = set()

    def ready_3() -> bool:
        seen.update(p.name for p in work.glob("run-*"))
        return ready_at(get(), "3.0.0")

    wait_for("Ready at 3.0.0 (provision.ansible)", ready_3, 180, op.tail)
    for n in ("node1", "node2", "node3"):
        ends = [e for e in fleet.node(n).events() if e["event"] == "install_end"]
        assert [e["version"] for e in ends] == ["2.0.0", "3.0.0"], (n, ends)
    last = get()["status"]["history"][-1]
    assert last["result"] == "Succeeded" and last["provisionRevision"].startswith("configmap:")
    assert seen, "no private data dir of a play was ever seen under /tmp/wso2-operator"
    assert not list(work.glob("run-*")), "a play's private data dir was left behind"

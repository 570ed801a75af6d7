"""`make demo` end to end: the demo as a subprocess with a pipe for stdout, as CI runs it.

Each test gives the demo its own --dir, so a developer's own `make demo KEEP=1` sandbox in
.sandbox/demo is never touched. The demo records every pid it starts in <dir>/demo.json; "nothing
left" means none of them is alive any more and no process on the machine still names the sandbox
dir (etcd, the apiserver, HAProxy and sshd name it on their command line, the operator in its
KUBECONFIG, every fleet process in its marker variable).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wso2_sandbox import fleet_procs
from wso2_sandbox.demo_sandbox import sandbox_processes

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "wso2_sandbox.demo", "--fast", "--timeout", "90"]
KUBECTL = str(Path(sys.executable).parent / "kubectl")
STARTED = {
    "etcd",
    "kube-apiserver",
    "operator",
    *(f"node{i}.sshd" for i in (1, 2, 3)),
    *(f"lb{i}.{what}" for i in (1, 2) for what in ("sshd", "haproxy")),
}


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "demo"
    yield d
    # A failed test must not leave a control plane and a fleet running behind it.
    if sandbox_processes(d):
        subprocess.run([*DEMO, "--down", "--dir", str(d)], cwd=REPO, timeout=60, check=False)


def run_demo(d: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DEMO, "--dir", str(d), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def recorded_pids(d: Path) -> dict[str, int]:
    state = json.loads((d / "demo.json").read_text())
    pids = {k: int(v) for k, v in state["pids"].items()}
    assert STARTED <= set(pids), f"demo.json lacks pids of {STARTED - set(pids)}"
    for p in state.get("fleet_processes", []):
        pids.setdefault(f"fleet:{p}", int(p))
    return pids


def processes_naming(d: Path) -> set[int]:
    """Live processes whose command line or environment names the sandbox dir.

    Independent of the demo's own bookkeeping: etcd, the apiserver, HAProxy, sshd and the stand-ins
    name it in their arguments, the operator in KUBECONFIG, every fleet process in its marker.
    """
    needle = f"{d.resolve()}/".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{part}", "rb") as f:
                    if needle in f.read():
                        found.add(int(entry))
            except OSError:
                pass
    return {p for p in found if fleet_procs.is_alive(p)}


def assert_nothing_left(d: Path, output: str = "") -> None:
    left = processes_naming(d) | sandbox_processes(d)
    alive = {name: pid for name, pid in recorded_pids(d).items() if pid in left}
    assert not alive, f"still running: {alive}\n{output[-3000:]}"
    assert not left, f"processes of {d} still run: {sorted(left)}\n{output[-3000:]}"
    assert json.loads((d / "demo.json").read_text())["up"] is False


def check_summary(out: str) -> None:
    assert "Summary" in out, out[-3000:]
    assert re.search(r"^\s+requests: \d+ sent, \d+ served, 0 failed$", out, re.M), out[-3000:]
    assert re.search(r"rollout time \(patch to Ready.*\): \d+\.\d s$", out, re.M), out[-3000:]
    # The value is the operator's business (tests/e2e/test_rollout.py); here, that it is reported.
    assert re.search(r"max nodes out of rotation .*: \d+ \(maxUnavailable 1\)$", out, re.M), out
    # `kubectl get w2c -o wide`: the header with the wide-only columns and the finished row
    assert re.search(
        r"^NAME\s+DESIRED\s+CURRENT\s+UPDATED\s+READY\s+PHASE\s+AGE\s+REASON", out, re.M
    )
    assert re.search(r"^wso2ei\s+2\.0\.0\s+2\.0\.0\s+3/3\s+3/3\s+Ready\s", out, re.M), out[-3000:]


@pytest.mark.timeout(180)
def test_demo_rolls_out_under_load_and_tears_down(demo_dir: Path) -> None:
    proc = run_demo(demo_dir)
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:]
    check_summary(out)
    # Off a terminal it prints a line per change, not a live table. The view polls status 4 times
    # a second, so a short phase (a fast drain) can fall between two polls: every node must be
    # seen in some phase of its update and then Current at the new version.
    busy = "Draining|Provisioning|Verifying|WaitingHealthy|Enabling|Soaking"
    for n in ("node1", "node2", "node3"):
        assert re.search(rf"^\[\+\s*[\d.]+s\] {n} \S+\s+({busy})\b", out, re.M), out[-3000:]
        assert re.search(rf"^\[\+\s*[\d.]+s\] {n} 2\.0\.0\s+Current\b", out, re.M), out[-3000:]
    assert "\x1b[" not in out, "no terminal control sequences in a log"
    assert "torn down: operator, fleet, control plane" in out
    assert_nothing_left(demo_dir, out)


@pytest.mark.timeout(180)
def test_keep_then_down(demo_dir: Path) -> None:
    proc = run_demo(demo_dir, "--keep")
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:]
    check_summary(out)
    m = re.search(r"^\s*export KUBECONFIG=(\S+)$", out, re.M)
    assert m, out[-3000:]
    kubeconfig = Path(m.group(1))
    assert kubeconfig == (demo_dir / "kubeconfig").resolve()
    assert re.search(rf"-m wso2_sandbox\.demo --down --dir {re.escape(str(demo_dir))}$", out, re.M)

    # Still up: every recorded process alive, and the printed KUBECONFIG works for kubectl.
    pids = recorded_pids(demo_dir)
    dead = {n: p for n, p in pids.items() if n in STARTED and not fleet_procs.is_alive(p)}
    assert not dead, f"--keep left these dead: {dead}"
    got = subprocess.run(
        [
            KUBECTL,
            "get",
            "w2c",
            "wso2ei",
            "-o",
            "jsonpath={.status.phase} {.status.currentVersion}",
        ],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.stdout == "Ready 2.0.0", got.stderr

    down = subprocess.run(
        [*DEMO, "--down", "--dir", str(demo_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped: operator, fleet, control plane" in down.stdout
    assert_nothing_left(demo_dir, down.stdout)
    again = subprocess.run(
        [*DEMO, "--down", "--dir", str(demo_dir)], cwd=REPO, capture_output=True, text=True
    )
    assert again.returncode == 0 and "nothing was running" in again.stdout


@pytest.mark.timeout(120)
def test_ctrl_c_mid_rollout_tears_down(demo_dir: Path) -> None:
    # Its own process group, so SIGINT goes to the whole group as a terminal's Ctrl-C does
    # (kubectl children included), and not to pytest.
    proc = subprocess.Popen(
        [*DEMO, "--dir", str(demo_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            # The first frame after the patch: load, operator and the live loop all at work.
            if line.startswith("[+"):
                break
        else:
            pytest.fail("the rollout never started:\n" + "".join(lines)[-3000:])
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-3000:]
    assert "SIGINT: tearing down" in out
    assert "torn down: operator, fleet, control plane" in out
    assert_nothing_left(demo_dir, out)


@pytest.mark.timeout(180)
def test_bad_release_is_caught_rolled_back_and_shown(demo_dir: Path) -> None:
    proc = run_demo(demo_dir, "--scenario", "bad-release")
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:]
    ts = r"^\[\+\s*[\d.]+s\]"
    # The view shows the canary step, each analysis window, the verdict and Degraded.
    assert re.search(rf"{ts} canary step \d/\d", out, re.M), out[-5000:]
    assert re.search(
        rf"{ts} window \S+ node\d: \d+ req, \d+ errors [\d.]+% vs baseline [\d.]+% .*-> Bad",
        out,
        re.M,
    ), out[-5000:]
    assert re.search(rf"{ts} analysis Failed: node\d: error rate", out, re.M), out[-5000:]
    assert re.search(rf"{ts} Degraded RolledBack", out, re.M), out[-5000:]
    # The summary: caught, taken out, rolled back; only the bad build's own answers failed.
    m = re.search(r"^\s+nodes that ever answered as 2\.0\.0: (node\d)$", out, re.M)
    assert m, out[-5000:]
    for what in (
        "caught \\(status.analysis Failed\\)",
        r"\S+ out of rotation .*",
        "rolled back .*",
    ):
        assert re.search(rf"^\s+{what}: \d+\.\d s", out, re.M), (what, out[-5000:])
    assert re.search(r"failed: [1-9]\d* answered by 2\.0\.0, 0 other$", out, re.M), out[-5000:]
    assert re.search(r"^wso2ei\s+2\.0\.0\s+1\.0\.0\s", out, re.M), out[-3000:]
    assert "torn down: operator, fleet, control plane" in out
    assert_nothing_left(demo_dir, out)

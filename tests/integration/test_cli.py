"""`kubectl w2c` against the real kube-apiserver, run the way a user runs it.

Every command here is the real `kubectl` from the venv, with the venv's bin first on PATH, so
`kubectl w2c ...` only works if kubectl's plugin discovery finds the `kubectl-w2c` console script
that `pip install -e .` put there. Status is written through the status subresource, as the
operator writes it (no operator runs here: the plugin only reads status and writes spec and
annotations). Statuses come from tests/fixtures/status (captured from real rollouts).
"""

from __future__ import annotations

import copy
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import KUBECTL, REPO, Kube

BIN = Path(sys.executable).parent
FIXTURES = REPO / "tests" / "fixtures" / "status"


def plugin_env(kube: Kube, **extra: str) -> dict[str, str]:
    env = {**kube.env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


def w2c(kube: Kube, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [KUBECTL, "w2c", *args],
        capture_output=True,
        text=True,
        env=env or plugin_env(kube),
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr}{proc.stdout}"
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """A failure is exactly one line on stderr, starting "error: ", and no traceback."""
    assert proc.returncode == code, f"rc={proc.returncode}\n{proc.stderr}{proc.stdout}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def make_cluster(
    kube: Kube,
    ns: str,
    source: str,
    name: str | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """A WSO2Cluster with the spec and status of a fixture, status observed for its generation."""
    fx = fixture(source)
    name = name or f"c-{uuid.uuid4().hex[:6]}"
    md: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        md["annotations"] = annotations
    if labels:
        md["labels"] = labels
    obj = {"apiVersion": fx["apiVersion"], "kind": fx["kind"], "metadata": md, "spec": fx["spec"]}
    kube.run("create", "-f", "-", input=json.dumps(obj))
    if fx.get("status"):
        set_status(kube, ns, name, fx["status"])
    return name


def set_status(kube: Kube, ns: str, name: str, status: dict[str, Any]) -> None:
    """Write status as the operator would: observedGeneration is the object's generation."""
    gen = kube.get_json("w2c", name, "-n", ns)["metadata"]["generation"]
    status = copy.deepcopy(status)
    status["observedGeneration"] = gen
    for c in status.get("conditions") or []:
        c["observedGeneration"] = gen
    patch_status(kube, ns, name, status)


def patch_status(kube: Kube, ns: str, name: str, status: dict[str, Any]) -> None:
    kube.run(
        "patch", "w2c", name, "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def get(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return kube.get_json("w2c", name, "-n", ns)


@pytest.fixture(scope="module")
def ns(kube: Kube) -> str:
    return kube.new_namespace("cli")


# --- discovery ---------------------------------------------------------------------------------


def test_kubectl_discovers_the_plugin_on_path(kube: Kube) -> None:
    listed = subprocess.run(
        [KUBECTL, "plugin", "list"], capture_output=True, text=True, env=plugin_env(kube)
    )
    assert str(BIN / "kubectl-w2c") in listed.stdout, listed.stdout + listed.stderr
    help_text = ok(w2c(kube, "--help"))
    for verb in (
        "get",
        "list",
        "pause",
        "resume",
        "retry",
        "promote",
        "abort",
        "restart",
        "history",
    ):
        assert verb in help_text
    # Without the venv on PATH kubectl does not find it: the discovery above is what made it work.
    bare = subprocess.run(
        [KUBECTL, "w2c", "list"],
        capture_output=True,
        text=True,
        env={**kube.env, "PATH": "/usr/bin:/bin"},
    )
    assert bare.returncode != 0
    module = subprocess.run(
        [sys.executable, "-m", "wso2_operator.cli", "--help"], capture_output=True, text=True
    )
    assert module.returncode == 0 and "wait" in module.stdout


# --- get and list ------------------------------------------------------------------------------


def test_get_shows_a_canary_rollout_in_progress(kube: Kube, ns: str) -> None:
    name = make_cluster(kube, ns, "handmade-step-paused-timed")
    out = ok(w2c(kube, "get", name, "-n", ns))
    assert re.search(r"^Phase:\s+Paused \(StepPaused\)$", out, re.M), out
    assert re.search(r"^Version:\s+desired 2.0.0, current -, target 2.0.0$", out, re.M), out
    assert re.search(r"^Step:\s+2/3: paused until 2026-11-25T13:28:05Z", out, re.M), out
    assert re.search(r"^Analysis:\s+Running: node1: 2/3 good windows$", out, re.M), out
    assert re.search(r"^node1\s+2.0.0\s+Current\s+UP\s+UP\s+yes\s+Running 2/0/0\s", out, re.M)
    assert re.search(r"^node2\s+1.0.0\s+Outdated\s+UP\s+UP\s+yes\s+-\s", out, re.M), out
    assert "\x1b[" not in out  # not a terminal: no colours

    as_json = json.loads(ok(w2c(kube, "get", name, "-n", ns, "-o", "json")))
    assert as_json["metadata"]["name"] == name
    assert as_json["status"]["rollout"]["stepIndex"] == 1
    as_yaml = yaml.safe_load(ok(w2c(kube, "get", name, "-n", ns, "-o", "yaml")))
    assert as_yaml["spec"]["version"] == "2.0.0"


def test_get_shows_a_failed_analysis_per_node(kube: Kube, ns: str) -> None:
    name = make_cluster(kube, ns, "handmade-analysis-failed-pause")
    out = ok(w2c(kube, "get", name, "-n", ns))
    assert re.search(r"^Phase:\s+Degraded \(AnalysisFailed\)$", out, re.M), out
    assert re.search(r"^node1\s+2.0.0\s+Failed\s+MAINT\s+MAINT\s+yes\s+Failed 0/2/0\s", out, re.M)
    assert "13:27:21Z node1 Bad: 520 req, 9.8% errors (baseline 0.0%)" in out, out


def test_list_honours_namespace_all_namespaces_and_the_contexts_namespace(
    kube: Kube, tmp_path: Path
) -> None:
    ns1, ns2 = kube.new_namespace("cli"), kube.new_namespace("cli")
    a = make_cluster(kube, ns1, "progressing", name="alpha")
    b = make_cluster(kube, ns2, "ready", name="beta")

    in_ns1 = ok(w2c(kube, "list", "-n", ns1))
    assert re.search(
        rf"^{a}\s+2.0.0\s+1.0.0\s+0/3\s+2/3\s+Progressing\s+RolloutInProgress", in_ns1, re.M
    )
    assert b not in in_ns1

    everywhere = ok(w2c(kube, "list", "-A"))
    assert re.search(rf"^{ns1}\s+{a}\s", everywhere, re.M), everywhere
    assert re.search(rf"^{ns2}\s+{b}\s+1.0.0\s+1.0.0\s+3/3\s+3/3\s+Ready\s", everywhere, re.M)

    # A kubeconfig whose second context defaults to ns2, chosen with --kubeconfig and --context.
    cfg = json.loads(kube.kubeconfig.read_text())
    ctx = copy.deepcopy(cfg["contexts"][0])
    ctx["name"] = "in-ns2"
    ctx["context"]["namespace"] = ns2
    cfg["contexts"].append(ctx)
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(cfg))
    env = plugin_env(kube, KUBECONFIG="/nonexistent/kubeconfig")
    via_context = ok(w2c(kube, "list", "--kubeconfig", str(path), "--context", "in-ns2", env=env))
    assert re.search(rf"^{b}\s", via_context, re.M) and a not in via_context, via_context
    listed = json.loads(
        ok(w2c(kube, "--kubeconfig", str(path), "list", "-n", ns1, "-o", "json", env=env))
    )
    assert [i["metadata"]["name"] for i in listed["items"]] == [a]


# --- steering ----------------------------------------------------------------------------------


def test_pause_and_resume_set_spec_update_paused(kube: Kube, ns: str) -> None:
    name = make_cluster(kube, ns, "progressing")
    out = ok(w2c(kube, "pause", name, "-n", ns))
    assert "spec.update.paused false -> true" in out, out
    assert get(kube, ns, name)["spec"]["update"]["paused"] is True
    again = ok(w2c(kube, "pause", name, "-n", ns))
    assert "already true; nothing changed" in again
    out = ok(w2c(kube, "resume", name, "-n", ns))
    assert "spec.update.paused true -> false" in out, out
    assert get(kube, ns, name)["spec"]["update"]["paused"] is False


@pytest.mark.parametrize(
    ("verb", "annotation"),
    [
        (["promote"], "vmops.dev/promote"),
        (["promote", "--full"], "vmops.dev/promote-full"),
        (["abort"], "vmops.dev/abort"),
        (["retry"], "vmops.dev/retry"),
    ],
)
def test_steering_verbs_set_a_new_annotation_value(
    kube: Kube, ns: str, verb: list[str], annotation: str
) -> None:
    name = make_cluster(kube, ns, "handmade-step-paused-indefinite")
    values = []
    for _ in range(2):
        out = ok(w2c(kube, verb[0], name, "-n", ns, *verb[1:]))
        value = get(kube, ns, name)["metadata"]["annotations"][annotation]
        assert f"annotation {annotation}={value}" in out, out
        values.append(value)
    assert values[0] != values[1]  # each call is a new request, even within the same second
    if annotation == "vmops.dev/retry":  # the fixture's rollout has not failed: say so
        assert "note: status shows no failed version to retry" in out
    else:
        assert "note:" not in out, out


def test_restart_sets_a_new_spec_restarted_at(kube: Kube, ns: str) -> None:
    """Each call is a new rolling restart, even within the same second; the value passes the
    CRD's validation (the apiserver would refuse the patch otherwise)."""
    name = make_cluster(kube, ns, "ready")
    values = []
    for _ in range(2):
        out = ok(w2c(kube, "restart", name, "-n", ns))
        value = get(kube, ns, name)["spec"]["restartedAt"]
        assert f"spec.restartedAt={value}" in out, out
        assert "the version unchanged" in out
        values.append(value)
    assert values[0] != values[1]
    assert f"(was {values[0]})" in out
    assert get(kube, ns, name)["spec"]["version"] == fixture("ready")["spec"]["version"]


# --- history and undo --------------------------------------------------------------------------


def test_history_and_undo(kube: Kube, ns: str) -> None:
    name = make_cluster(kube, ns, "rolled-back")  # spec 3.0.0; 2.0.0 failed, then succeeded
    out = ok(w2c(kube, "history", name, "-n", ns))
    rows = out.splitlines()
    assert rows[0].split()[:4] == ["REVISION", "FROM", "TO", "RESULT"]
    assert [r.split()[:4] for r in rows[1:]] == [
        ["1", "1.0.0", "2.0.0", "Failed"],
        ["2", "1.0.0", "2.0.0", "Succeeded"],
        ["3", "2.0.0", "3.0.0", "RolledBack"],
    ]
    assert len(json.loads(ok(w2c(kube, "history", name, "-n", ns, "-o", "json")))) == 3

    out = ok(w2c(kube, "undo", name, "-n", ns))
    assert "spec.version 3.0.0 -> 2.0.0 (revision 2, the last that succeeded)" in out, out
    assert get(kube, ns, name)["spec"]["version"] == "2.0.0"

    out = ok(w2c(kube, "undo", name, "-n", ns, "--to-revision", "3"))
    assert "spec.version 2.0.0 -> 3.0.0 (revision 3 (RolledBack))" in out, out
    assert get(kube, ns, name)["spec"]["version"] == "3.0.0"

    line = one_line_error(w2c(kube, "undo", name, "-n", ns, "--to-revision", "9"))
    assert "no revision 9 (revisions: 1..3" in line
    assert get(kube, ns, name)["spec"]["version"] == "3.0.0"


@pytest.mark.parametrize(
    "marks",
    [
        {"annotations": {"argocd.argoproj.io/tracking-id": "apps:vmops.dev/WSO2Cluster:x/y"}},
        {"labels": {"app.kubernetes.io/instance": "apps"}},
    ],
)
def test_undo_refuses_an_object_argo_cd_manages(kube: Kube, ns: str, marks: dict) -> None:
    name = make_cluster(kube, ns, "rolled-back", **marks)
    line = one_line_error(w2c(kube, "undo", name, "-n", ns))
    assert "managed by Argo CD" in line and "revert spec.version in Git" in line, line
    key = next(iter(next(iter(marks.values()))))
    assert key in line
    assert get(kube, ns, name)["spec"]["version"] == "3.0.0"


# --- watching ----------------------------------------------------------------------------------


def read_until(fd: int, pattern: str, timeout: float = 20) -> str:
    """Read from fd until the text read so far matches pattern; fail on timeout or EOF."""
    buf = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, buf.decode("utf-8", "replace"), re.S):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {pattern!r}; got:\n{buf.decode()}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty whose other end closed
                chunk = b""
            assert chunk, f"EOF before {pattern!r}; got:\n{buf.decode()}"
            buf += chunk
    return buf.decode("utf-8", "replace")


def nothing_more(fd: int, seconds: float) -> bool:
    return not select.select([fd], [], [], seconds)[0]


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def test_get_watch_prints_one_line_per_change_when_piped(
    kube: Kube, ns: str, stop: list[subprocess.Popen]
) -> None:
    name = make_cluster(kube, ns, "progressing")
    proc = subprocess.Popen(
        [KUBECTL, "w2c", "get", name, "-n", ns, "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=plugin_env(kube),
    )
    stop.append(proc)
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    first = read_until(fd, r"\n")
    assert re.fullmatch(
        rf"\S+Z {name} Progressing RolloutInProgress desired=2.0.0 updated=0/3 ready=2/3 "
        r"node1=Provisioning:1/3\[MAINT,MAINT\] node2=Outdated\[UP,UP\] node3=Outdated\[UP,UP\] "
        r"\| 0/3 at 2.0.0; node1 Provisioning\n",
        first,
    ), first

    node1 = get(kube, ns, name)["status"]["nodes"]
    node1[0] = {**node1[0], "phase": "Verifying", "version": "2.0.0"}
    patch_status(kube, ns, name, {"nodes": node1})
    second = read_until(fd, r"\n")
    assert f"{name} Progressing" in second and "node1=Verifying[MAINT,MAINT]" in second, second

    # A write that changes nothing shown (the operator's heartbeat) prints nothing ...
    patch_status(kube, ns, name, {"lastObservedTime": "2026-11-25T13:30:00Z"})
    assert nothing_more(fd, 1.5)
    # ... and the next real change does.
    patch_status(kube, ns, name, {"phase": "Degraded"})
    third = read_until(fd, r"\n")
    assert f"{name} Degraded" in third, third
    assert proc.poll() is None  # still watching


def test_get_watch_redraws_on_a_terminal(kube: Kube, ns: str, stop: list[subprocess.Popen]) -> None:
    name = make_cluster(kube, ns, "progressing")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [KUBECTL, "w2c", "get", name, "-n", ns, "-w"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=plugin_env(kube, TERM="xterm"),
        close_fds=True,
    )
    os.close(slave)
    stop.append(proc)
    try:
        screen = read_until(master, r"\x1b\[H\x1b\[2J.*Ctrl-C to stop")
        assert re.search(r"Phase:\s+\x1b\[36mProgressing\x1b\[0m", screen), screen  # coloured
        patch_status(kube, ns, name, {"phase": "Degraded"})
        screen = read_until(master, r"Phase:\s+\x1b\[31mDegraded\x1b\[0m.*Ctrl-C to stop")
        assert screen.count("\x1b[H\x1b[2J") == 1  # the screen was cleared and drawn anew
    finally:
        os.close(master)


def test_no_color_is_respected_on_a_terminal(kube: Kube, ns: str) -> None:
    name = make_cluster(kube, ns, "degraded")
    for extra, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [KUBECTL, "w2c", "get", name, "-n", ns],
            stdout=slave,
            stderr=slave,
            env=plugin_env(kube, TERM="xterm", **extra),
        )
        os.close(slave)
        try:
            out = read_until(master, r"MESSAGE.*node3[^\n]*\n")
        finally:
            proc.wait(timeout=30)
            os.close(master)
        assert proc.returncode == 0
        assert ("\x1b[31mDegraded" in out) is coloured, out


# --- wait --------------------------------------------------------------------------------------


def test_wait_exit_codes(kube: Kube, ns: str) -> None:
    ready = make_cluster(kube, ns, "ready")
    out = ok(w2c(kube, "wait", ready, "-n", ns, "--timeout", "10s"))
    assert f"wso2cluster/{ready} (namespace {ns}) is ready" in out, out

    progressing = make_cluster(kube, ns, "progressing")
    started = time.monotonic()
    proc = w2c(kube, "wait", progressing, "-n", ns, "--timeout", "2s")
    line = one_line_error(proc, code=2)
    assert "timed out after 2s" in line and "Progressing" in line, line
    assert time.monotonic() - started < 20

    failed = make_cluster(kube, ns, "degraded")  # 2.0.0 failed, spec still 2.0.0
    line = one_line_error(w2c(kube, "wait", failed, "-n", ns, "--timeout", "30s"), code=3)
    assert "will not be ready: 2.0.0 failed" in line, line
    ok(w2c(kube, "wait", failed, "-n", ns, "--for", "degraded", "--timeout", "10s"))
    one_line_error(w2c(kube, "wait", ready, "-n", ns, "--for", "paused", "--timeout", "1s"), 2)

    # After `retry` the failure is no longer final: wait keeps waiting (and here times out).
    ok(w2c(kube, "retry", failed, "-n", ns))
    one_line_error(w2c(kube, "wait", failed, "-n", ns, "--timeout", "2s"), code=2)

    paused = make_cluster(kube, ns, "handmade-step-paused-indefinite")
    ok(w2c(kube, "wait", paused, "-n", ns, "--for", "paused", "--timeout", "10s"))


def test_wait_returns_when_the_status_changes(kube: Kube, ns: str) -> None:
    name = make_cluster(kube, ns, "progressing")
    proc = subprocess.Popen(
        [KUBECTL, "w2c", "wait", name, "-n", ns, "--for", "ready", "--timeout", "60s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=plugin_env(kube),
    )
    try:
        time.sleep(1.5)
        assert proc.poll() is None  # still waiting: it is not ready
        set_status(kube, ns, name, fixture("ready-after-retry")["status"])
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "is ready: phase Ready (AllNodesReady" in out, out


# --- errors ------------------------------------------------------------------------------------


def test_no_such_cluster_is_one_line(kube: Kube, ns: str) -> None:
    for verb in (["get"], ["pause"], ["promote"], ["undo"], ["history"], ["wait"]):
        line = one_line_error(w2c(kube, *verb, "missing", "-n", ns))
        assert line == f'error: wso2cluster "missing" not found in namespace "{ns}"', line


def test_forbidden_is_one_line(kube: Kube, ns: str, tmp_path: Path) -> None:
    name = make_cluster(kube, ns, "ready")
    sa = f"viewer-{uuid.uuid4().hex[:6]}"
    kube.run("create", "serviceaccount", sa, "-n", ns)
    token = kube.run("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
    cfg = json.loads(kube.kubeconfig.read_text())
    cfg["users"].append({"name": sa, "user": {"token": token}})
    cfg["contexts"].append({"name": sa, "context": {"cluster": "sandbox", "user": sa}})
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(cfg))
    env = plugin_env(kube, KUBECONFIG=str(path))
    line = one_line_error(w2c(kube, "--context", sa, "get", name, "-n", ns, env=env))
    assert line.startswith("error: forbidden: ") and f"system:serviceaccount:{ns}:{sa}" in line
    line = one_line_error(w2c(kube, "list", "-A", "--context", sa, env=env))
    assert line.startswith("error: forbidden: "), line
    # The same kubeconfig with its own (admin) context works.
    ok(w2c(kube, "get", name, "-n", ns, env=env))


def test_no_kubeconfig_and_bad_usage_are_one_line(kube: Kube, tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": ""}
    env = plugin_env(kube, KUBECONFIG=str(tmp_path / "none"), **home)
    line = one_line_error(w2c(kube, "list", env=env))
    assert line.startswith("error: no kubeconfig:") and "--kubeconfig" in line, line
    env.pop("KUBECONFIG")
    assert "/.kube/config not found" in one_line_error(w2c(kube, "list", env=env))
    line = one_line_error(w2c(kube, "list", "--kubeconfig", str(tmp_path / "nope")))
    assert line == f"error: kubeconfig {tmp_path / 'nope'} does not exist", line
    line = one_line_error(w2c(kube, "list", "--context", "no-such-context"))
    assert "no-such-context" in line, line

    cfg = json.loads(kube.kubeconfig.read_text())
    cfg["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    dead = tmp_path / "dead"
    dead.write_text(json.dumps(cfg))
    line = one_line_error(w2c(kube, "list", "--kubeconfig", str(dead)))
    assert line.startswith("error: cannot reach the server at https://127.0.0.1:1"), line

    assert "the following arguments are required: NAME" in one_line_error(w2c(kube, "get"))
    assert "-A applies to list only" in one_line_error(w2c(kube, "get", "x", "-A"))
    assert "invalid duration" in one_line_error(w2c(kube, "wait", "x", "--timeout", "soon"))

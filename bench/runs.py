"""One timed rollout under load: the operator's, or the seed play's."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.analysis import CHECK_INTERVAL, finish_run, first_event
from bench.kube import CLUSTER_NAME, Kube, OperatorProcess, cluster_done, rolled_back
from bench.paths import ANSIBLE_PLAYBOOK, REPO, SEED_DIR
from bench.profiles import (
    ANSIBLE_CONFIGMAP,
    FROM_VERSION,
    TO_VERSION,
    Profile,
    RunOptions,
    RunResult,
)
from bench.sampling import LBSampler, all_serving
from wso2_sandbox.fleet import Fleet
from wso2_sandbox.load import LoadGenerator, LoadThread, targets_from_fleet
from wso2_sandbox.manifest import fleet_manifests


@contextlib.contextmanager
def _load_and_sampler(
    fleet: Fleet, profile: Profile, opts: RunOptions
) -> Iterator[tuple[LoadThread, LBSampler]]:
    # Bounded even if the rollout hangs: warm-up + rollout deadline + tail, plus a margin.
    cfg = profile.load_config(opts.warmup + opts.rollout_timeout + opts.tail + 60)
    load = LoadThread(LoadGenerator(targets_from_fleet(fleet.description), cfg))
    sampler = LBSampler(fleet.lbs)
    with sampler:
        load.start()
        try:
            yield load, sampler
        finally:
            with contextlib.suppress(Exception):
                load.stop()


def _observe(t0: float, profile: Profile, opts: RunOptions) -> None:
    """The tail after the rollout, or up to the profile's observed window if that ends later."""
    time.sleep(max(opts.tail, t0 + profile.observe_seconds - time.time()))


def _bad_version(profile: Profile) -> str | None:
    return TO_VERSION if TO_VERSION in profile.faults else None


def _log_dir(log_dir: Path | None, opts: RunOptions, prefix: str) -> Path:
    """The caller's log directory, else the run's artifacts directory, else a fresh temp one."""
    log_dir = log_dir or opts.artifacts or Path(tempfile.mkdtemp(prefix=prefix))
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir


def seed_role_configmap(namespace: str) -> dict[str, Any]:
    """The seed's roles/ as a tar.gz in a ConfigMap, the content of profiles.ANSIBLE_PROVISION."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(SEED_DIR / "roles", arcname="roles")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ANSIBLE_CONFIGMAP, "namespace": namespace},
        "binaryData": {"roles.tar.gz": base64.b64encode(buf.getvalue()).decode()},
    }


def run_operator(
    kube: Kube,
    fleet: Fleet,
    profile: Profile,
    opts: RunOptions | None = None,
    *,
    name: str = "operator",
    log_dir: Path | None = None,
    update: dict[str, Any] | None = None,
    provision: dict[str, Any] | None = None,
) -> RunResult:
    """The operator rolls `fleet` from 1.0.0 to 2.0.0 under load. `fleet` must be started.

    `update` goes into spec.update (e.g. profiles.ANALYSIS_UPDATE). `provision` replaces
    spec.provision (profiles.ANSIBLE_PROVISION: the seed's role, whose ConfigMap is applied too).
    The run ends when the cluster is Ready at 2.0.0, or rolled back to 1.0.0 (a failed analysis
    with failurePolicy Rollback).
    """
    opts = opts or RunOptions()
    log_dir = _log_dir(log_dir, opts, "bench-op-")
    ns = kube.new_namespace(f"bench-{profile.name}")
    result = RunResult(name=name, profile=profile.name, peak_rss_of="operator VmHWM")
    result.extra["namespace"] = ns
    if update:
        result.extra["update"] = update
    docs = fleet_manifests(
        fleet.description, name=CLUSTER_NAME, namespace=ns, version=FROM_VERSION, update=update
    )
    if provision:
        result.extra["provision"] = provision
        for doc in docs:
            if doc["kind"] == "WSO2Cluster":
                doc["spec"]["provision"] = provision
        docs.insert(0, seed_role_configmap(ns))
    kube.apply(docs, ns)
    op = OperatorProcess(
        kube.kubeconfig,
        ns,
        log_dir / "operator.log",
        profile_path=(log_dir / "operator-pyinstrument.txt") if opts.pyinstrument else None,
        metrics_port=_free_port(),
    )
    op.start()
    phases: list[dict[str, Any]] = []
    try:
        t_start = time.monotonic()
        kube.wait_cluster(ns, cluster_done, 90, "initial Ready", diagnose=op.log_tail)
        result.extra["operator_ready_after_start_seconds"] = round(time.monotonic() - t_start, 2)
        with _load_and_sampler(fleet, profile, opts) as (load, sampler):
            time.sleep(opts.warmup)
            t0 = time.time()
            kube.patch_version(ns, TO_VERSION)
            obj = kube.wait_cluster(
                ns,
                lambda o: cluster_done(o, TO_VERSION) or rolled_back(o, FROM_VERSION),
                opts.rollout_timeout,
                f"Ready at {TO_VERSION} or rolled back to {FROM_VERSION}",
                poll=0.25,
                diagnose=op.log_tail,
                timeline=phases,
            )
            t_done = time.time()
            result.extra["outcome"] = (
                f"rolled back to {FROM_VERSION}" if rolled_back(obj, FROM_VERSION) else "Ready"
            )
            if analysis := (obj.get("status") or {}).get("analysis"):
                result.extra["analysis"] = analysis
            # Which content the nodes ran (provision.ansible): configmap:NAME@VERSION:sha256:...
            if rev := (((obj.get("status") or {}).get("history") or [{}])[-1]).get(
                "provisionRevision"
            ):
                result.extra["provision_revision"] = rev
            n = len(fleet.lbs)
            sampler.wait(lambda s: all_serving(s, n), 30, after=t_done)
            _observe(t0, profile, opts)
            records = load.stop()
        result.done_seconds = round(t_done - t0, 3)
        result.peak_rss_kib = op.peak_rss_kib()
        result.extra["operator_metrics"] = op.step_metrics()
        result.extra["phase_timeline"] = [
            {"t": round(p["t"] - t0, 3), "phases": p["phases"]} for p in phases
        ]
        if not op.alive():
            result.error = f"operator exited with {op.proc.returncode if op.proc else '?'}"
    finally:
        with contextlib.suppress(Exception):
            result.peak_rss_kib = result.peak_rss_kib or op.peak_rss_kib()
        op.stop()
    return finish_run(
        result,
        t0=t0,
        fleet=fleet,
        sampler=sampler,
        records=records,
        opts=opts,
        bad_version=_bad_version(profile),
        window=profile.observe_seconds or None,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_inventory(description: dict[str, Any]) -> str:
    import jinja2  # an Ansible dependency (the bench extra), so only needed for seed runs

    template = jinja2.Template((SEED_DIR / "inventory.yml.j2").read_text(), autoescape=False)
    return template.render(**description)


def _profile_tasks(text: str) -> list[tuple[str, float]]:
    """(task, seconds) from the profile_tasks recap at the end of an ansible-playbook run."""
    recap = text.rsplit("TASKS RECAP", 1)[-1]
    out = []
    for line in recap.splitlines():
        m = re.match(r"^(?P<name>\S.*?) -{3,} (?P<s>\d+(?:\.\d+)?)s\s*$", line.strip())
        if m and not m.group("name").startswith("/"):
            out.append((m.group("name"), float(m.group("s"))))
    return out


def _wait4(pid: int, timeout: float) -> tuple[int, int]:
    """(exit code, ru_maxrss KiB) of a child, which is killed at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return os.waitstatus_to_exitcode(status), ru.ru_maxrss
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _, status, ru = os.wait4(pid, 0)
            return -9, ru.ru_maxrss
        time.sleep(0.05)


def run_seed(
    fleet: Fleet,
    profile: Profile,
    opts: RunOptions | None = None,
    *,
    delay: int = 20,
    name: str = "seed",
    log_dir: Path | None = None,
) -> RunResult:
    """The seed's play rolls `fleet` from 1.0.0 to 2.0.0 under load."""
    opts = opts or RunOptions()
    log_dir = _log_dir(log_dir, opts, "bench-seed-")
    inventory = log_dir / "inventory.yml"
    inventory.write_text(render_inventory(fleet.description))
    result = RunResult(name=name, profile=profile.name, peak_rss_of="ansible (largest process)")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(SEED_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    argv = [
        ANSIBLE_PLAYBOOK,
        "-i", str(inventory),
        str(SEED_DIR / "rolling-update.yml"),
        "-e", f"wso2_target_version={TO_VERSION}",
        "-e", f"seed_wait_delay={delay}",
    ]  # fmt: skip
    log_path = log_dir / "ansible.log"
    with _load_and_sampler(fleet, profile, opts) as (load, sampler):
        time.sleep(opts.warmup)
        t0 = time.time()
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                start_new_session=True,
            )  # fmt: skip
        rc, maxrss = _wait4(proc.pid, opts.rollout_timeout)
        proc.returncode = rc  # reaped by wait4 above; tell Popen so it does not wait again
        t_done = time.time()

        # The play may end before the last node is really back: with delay 0 it enables a node
        # that is not ready yet, the LB marks it DOWN, and it only returns once ready.
        def last_ready() -> float | None:
            ts = [first_event(n.events(), "ready", t0, TO_VERSION) for n in fleet.nodes]
            return None if None in ts else max(t for t in ts if t is not None)

        deadline = time.monotonic() + 60
        while (rd := last_ready()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if rd is not None:
            n = len(fleet.lbs)
            with contextlib.suppress(TimeoutError):
                sampler.wait(
                    lambda s: all_serving(s, n), 30, after=max(t_done, rd + 2 * CHECK_INTERVAL)
                )
        _observe(t0, profile, opts)
        records = load.stop()
    text = log_path.read_text(errors="replace")
    tasks = _profile_tasks(text)
    result.done_seconds = round(t_done - t0, 3)
    result.peak_rss_kib = maxrss
    result.extra.update(
        ansible_rc=rc,
        wait_for_delay=delay,
        gather_facts_seconds=round(sum(s for n, s in tasks if n == "Gathering Facts"), 2),
        ansible_tasks=tasks,
    )
    if rc != 0:
        result.error = f"ansible-playbook exited {rc}; see {log_path}"
    return finish_run(
        result,
        t0=t0,
        fleet=fleet,
        sampler=sampler,
        records=records,
        opts=opts,
        bad_version=_bad_version(profile),
        window=profile.observe_seconds or None,
    )

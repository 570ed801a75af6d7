"""spec.provision.ansible and run-once hooks end to end: the seed's own role (bench/seed/roles)
from a ConfigMap and from a Git repository, on the real fleet, under load, with kill -9."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Env, LBSampler, installs_completed
from wso2_sandbox.load import LoadConfig, LoadGenerator, LoadThread, targets_from_fleet
from wso2_sandbox.manifest import fleet_manifests

pytestmark = pytest.mark.e2e

SEED_ROLES = Path(__file__).resolve().parents[2] / "bench" / "seed" / "roles"
SECRET = "s3cr3t-LICENSE-4242"
# The seed's inventory gives each node wso2ei_lb_server; here the inventory name is the node name.
GROUP_VARS = {
    "wso2ei_lb_server": "{{ inventory_hostname }}",
    "wso2ei_lb_backend": "PRD_wso2ei",
    # Every fleet host is this machine: name the interpreter, as bench/seed/ansible.cfg does.
    "ansible_python_interpreter": "/usr/bin/python3",
}
# One failing no_log task: its secret must never reach status, Events or the operator log.
NO_LOG_PLAY = """
- hosts: wso2ei
  gather_facts: false
  tasks:
    - name: Register the license
      ansible.builtin.shell: >-
        echo registering {{ license_key }}; echo {{ license_key }} >&2; exit 3
      no_log: true
"""


def roles_tarball() -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(SEED_ROLES, arcname="roles")
    return base64.b64encode(buf.getvalue()).decode()


def configmap(env: Env, name: str = "wso2ei-play", data: dict[str, str] | None = None) -> None:
    env.kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": env.namespace},
            "data": data or {},
            "binaryData": {"roles.tar.gz": roles_tarball()},
        }
    )


def ansible_spec(source: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "source": source,
        "role": "wso2ei",
        "versionVariable": "wso2_target_version",
        "groups": ["wso2ei"],
        "groupVars": GROUP_VARS,
        "gatherFacts": False,
        "timeoutSeconds": 120,
        **kw,
    }


def apply(env: Env, version: str, ansible: dict[str, Any], **kw: Any) -> None:
    for doc in fleet_manifests(
        env.fleet.description, name=env.name, namespace=env.namespace, version=version, **kw
    ):
        if doc["kind"] == "WSO2Cluster":
            doc["spec"]["provision"] = {
                "ansible": ansible,
                "versionCommand": "wso2ctl version",
            }
        env.kube.apply(doc)


def patch_update(env: Env, update: dict[str, Any], **spec: Any) -> None:
    env.patch_spec({"update": update, **spec})


def start_load(env: Env) -> LoadThread:
    config = LoadConfig(rate=40, long_fraction=0.0, seed=7)
    load = LoadThread(LoadGenerator(targets_from_fleet(env.fleet.description), config))
    load.start()
    return load


def node_row(obj: dict[str, Any], node: str) -> dict[str, Any]:
    return next((r for r in obj.get("status", {}).get("nodes", []) if r["name"] == node), {})


def markers(env: Env, node: str) -> set[str]:
    d = Path(env.fleet.node(node).dir, "home", ".local", "state", "wso2-operator", "done")
    return {p.name for p in d.glob("*")} if d.is_dir() else set()


def git_repo(tmp: Path) -> tuple[str, str]:
    """A Git repository holding the seed's roles, served by a file:// URL."""
    repo = tmp / "play.git"
    shutil.copytree(SEED_ROLES, repo / "roles")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "HOME": str(tmp)}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e", "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "seed"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return f"file://{repo}", sha


@pytest.mark.timeout(420)
def test_seed_role_from_configmap_and_git_with_hooks_and_kill_nine(make_env, tmp_path):
    env: Env = make_env(install_seconds=1.0)
    log = tmp_path / "hooks.log"
    hooks = {
        "beforeRollout": {
            "host": "node1",
            "commands": [f'echo "before $FROM_VERSION->$TARGET_VERSION" >> {log}'],
        },
        "afterRollout": {"host": "node3", "commands": [f'echo "after $TARGET_VERSION" >> {log}']},
    }
    configmap(env)
    env.fleet.node("node1").set_timing(install_seconds=4.0)
    env.operator.start()
    apply(env, "1.0.0", ansible_spec({"configMap": {"name": "wso2ei-play"}}))
    env.wait_ready()
    patch_update(env, {"hooks": hooks})
    env.wait_ready()
    load = start_load(env)
    tasks: set[str] = set()
    try:
        with LBSampler(env.fleet) as sampler:
            time.sleep(1)
            env.patch_spec({"version": "2.0.0"})

            # kill -9 while node1's install runs on the node (its slower install leaves time):
            # the leash (ansible_leash) stops it there, so it never completes twice.
            def node1_installing() -> bool:
                msg = node_row(env.get(), "node1").get("message", "")
                if "ansible task '" in msg:
                    tasks.add(msg.split("ansible task '", 1)[1].split("'", 1)[0])
                return any(
                    e["event"] == "install_start" and e.get("version") == "2.0.0"
                    for e in env.fleet.node("node1").events()
                )

            deadline = time.monotonic() + 90
            while not node1_installing():
                assert time.monotonic() < deadline, env.operator.log()[-3000:]
                time.sleep(0.02)
            env.operator.kill9()
            time.sleep(0.5)
            env.operator.start()
            # kill -9 the moment node2's play has written its marker: the finished play is not
            # run again (the marker, not status, says so).
            before = markers(env, "node2")
            deadline = time.monotonic() + 120
            while not markers(env, "node2") - before:
                assert time.monotonic() < deadline, env.operator.log()[-3000:]
                obj = env.get()
                for n in ("node2", "node3"):
                    msg = node_row(obj, n).get("message", "")
                    if "ansible task '" in msg:
                        tasks.add(msg.split("ansible task '", 1)[1].split("'", 1)[0])
                time.sleep(0.01)
            env.operator.kill9()
            env.operator.start()
            obj = env.wait_ready(timeout=180)
        records = load.stop()
    finally:
        load.generator.stop()
    failed = [r for r in records if not r.ok]
    assert records and not failed, failed[:5]
    assert sampler.max_out() == 1
    assert {r["version"] for r in obj["status"]["nodes"]} == {"2.0.0"}
    for n in ("node2", "node3"):
        assert installs_completed(env, n, "2.0.0") == 1, n
    starts = [e for e in env.fleet.node("node1").events() if e["event"] == "install_start"]
    assert len([e for e in starts if e.get("version") == "2.0.0"]) == 2  # killed, then rerun
    assert installs_completed(env, "node1", "2.0.0") == 1
    assert tasks & {"Stop WSO2", "Install WSO2 2.0.0", "Start WSO2"}, tasks
    assert log.read_text().splitlines() == ["before 1.0.0->2.0.0", "after 2.0.0"]
    last = obj["status"]["history"][-1]
    assert last["result"] == "Succeeded"
    assert last["provisionRevision"].startswith("configmap:wso2ei-play@")
    assert last["hooks"] == "beforeRollout Succeeded, afterRollout Succeeded"
    hooks_status = obj["status"]["rollout"]["hooks"]
    assert hooks_status["beforeRollout"]["phase"] == "Succeeded"

    # The same role from a Git repository.
    url, sha = git_repo(tmp_path)
    env.patch_spec(
        {
            "version": "3.0.0",
            "provision": {
                "ansible": {"source": {"configMap": None, "git": {"url": url, "ref": "main"}}}
            },
        }
    )
    obj = env.wait_ready(timeout=120)
    assert {r["version"] for r in obj["status"]["nodes"]} == {"3.0.0"}
    for n in ("node1", "node2", "node3"):
        assert installs_completed(env, n, "3.0.0") == 1, n
    last = obj["status"]["history"][-1]
    assert last["provisionRevision"] == f"git:main@{sha}"
    assert log.read_text().splitlines()[2:] == ["before 2.0.0->3.0.0", "after 3.0.0"]


@pytest.mark.timeout(300)
def test_failing_task_on_node2_rolls_back_node1_and_node2(make_env):
    env: Env = make_env()
    env.fleet.node("node2").set_fail_install(["2.0.0"])
    configmap(env)
    env.operator.start()
    apply(
        env,
        "1.0.0",
        ansible_spec({"configMap": {"name": "wso2ei-play"}}),
        update={"failurePolicy": "Rollback"},
    )
    env.wait_ready()
    env.patch_spec({"version": "2.0.0"})
    obj = env.wait_for(
        lambda o: (o.get("status", {}).get("history") or [{}])[-1].get("result") == "RolledBack",
        timeout=150,
        what="RolledBack",
    )
    failed = [e for e in env.events() if e["reason"] == "ProvisionFailed"]
    assert failed, [e["reason"] for e in env.events()]
    msg = failed[0]["message"]
    assert "task 'Install WSO2 2.0.0' failed on node2" in msg, msg
    assert "package checksum mismatch" in msg, msg
    assert {r["version"] for r in obj["status"]["nodes"]} == {"1.0.0"}
    for n in ("node1", "node2"):
        assert installs_completed(env, n, "1.0.0") == 1, n
    assert installs_completed(env, "node1", "2.0.0") == 1
    assert not [e for e in env.fleet.node("node3").events() if e["event"] == "install_start"]
    assert env.condition("Degraded")["reason"] == "RolledBack"


@pytest.mark.timeout(300)
def test_failing_before_hook_touches_no_node_and_no_log_secret_stays_hidden(make_env):
    env: Env = make_env()
    configmap(env, data={"license.yml": NO_LOG_PLAY})
    env.operator.start()
    ansible = ansible_spec({"configMap": {"name": "wso2ei-play"}})
    apply(env, "1.0.0", ansible)
    env.wait_ready()
    hook = {"host": "node2", "commands": ["echo migrating >&2; exit 7"]}
    patch_update(env, {"hooks": {"beforeRollout": hook}}, version="2.0.0")
    env.wait_for(
        lambda o: (o.get("status", {}).get("history") or [{}])[-1].get("result") == "Failed",
        timeout=60,
        what="the rollout Failed on beforeRollout",
    )
    degraded = env.condition("Degraded")
    assert degraded["reason"] == "BeforeRolloutFailed", degraded
    assert "exit" in degraded["message"] and "migrating" in degraded["message"], degraded
    time.sleep(2)
    for n in ("node1", "node2", "node3"):
        assert not [e for e in env.fleet.node(n).events() if e["event"] == "install_start"], n
        for lb in env.fleet.lbs:
            assert lb.servers()[n]["status"].startswith("UP")

    # A play with a failing no_log task: its secret is in the spec, never in what we write.
    env.patch_spec(
        {
            "version": "2.0.1",
            "update": {"hooks": None},
            "provision": {
                "ansible": {
                    "role": None,
                    "playbook": "license.yml",
                    "extraVars": {"license_key": SECRET},
                }
            },
        }
    )
    env.wait_for(lambda o: env.node_phase(o, "node1") == "Failed", timeout=90, what="node1 Failed")
    time.sleep(1.5)
    obj = env.get()
    message = node_row(obj, "node1")["message"]
    assert "task 'Register the license' failed on node1" in message, message
    assert "no_log" in message
    assert SECRET not in json.dumps(obj["status"])
    assert SECRET not in json.dumps(env.events())
    assert SECRET not in env.operator.log()


HOOK_PLAYS = {
    # Counted on the host side: one line per run of the play.
    "hooks/before.yml": """
- hosts: all
  gather_facts: false
  tasks:
    - name: Migrate the database
      ansible.builtin.shell: echo "migrated for {{ wso2_target_version }}" >> {{ hook_log }}
""",
    "hooks/after.yml": """
- hosts: all
  gather_facts: false
  tasks:
    - name: Purge the cache
      ansible.builtin.fail:
        msg: cache purge refused by the cache service
""",
}


def git_over_ssh(env: Env, tmp: Path) -> tuple[str, str]:
    """The seed's roles and two hook plays in a bare repository on node3's disk, cloned over
    node3's own sshd (ssh:// URL). Returns the URL and the commit."""
    work = tmp / "work"
    shutil.copytree(SEED_ROLES, work / "roles")
    for path, text in HOOK_PLAYS.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    genv = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "HOME": str(tmp)}
    genv |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e", "PATH": "/usr/bin:/bin"}
    bare = Path(env.fleet.node("node3").dir, "srv", "play.git")
    for args in (
        ["-C", str(work), "init", "-q", "-b", "main"],
        ["-C", str(work), "add", "-A"],
        ["-C", str(work), "commit", "-q", "-m", "roles and hooks"],
        ["clone", "-q", "--bare", str(work), str(bare)],
    ):
        subprocess.run(["git", *args], check=True, env=genv)
    sha = subprocess.run(
        ["git", "-C", str(bare), "rev-parse", "main"], check=True, capture_output=True, text=True
    ).stdout.strip()
    user = env.fleet.description["ssh"]["user"]
    return f"ssh://{user}@{env.fleet.node('node3').host}{bare}", sha


def git_secret(env: Env, known_hosts: str) -> None:
    env.kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "git-ssh", "namespace": env.namespace},
            "stringData": {
                "ssh-privatekey": env.fleet.client_private_key().decode(),
                "known_hosts": known_hosts,
            },
        }
    )


def foreign_known_hosts(env: Env, tmp: Path) -> str:
    """A known_hosts line for node3 with some other host's key (a man in the middle)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "other")], check=True
    )
    key = " ".join((tmp / "other.pub").read_text().split()[:2])
    return f"{env.fleet.node('node3').host} {key}\n"


def hook_play(source: dict[str, Any], playbook: str, host: str, **kw: Any) -> dict[str, Any]:
    ans = {
        "source": source,
        "playbook": playbook,
        "versionVariable": "wso2_target_version",
        "groupVars": {"ansible_python_interpreter": "/usr/bin/python3"},
        "gatherFacts": False,
        **kw,
    }
    return {"host": host, "ansible": ans, "timeoutSeconds": 120}


@pytest.mark.timeout(420)
def test_git_over_ssh_ansible_hooks_after_hook_degraded_and_provision_timeout(make_env, tmp_path):
    env: Env = make_env()
    url, sha = git_over_ssh(env, tmp_path)
    private_key = env.fleet.client_private_key().decode()
    # First a known_hosts with the wrong key for the Git host: strict checking refuses it.
    git_secret(env, foreign_known_hosts(env, tmp_path))
    source = {"git": {"url": url, "ref": "main", "sshSecretRef": {"name": "git-ssh"}}}
    env.operator.start()
    apply(env, "1.0.0", ansible_spec(source))
    env.wait_ready()
    env.patch_spec({"version": "2.0.0"})
    obj = env.wait_for(
        lambda o: any(
            "Host key verification failed" in c.get("message", "")
            for c in o.get("status", {}).get("conditions", [])
        ),
        timeout=90,
        what="a condition saying the Git host's key did not verify",
    )
    cond = next(
        c for c in obj["status"]["conditions"] if "Host key verification failed" in c["message"]
    )
    assert cond["reason"] == "ProvisionContentUnavailable", cond
    assert not [e for e in env.fleet.node("node1").events() if e["event"] == "install_start"]
    key_body = private_key.strip().splitlines()[1]
    assert key_body not in json.dumps(obj["status"]) + json.dumps(env.events())
    assert key_body not in env.operator.log()

    # The right known_hosts (the fleet's, node3's key among them): the content is fetched over
    # SSH, beforeRollout (an Ansible play on node1) runs once, afterRollout (a play on node3
    # that fails) leaves every node updated and the rollout Degraded.
    git_secret(env, env.fleet.known_hosts())
    hook_log = Path(env.fleet.node("node1").dir, "hook.log")
    hooks = {
        "beforeRollout": hook_play(
            source, "hooks/before.yml", "node1", extraVars={"hook_log": str(hook_log)}
        ),
        "afterRollout": hook_play(source, "hooks/after.yml", "node3"),
    }
    patch_update(env, {"hooks": hooks})
    obj = env.wait_for(
        lambda o: (o.get("status", {}).get("history") or [{}])[-1].get("toVersion") == "2.0.0",
        timeout=180,
        what="the 2.0.0 rollout in history",
    )
    assert {r["version"] for r in obj["status"]["nodes"]} == {"2.0.0"}
    for n in ("node1", "node2", "node3"):
        assert installs_completed(env, n, "2.0.0") == 1, n
    assert hook_log.read_text().splitlines() == ["migrated for 2.0.0"]
    last = obj["status"]["history"][-1]
    assert last["provisionRevision"] == f"git:main@{sha}", last
    assert last["hooks"] == "beforeRollout Succeeded, afterRollout Failed", last
    hooks_status = obj["status"]["rollout"]["hooks"]
    assert hooks_status["beforeRollout"]["phase"] == "Succeeded", hooks_status
    assert "play done on node1" in hooks_status["beforeRollout"]["message"], hooks_status
    degraded = env.condition("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "AfterRolloutFailed", degraded
    assert "task 'Purge the cache' failed on node3" in degraded["message"], degraded
    assert "cache purge refused" in degraded["message"], degraded
    # The Event that closes the rollout is a warning, not a RolloutSucceeded (posted in the
    # background, so it may trail the status write).
    deadline = time.time() + 20
    while not (
        finished := [
            e
            for e in env.events()
            if e["reason"].startswith("Rollout") and " -> 2.0.0: " in e["message"]
        ]
    ):
        assert time.time() < deadline, [e["reason"] for e in env.events()]
        time.sleep(0.5)
    assert [(e["reason"], e["type"]) for e in finished] == [("RolloutDegraded", "Warning")]
    assert finished[0]["message"].endswith("afterRollout failed"), finished
    for lb in env.fleet.lbs:
        assert all(s["status"].startswith("UP") for s in lb.servers().values())

    # A play that runs past timeoutSeconds: ProvisionTimeout, node1 stays out of rotation
    # (failurePolicy Pause) and its install is stopped on the node, never completed. 10 s lets
    # the play reach the install task even on a loaded machine (at 6 s it once had not).
    env.fleet.node("node1").set_timing(install_seconds=20.0)
    env.patch_spec(
        {
            "version": "3.0.0",
            "update": {"hooks": None},
            "provision": {"ansible": {"timeoutSeconds": 10}},
        }
    )
    obj = env.wait_for(
        lambda o: env.node_phase(o, "node1") == "Failed", timeout=120, what="node1 Failed"
    )
    timeouts = [e for e in env.events() if e["reason"] == "ProvisionTimeout"]
    assert timeouts, [e["reason"] for e in env.events()]
    assert "did not finish within 10s" in timeouts[0]["message"], timeouts[0]
    assert "Install WSO2 3.0.0" in timeouts[0]["message"], timeouts[0]
    starts = [e for e in env.fleet.node("node1").events() if e["event"] == "install_start"]
    assert starts and starts[-1].get("version") == "3.0.0"
    # Past the moment the install would have completed had it kept running on the node.
    while time.time() < starts[-1]["t"] + 22:
        time.sleep(0.5)
    assert installs_completed(env, "node1", "3.0.0") == 0
    for lb in env.fleet.lbs:
        assert not lb.servers()["node1"]["status"].startswith("UP")
        assert lb.servers()["node2"]["status"].startswith("UP")
    assert not [
        e
        for e in env.fleet.node("node2").events()
        if e["event"] == "install_start" and e.get("version") == "3.0.0"
    ]

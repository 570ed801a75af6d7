"""Pure parts of provision.ansible and the run-once hooks: events, failure text, inventory,
wrapper play, content revisions, hook decisions and their status round trip."""

from __future__ import annotations

import base64
import io
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from wso2_operator.ansible_provision import (
    HAS_DATA_FILTER,
    NO_LOG_TEXT,
    ContentProblem,
    PlayProgress,
    _extract_tar,
    apply_event,
    build_inventory,
    check_vars,
    configmap_digest,
    configmap_revision,
    failure_text,
    git_problem,
    revision_digest,
    shown_url,
    unpack_configmap,
    wrapper_play,
)
from wso2_operator.hooks import (
    after_hook_due,
    before_hook_blocks,
    before_hook_due,
    hook_address,
    hook_key,
    retry_resets,
)
from wso2_operator.model import AnsibleSource, AnsibleSpec, ClusterSpec, HookRun, RolloutState
from wso2_operator.planner import Plan
from wso2_operator.status import history_entry, rollout_dict, rollout_from_status

NOW = 1_780_000_000.0


def spec_dict(**extra) -> dict:
    return {
        "version": "2.0.0",
        "nodes": [{"name": f"node{i}", "host": f"10.0.0.{i}", "sshPort": 22} for i in (1, 2, 3)],
        "ssh": {"user": "root", "secretRef": {"name": "s"}},
        "loadBalancers": {"backend": "b", "hosts": [{"name": "lb1", "address": "h:1"}]},
        "provision": {
            "ansible": {
                "source": {"configMap": {"name": "play"}},
                "role": "wso2ei",
                "versionVariable": "wso2_target_version",
            },
            "versionCommand": "wso2ctl version",
        },
        **extra,
    }


def ev(kind: str, **data) -> dict:
    return {"event": kind, "event_data": data}


# ------------------------------------------------------------------------------ runner events
def test_events_give_the_current_task_and_counts():
    p = PlayProgress()
    p = apply_event(p, ev("playbook_on_task_start", task="Stop WSO2"))
    p = apply_event(p, ev("runner_on_ok", task="Stop WSO2", host="node1", res={"changed": True}))
    p = apply_event(p, ev("playbook_on_task_start", task="Install WSO2 2.0.0"))
    p = apply_event(p, ev("runner_on_skipped", task="Install WSO2 2.0.0"))
    assert (p.task, p.ok, p.changed, p.skipped, p.failed) == ("Install WSO2 2.0.0", 1, 1, 1, 0)
    assert p.summary() == "ok=1 changed=1 failed=0"
    # The operator's own marker task is not the user's progress.
    assert apply_event(p, ev("playbook_on_task_start", task="wso2-operator: marker")) == p
    assert apply_event(p, {"event": "weird", "event_data": "x"}) == p


def test_an_ignored_failure_is_no_failure():
    p = apply_event(PlayProgress(), ev("runner_on_failed", task="t", ignore_errors=True, res={}))
    assert p.failed == 0 and not p.failure


def test_failure_names_task_host_and_message_and_keeps_the_first():
    res = {"msg": "non-zero return code", "rc": 1, "stderr": "checksum mismatch", "stdout": "X"}
    p = apply_event(PlayProgress(), ev("runner_on_failed", task="Install", host="node2", res=res))
    assert p.failure == (
        "task 'Install' failed on node2: non-zero return code (rc=1); stderr: checksum mismatch"
    )
    assert "X" not in p.failure  # stdout is not copied
    q = apply_event(p, ev("runner_on_failed", task="Other", host="node2", res={"msg": "m"}))
    assert q.failure == p.failure and q.failed == 2


@pytest.mark.parametrize(
    "data",
    [
        {"res": {"censored": "the output has been hidden", "msg": "SECRET"}},
        {"res": {"_ansible_no_log": True, "msg": "SECRET", "stderr": "SECRET"}},
        {"no_log": True, "res": {"msg": "SECRET"}},
    ],
)
def test_no_log_results_are_never_copied(data):
    text = failure_text("runner_on_failed", {"task": "Register", "host": "node1", **data})
    assert "SECRET" not in text
    assert text == f"task 'Register' failed on node1: {NO_LOG_TEXT}"


def test_playbook_errors_outside_tasks_are_kept():
    p = apply_event(PlayProgress(), {"event": "verbose", "stdout": "ERROR! the role 'x' was not"})
    assert p.error.startswith("ERROR! the role")
    assert apply_event(p, {"event": "verbose", "stdout": "ERROR! second"}).error == p.error


# ---------------------------------------------------------------------- inventory and play
def test_connection_variables_are_refused():
    ok = AnsibleSpec(source=AnsibleSource(config_map="c"), role="r", extra_vars={"a": 1})
    assert check_vars(ok) is None
    # Pipelining back on would take the pty, so a killed run's task would finish on the node.
    bad_vars = ("ansible_ssh_common_args", "ansible_host", "ansible_ssh_extra_args")
    for bad in (*bad_vars, "ansible_pipelining", "ansible_ssh_pipelining"):
        assert bad in (check_vars(replace(ok, group_vars={bad: "x"})) or "")
    assert "not a variable name" in (check_vars(replace(ok, version_variable="a-b")) or "")


def test_inventory_holds_one_host_with_strict_host_keys_and_no_control_persist():
    s = AnsibleSpec(
        source=AnsibleSource(config_map="c"),
        role="r",
        groups=("wso2ei",),
        group_vars={"wso2ei_lb_server": "{{ inventory_hostname }}"},
    )
    inv = build_inventory("node1", "10.0.0.1", 2222, "root", "/k", "/kh", s)
    host = inv["all"]["hosts"]["node1"]
    assert (host["ansible_host"], host["ansible_port"], host["ansible_user"]) == (
        "10.0.0.1",
        2222,
        "root",
    )
    args = host["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in args and "UserKnownHostsFile=/kh" in args
    assert "ControlMaster=no" in args and "ControlPath=none" in args
    assert inv["all"]["children"]["wso2ei"] == {
        "hosts": {"node1": {}},
        "vars": {"wso2ei_lb_server": "{{ inventory_hostname }}"},
    }
    assert list(inv["all"]["hosts"]) == ["node1"]


def test_wrapper_play_runs_the_role_then_writes_the_marker_without_become():
    s = AnsibleSpec(source=AnsibleSource(config_map="c"), role="wso2ei", become=True)
    play = wrapper_play(s, "ab" * 16)
    assert play[0]["roles"] == [{"role": "wso2ei"}] and play[0]["become"] is True
    assert play[1]["become"] is False
    assert "ab" * 16 in play[1]["tasks"][0]["ansible.builtin.shell"]
    pb = wrapper_play(replace(s, role=None, playbook="site.yml"), "cd" * 16)
    assert pb[0] == {"ansible.builtin.import_playbook": "site.yml"}


# ---------------------------------------------------------------------------------- content
def test_configmap_revision_tracks_content_not_metadata():
    d = configmap_digest({"site.yml": "a"}, {"roles.tar.gz": "QUJD"})
    assert d == configmap_digest({"site.yml": "a"}, {"roles.tar.gz": "QUJD"})
    assert d != configmap_digest({"site.yml": "b"}, {"roles.tar.gz": "QUJD"})
    rev = configmap_revision("play", "123", d)
    assert rev == f"configmap:play@123:sha256:{d}" and revision_digest(rev) == d
    assert revision_digest("git:main@abc") == "abc"
    assert shown_url("https://user:tok@example.com/r.git") == "https://example.com/r.git"


CHANGED_KEY = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
The fingerprint for the ED25519 key sent by the remote host is
SHA256:4q0Vd1kq1Vb0lWQk2f0aS7bq3yqYbX8v9p6o2m1n0k8.
Offending ED25519 key in /tmp/wso2-operator/content/git-x/.known_hosts:1
Host key verification failed.
fatal: Could not read from remote repository.

Please make sure you have the correct access rights
and the repository exists.
"""


def test_git_problem_says_first_what_ssh_refused():
    assert git_problem(CHANGED_KEY).startswith("Host key verification failed: the Git host's")
    denied = "git@h: Permission denied (publickey).\nfatal: Could not read from remote repository."
    assert "refused the Secret's SSH key" in git_problem(denied)
    assert git_problem("warning: x\nfatal: repository 'file:///r' does not exist\n") == (
        "fatal: repository 'file:///r' does not exist"
    )
    assert git_problem("") == "no message"
    assert len(git_problem("x" * 5000)) <= 300


def _tar(name: str, data: bytes = b"x") -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def test_configmap_unpacks_files_and_trees(tmp_path: Path):
    unpack_configmap(
        {"site.yml": "- hosts: all\n"}, {"roles.tar.gz": _tar("roles/r/tasks/main.yml")}, tmp_path
    )
    assert (tmp_path / "site.yml").read_text() == "- hosts: all\n"
    assert (tmp_path / "roles/r/tasks/main.yml").read_bytes() == b"x"


def test_a_tarball_cannot_write_outside_the_content(tmp_path: Path):
    with pytest.raises(ContentProblem) as e:
        unpack_configmap({}, {"evil.tar.gz": _tar("../../escaped")}, tmp_path / "c")
    assert e.value.reason == "ProvisionContentInvalid" and not e.value.transient
    assert not (tmp_path / "escaped").exists()


def _evil(kind: str, outside: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("roles/x")
        if kind == "abs":
            info.name = str(outside)
        elif kind == "dotdot":
            info.name = "roles/../../x"
        elif kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        elif kind == "device":
            info.type = tarfile.CHRTYPE
        tf.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


@pytest.mark.parametrize("data_filter", [True, False] if HAS_DATA_FILTER else [False])
@pytest.mark.parametrize("kind", ["abs", "dotdot", "symlink", "hardlink", "device"])
def test_both_extractors_refuse_what_the_data_filter_refuses(tmp_path, kind, data_filter):
    """The image's Python (3.11.2) has no "data" filter: checked_members stands in for it."""
    outside = tmp_path / "outside"
    try:
        _extract_tar(_evil(kind, outside), tmp_path / "c", data_filter=data_filter)
    except (tarfile.TarError, OSError):
        refused = True
    else:
        refused = False
    assert not outside.exists()
    assert refused or (kind == "abs" and data_filter)  # the filter strips a leading / instead


def test_checked_members_extract_a_tree_without_special_bits(tmp_path: Path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        f = tarfile.TarInfo("roles/r/files/run.sh")
        f.mode = 0o6777
        tf.addfile(f, io.BytesIO(b""))
        link = tarfile.TarInfo("roles/r/files/same.sh")
        link.type, link.linkname = tarfile.SYMTYPE, "run.sh"
        tf.addfile(link)
    _extract_tar(buf.getvalue(), tmp_path, data_filter=False)
    assert (tmp_path / "roles/r/files/run.sh").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "roles/r/files/same.sh").resolve() == tmp_path / "roles/r/files/run.sh"


# ------------------------------------------------------------------------------------ spec
def test_spec_parses_ansible_and_hooks():
    hooks = {
        "hooks": {
            "beforeRollout": {"host": "node1", "commands": ["migrate"]},
            "afterRollout": {"host": "ops01", "sshPort": 2200, "ansible": {"role": "notify"}},
        }
    }
    s = ClusterSpec.from_dict(spec_dict(update=hooks))
    assert s.ansible is not None and s.ansible.role == "wso2ei"
    assert s.ansible.version_variable == "wso2_target_version"
    assert s.provision_step_count == 1
    assert s.before_rollout is not None and s.before_rollout.commands == ("migrate",)
    assert s.after_rollout is not None and s.after_rollout.ansible is not None
    assert hook_address(s, s.before_rollout) == ("node1", "10.0.0.1", 22)
    assert hook_address(s, s.after_rollout) == ("ops01", "ops01", 2200)


# ----------------------------------------------------------------------------------- hooks
def _spec(**up) -> ClusterSpec:
    return ClusterSpec.from_dict(spec_dict(update={"hooks": up}))


BEFORE = {"beforeRollout": {"host": "node1", "commands": ["m"]}}
AFTER = {"afterRollout": {"host": "node1", "commands": ["p"]}}


def test_before_hook_runs_once_and_never_in_a_rollback():
    s = _spec(**BEFORE)
    r = RolloutState(from_version="1.0.0", to_version="2.0.0", start=NOW)
    assert before_hook_due(s, r, rolling_back=False)
    assert before_hook_blocks(s, r, rolling_back=False)
    running = replace(r, before_hook=HookRun("Running", start=NOW))
    assert before_hook_due(s, running, False)  # resumed: run again, markers skip what finished
    done = replace(r, before_hook=HookRun("Succeeded", "ok", NOW, NOW))
    assert not before_hook_due(s, done, False) and not before_hook_blocks(s, done, False)
    failed = replace(r, before_hook=HookRun("Failed", "x", NOW, NOW), failed_version="2.0.0")
    assert not before_hook_due(s, failed, False) and before_hook_blocks(s, failed, False)
    assert not before_hook_due(s, r, rolling_back=True)
    assert not before_hook_blocks(s, replace(r, rolling_back=True), False)
    assert retry_resets(failed) == {"before_hook": None}
    assert retry_resets(done) == {}


def test_after_hook_waits_for_a_complete_forward_rollout():
    s = _spec(**AFTER)
    r = RolloutState(from_version="1.0.0", to_version="2.0.0", start=NOW)
    complete = Plan(target="2.0.0", complete=True)
    assert after_hook_due(s, r, complete)
    assert not after_hook_due(s, r, Plan(target="2.0.0", complete=False))
    assert not after_hook_due(s, r, replace(complete, rolling_back=True))
    assert not after_hook_due(s, replace(r, finished=True), complete)
    assert not after_hook_due(s, replace(r, from_version="2.0.0"), complete)
    assert not after_hook_due(s, replace(r, after_hook=HookRun("Failed")), complete)


def test_hook_key_is_stable_across_a_restart_and_new_per_rollout_and_retry():
    r = RolloutState(from_version="1.0.0", to_version="2.0.0", start=NOW + 0.4)
    back = rollout_from_status({"rollout": rollout_dict(r)}, NOW + 10)
    k = hook_key("ns", "c", "beforeRollout", r, 0, "m")
    assert hook_key("ns", "c", "beforeRollout", back, 0, "m") == k
    assert hook_key("ns", "c", "beforeRollout", replace(r, start=NOW + 5), 0, "m") != k
    assert hook_key("ns", "c", "beforeRollout", replace(r, retry_token="1"), 0, "m") != k
    assert hook_key("ns", "c", "afterRollout", r, 0, "m") != k


def test_hooks_and_revision_round_trip_through_status_and_reach_history():
    r = RolloutState(
        from_version="1.0.0",
        to_version="2.0.0",
        start=NOW,
        provision_revision="git:main@abc",
        before_hook=HookRun("Succeeded", "done", NOW, NOW + 1),
        after_hook=HookRun("Failed", "purge failed", NOW + 2, NOW + 3),
    )
    assert rollout_from_status({"rollout": rollout_dict(r)}, NOW + 10) == r
    row = history_entry(r, "Succeeded", NOW + 4)
    assert row["provisionRevision"] == "git:main@abc"
    assert row["hooks"] == "beforeRollout Succeeded, afterRollout Failed"
    assert "hooks" not in history_entry(RolloutState(to_version="2.0.0"), "Succeeded", NOW)
    junk = {"rollout": {"hooks": {"beforeRollout": {"phase": "Bogus"}}, "provisionRevision": 5}}
    assert rollout_from_status(junk).before_hook is None
    assert rollout_from_status(junk).provision_revision is None


def test_crd_example_of_the_readme_parses():
    """The README's "Migrating from an Ansible play" example is a valid spec for the model."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- ansible-example -->", 1)[1].split("```yaml", 1)[1]
    docs = list(yaml.safe_load_all(block.split("```", 1)[0]))
    cluster = next(d for d in docs if d and d.get("kind") == "WSO2Cluster")
    s = ClusterSpec.from_dict(cluster["spec"])
    assert s.ansible is not None and s.ansible.role == "wso2ei"
    assert s.before_rollout is not None


async def test_a_configmap_revision_fetched_again_reuses_its_content(tmp_path: Path):
    """Two rollouts with the same ConfigMap content share one unpacked tree (found by e2e: the
    second unpack used to fail on the existing directory)."""
    cm = {"resourceVersion": "7", "data": {"site.yml": "x"}, "binaryData": {}}

    async def read_cm(name: str) -> dict:
        return cm

    async def read_secret(*_: str) -> tuple[bytes, str]:
        raise AssertionError("no Git here")

    from wso2_operator.ansible_provision import ContentStore

    store = ContentStore(read_cm, read_secret, tmp_path)
    src = AnsibleSource(config_map="play")
    rev, tree = await store.fetch(src, None)
    assert await store.fetch(src, None) == (rev, tree)
    assert (tree / "site.yml").read_text() == "x"
    cm["data"] = {"site.yml": "changed"}
    with pytest.raises(ContentProblem) as e:
        await store._configmap("play", "configmap:play@6:sha256:0000")
    assert e.value.reason == "ProvisionContentChanged"

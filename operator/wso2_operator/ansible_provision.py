"""spec.provision.ansible: run a team's own playbook or role against one node, with ansible-runner.

Three parts:

* content (``ContentStore``): a ConfigMap (files in ``data``, trees as ``*.tar.gz`` in
  ``binaryData``) or a Git repository, fetched once per rollout; its revision (``git:REF@SHA`` or
  ``configmap:NAME@RV:sha256:HASH``) is recorded in status so every node of the rollout, and an
  operator that restarted, runs that same content;
* pure decisions (``apply_event``, ``failure_text``, ``build_inventory``, ``wrapper_play``,
  ``check_vars``): what a runner event changes in the node's progress, what a failure says (never
  a ``no_log`` result), what the one-host inventory and the wrapper play look like;
* ``run_play``: one ansible-runner run in a private data dir on a writable tmp, removed after.

Exactly once: the wrapper play ends with a task that writes an on-host marker (the same place
and key shape as the marker of provision commands, see ssh.py); before a run the operator looks
for it, so a play that had finished before a kill -9 is not run again, and one that had not is
run again from the start (roles are meant to be idempotent).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import WSO2OperatorError
from .model import AnsibleSource, AnsibleSpec
from .textcap import cap, clip

# Characters of a module's message (and of its stderr tail) copied into a failure message.
MODULE_MSG_CHARS = 300
STDERR_CHARS = 200
# The operator's own tasks in the wrapper play are named with this prefix and not counted.
OWN_TASK_PREFIX = "wso2-operator:"
# Variables that decide how Ansible connects (and whether it checks host keys): the operator
# sets them from the Secret; a spec that sets them could turn host key checking off.
CONNECTION_VAR_RE = re.compile(
    r"ansible_(ssh_.*|host|port|user|connection|password|become_pass.*|private_key_file|"
    r"paramiko_.*|host_key_checking|ssh_common_args|ssh_extra_args)"
)
# Where the on-host markers live; the same directory as ssh.py's markers of provision commands.
MARKER_DIR = "${XDG_STATE_HOME:-$HOME/.local/state}/wso2-operator/done"
NO_LOG_TEXT = "(output hidden by no_log)"
# How long one git command (a clone) may take.
GIT_TIMEOUT = 300.0
# How long a cancelled run may take to stop ansible-playbook before the data dir goes anyway.
CANCEL_GRACE = 15.0
# Plays get threads of their own. A play blocks its thread for minutes, and the loop's default
# executor (min(32, CPUs + 4) threads: 6 on 2 cores) also carries every cluster's Kubernetes
# API calls and kopf's sync handlers: six clusters in a play would stall the status writes,
# and so the rollouts, of all the others. Threads are made on demand, up to this many plays
# at once (more wait for a free thread; each is an ansible-playbook process besides).
MAX_CONCURRENT_PLAYS = 64
_PLAYS = concurrent.futures.ThreadPoolExecutor(MAX_CONCURRENT_PLAYS, thread_name_prefix="play")


class ContentProblem(WSO2OperatorError):
    """The play's content cannot be had (ConfigMap missing, clone failed, bad tarball...).

    Unavailable is transient (a Git server or the apiserver may come back; the step retries
    until progressDeadlineSeconds); changed or invalid content needs a human."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = reason == "ProvisionContentUnavailable"


class PlayFailed(Exception):
    """A play ended without success; ``reason`` is ProvisionFailed or ProvisionTimeout."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------- pure
@dataclass(frozen=True)
class PlayProgress:
    """What the runner's events have said so far about one play on one host."""

    task: str = ""
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    failure: str = ""  # the first failure that was not ignored, as failure_text wrote it
    error: str = ""  # ansible-playbook's own first ERROR line (a syntax error, a missing role)

    def summary(self) -> str:
        return f"ok={self.ok} changed={self.changed} failed={self.failed}"


def _own(task: object) -> bool:
    return isinstance(task, str) and task.startswith(OWN_TASK_PREFIX)


def apply_event(p: PlayProgress, event: Mapping[str, Any]) -> PlayProgress:
    """The progress after one ansible-runner event. Pure; unknown events change nothing."""
    kind = event.get("event")
    data = event.get("event_data") or {}
    if not isinstance(data, Mapping):
        return p
    task = data.get("task")
    if _own(task):
        return p
    if kind in ("verbose", "error") and not p.error:
        # Messages of ansible-playbook itself, outside any task (no task result can be in them).
        line = str(event.get("stdout") or "").strip()
        if line.startswith(("ERROR!", "[ERROR]")):
            return replace(p, error=clip(line, MODULE_MSG_CHARS))
        return p
    if kind == "playbook_on_task_start" and isinstance(task, str):
        return replace(p, task=task)
    if kind == "runner_on_ok":
        res = data.get("res") if isinstance(data.get("res"), Mapping) else {}
        changed = bool(res.get("changed"))
        return replace(p, ok=p.ok + 1, changed=p.changed + (1 if changed else 0))
    if kind == "runner_on_skipped":
        return replace(p, skipped=p.skipped + 1)
    if kind in ("runner_on_failed", "runner_on_unreachable"):
        if data.get("ignore_errors"):
            return replace(p, ok=p.ok + 1)  # ignored, as Ansible's recap counts it
        failure = p.failure or failure_text(kind, data)
        return replace(p, failed=p.failed + 1, failure=failure)
    return p


def failure_text(kind: object, data: Mapping[str, Any]) -> str:
    """``task 'T' failed on HOST: MSG``. A result marked no_log (Ansible replaces its content,
    and says so with ``censored``) gives NO_LOG_TEXT; otherwise only ``msg`` and a short stderr
    tail are copied, never the module's other results or its arguments."""
    task = clip(str(data.get("task") or "?"), 120)
    host = clip(str(data.get("host") or "?"), 64)
    res = data.get("res") if isinstance(data.get("res"), Mapping) else {}
    verb = "could not reach" if kind == "runner_on_unreachable" else "failed on"
    if res.get("_ansible_no_log") or "censored" in res or data.get("no_log"):
        return f"task '{task}' {verb} {host}: {NO_LOG_TEXT}"
    msg = clip(str(res.get("msg") or "no message"), MODULE_MSG_CHARS)
    rc = res.get("rc")
    if isinstance(rc, int) and rc != 0 and "rc" not in msg:
        msg += f" (rc={rc})"
    stderr = res.get("stderr")
    if isinstance(stderr, str) and stderr.strip():
        msg += f"; stderr: {clip(stderr.strip()[-STDERR_CHARS:], STDERR_CHARS)}"
    return f"task '{task}' {verb} {host}: {msg}"


def check_vars(spec: AnsibleSpec) -> str | None:
    """What is wrong with the spec's variables, or None: connection variables are the
    operator's (from the Secret), and versionVariable must be a plain variable name."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", spec.version_variable):
        return f"versionVariable {clip(spec.version_variable, 64)!r} is not a variable name"
    for where, d in (("extraVars", spec.extra_vars), ("groupVars", spec.group_vars)):
        bad = sorted(k for k in d if isinstance(k, str) and CONNECTION_VAR_RE.fullmatch(k))
        if bad:
            return (
                f"{where} sets {', '.join(clip(b, 64) for b in bad[:3])}: connection variables "
                "come from spec.ssh (the Secret's key and known_hosts), not from the play's vars"
            )
    return None


def ssh_common_args(known_hosts_path: str, connect_timeout: float) -> str:
    """OpenSSH options for every connection of the play: the Secret's known_hosts only, strict
    host key checking, only the given key, no prompts, and no ControlMaster/ControlPersist (a
    persisting master would outlive the data dir it lives in)."""
    return (
        f"-o UserKnownHostsFile={known_hosts_path} -o GlobalKnownHostsFile=/dev/null "
        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes "
        "-o ControlMaster=no -o ControlPath=none "
        f"-o ConnectTimeout={max(1, int(connect_timeout))}"
    )


def build_inventory(
    alias: str,
    host: str,
    port: int,
    user: str,
    key_path: str,
    known_hosts_path: str,
    spec: AnsibleSpec,
    connect_timeout: float = 10.0,
) -> dict[str, Any]:
    """An inventory of just this host. The connection settings are host vars (they win over
    group vars); the spec's groupVars go to each group it names, or to ``all``."""
    conn = {
        "ansible_host": host,
        "ansible_port": port,
        "ansible_user": user,
        "ansible_ssh_private_key_file": key_path,
        "ansible_ssh_common_args": ssh_common_args(known_hosts_path, connect_timeout),
    }
    inv: dict[str, Any] = {"all": {"hosts": {alias: conn}}}
    if spec.groups:
        inv["all"]["children"] = {
            g: {"hosts": {alias: {}}, "vars": dict(spec.group_vars)} for g in spec.groups
        }
    elif spec.group_vars:
        inv["all"]["vars"] = dict(spec.group_vars)
    return inv


def wrapper_play(spec: AnsibleSpec, marker_key: str) -> list[dict[str, Any]]:
    """The playbook the runner runs: the user's playbook (imported) or a play of their role on
    every host of the inventory (just this one), then the operator's marker task. The marker
    runs without become, as the login user, so it lands where the commands' markers land."""
    if spec.playbook:
        first: dict[str, Any] = {"ansible.builtin.import_playbook": spec.playbook}
    else:
        first = {
            "name": f"{OWN_TASK_PREFIX} role {spec.role}",
            "hosts": "all",
            "gather_facts": spec.gather_facts,
            "become": spec.become,
            "roles": [{"role": spec.role}],
        }
    mark = {
        "name": f"{OWN_TASK_PREFIX} record the play as complete",
        "hosts": "all",
        "gather_facts": False,
        "become": False,
        "tasks": [
            {
                "name": f"{OWN_TASK_PREFIX} marker",
                "ansible.builtin.shell": (
                    f'd="{MARKER_DIR}"; mkdir -p "$d" && : > "$d/{marker_key}"'
                ),
                "changed_when": False,
            }
        ],
    }
    return [first, mark]


def marker_check_command(marker_key: str) -> str:
    """Prints ``done`` when the play with this key finished on the host, else ``todo``."""
    return f'd="{MARKER_DIR}"; if [ -e "$d/{marker_key}" ]; then echo done; else echo todo; fi'


def play_key(*parts: str) -> str:
    """An on-host marker key (32 hex digits, as ssh.ONCE_KEY_RE accepts)."""
    return hashlib.sha256("\0".join(("ansible", *parts)).encode()).hexdigest()[:32]


def configmap_digest(data: Mapping[str, str], binary: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for kind, d in (("data", data), ("binaryData", binary)):
        for k in sorted(d):
            h.update(f"{kind}\0{k}\0".encode())
            h.update(str(d[k]).encode())
            h.update(b"\0")
    return h.hexdigest()[:16]


def configmap_revision(name: str, rv: str, digest: str) -> str:
    return f"configmap:{name}@{rv}:sha256:{digest}"


def revision_digest(revision: str) -> str:
    """The content part of a revision (what must match for "the same content")."""
    if revision.startswith("configmap:"):
        return revision.rsplit(":sha256:", 1)[-1]
    return revision.rsplit("@", 1)[-1]


def git_revision(ref: str, sha: str) -> str:
    return f"git:{clip(ref, 100)}@{sha}"


def shown_url(url: str) -> str:
    """A Git URL for a message, without any user:password@ part."""
    return re.sub(r"//[^/@]*@", "//", clip(url, 200))


# ------------------------------------------------------------------------------------- content
def _extract_tar(blob: bytes, dest: Path) -> None:
    """A tar.gz from binaryData into dest; the "data" filter refuses absolute paths, links out
    of dest, devices and setuid bits (content from a ConfigMap is not trusted with the FS)."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tf:
        tf.extractall(dest, filter="data")


def unpack_configmap(data: Mapping[str, str], binary: Mapping[str, str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for k, text in data.items():
        (dest / k).write_text(text)
    for k, b64 in binary.items():
        blob = base64.b64decode(b64)
        if k.endswith((".tar.gz", ".tgz", ".tar")):
            try:
                _extract_tar(blob, dest)
            except (tarfile.TarError, OSError, ValueError) as e:
                raise ContentProblem(
                    "ProvisionContentInvalid", f"binaryData {clip(k, 64)}: {clip(e, 200)}"
                ) from None
        else:
            (dest / k).write_bytes(blob)


class ContentStore:
    """Play content by revision, cached under ``base`` (a writable tmp) for the whole rollout.

    ``fetch(source, None)`` reads the source now and returns its revision; ``fetch(source,
    rev)`` returns that same revision's content: from the cache, by checking out the recorded
    commit, or by re-reading a ConfigMap whose content did not change. A ConfigMap that changed
    in the middle of a rollout is a ContentProblem: mixing contents is what the record prevents.
    """

    def __init__(
        self,
        read_config_map: Callable[[str], Awaitable[dict[str, Any] | None]],
        read_git_secret: Callable[[str, str, str], Awaitable[tuple[bytes, str]]],
        base: Path,
    ) -> None:
        self._read_cm = read_config_map
        self._read_secret = read_git_secret
        self.base = base
        self._lock = asyncio.Lock()

    def _dir(self, revision: str) -> Path:
        return self.base / "content" / hashlib.sha256(revision.encode()).hexdigest()[:20]

    async def fetch(self, src: AnsibleSource, pinned: str | None) -> tuple[str, Path]:
        async with self._lock:
            if pinned is not None and self._dir(pinned).is_dir():
                return pinned, self._dir(pinned)
            if src.config_map:
                return await self._configmap(src.config_map, pinned)
            if src.git_url:
                return await self._git(src, pinned)
            raise ContentProblem(
                "ProvisionContentUnavailable", "provision.ansible.source names no content"
            )

    async def _configmap(self, name: str, pinned: str | None) -> tuple[str, Path]:
        cm = await self._read_cm(name)
        if cm is None:
            raise ContentProblem(
                "ProvisionContentUnavailable", f"ConfigMap {clip(name, 253)} not found"
            )
        digest = configmap_digest(cm["data"], cm["binaryData"])
        rev = configmap_revision(name, cm["resourceVersion"], digest)
        if pinned is not None:
            if revision_digest(pinned) != digest:
                raise ContentProblem(
                    "ProvisionContentChanged",
                    f"ConfigMap {clip(name, 253)} changed during the rollout (recorded "
                    f"{pinned}, now {rev}); every node of a rollout runs the same content: "
                    "retry (vmops.dev/retry) or change spec.version to run the new content",
                )
            rev = pinned
        out = self._dir(rev)
        if out.is_dir():
            return rev, out  # the same content, already unpacked (an earlier rollout's)
        tmp = Path(tempfile.mkdtemp(prefix="cm-", dir=self._mkbase()))
        try:
            await asyncio.to_thread(unpack_configmap, cm["data"], cm["binaryData"], tmp)
            with contextlib.suppress(OSError):  # already there: same revision, same content
                os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return rev, out

    def _mkbase(self) -> Path:
        d = self.base / "content"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    async def _git(self, src: AnsibleSource, pinned: str | None) -> tuple[str, Path]:
        assert src.git_url is not None
        tmp = Path(tempfile.mkdtemp(prefix="git-", dir=self._mkbase()))
        try:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(tmp),
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": "/dev/null",
            }
            if src.git_secret:
                key, hosts = await self._read_secret(
                    src.git_secret, src.git_private_key_key, src.git_known_hosts_key
                )
                (tmp / ".key").write_bytes(key)
                (tmp / ".key").chmod(0o600)
                (tmp / ".known_hosts").write_text(hosts)
                env["GIT_SSH_COMMAND"] = (
                    f"ssh -i {tmp / '.key'} -o UserKnownHostsFile={tmp / '.known_hosts'} "
                    "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes "
                    "-o IdentitiesOnly=yes -o BatchMode=yes"
                )
            repo = tmp / "repo"
            await _git_cmd(env, "clone", "--quiet", "--no-checkout", "--", src.git_url, str(repo))
            want = revision_digest(pinned) if pinned else None
            sha = want or await _resolve_ref(env, repo, src.git_ref)
            await _git_cmd(env, "-C", str(repo), "checkout", "--quiet", "--detach", sha)
            sha = (await _git_cmd(env, "-C", str(repo), "rev-parse", "HEAD")).strip()
            rev = pinned or git_revision(src.git_ref, sha)
            shutil.rmtree(repo / ".git", ignore_errors=True)
            out = self._dir(rev)
            if not out.exists():
                with contextlib.suppress(OSError):  # a concurrent fetch of the same commit
                    os.replace(repo, out)
            return rev, out
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


async def _resolve_ref(env: dict[str, str], repo: Path, ref: str) -> str:
    for cand in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        with contextlib.suppress(ContentProblem):
            out = await _git_cmd(
                env, "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{cand}^{{commit}}"
            )
            return out.strip()
    raise ContentProblem(
        "ProvisionContentUnavailable", f"git ref {clip(ref, 100)!r} not found in the repository"
    )


async def _git_cmd(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), GIT_TIMEOUT)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        shown = [shown_url(a) if "://" in a or "@" in a else a for a in args[:3]]
        raise ContentProblem(
            "ProvisionContentUnavailable",
            f"git {' '.join(shown)} failed: {clip(err.decode('utf-8', 'replace').strip(), 300)}",
        )
    return out.decode()


# ------------------------------------------------------------------------------------- running
@dataclass
class PlayContext:
    """What a play step needs from the reconciler: this rollout's content (fetched once, by
    revision) and a way to show the running task in the node's status row."""

    content: Callable[[AnsibleSource], Awaitable[tuple[str, Path]]]
    report: Callable[[str], None]


@dataclass
class Target:
    """The one host a play runs on, and how to reach it."""

    alias: str  # the inventory name: the node name (what roles see as inventory_hostname)
    host: str
    port: int
    user: str
    private_key: bytes = field(repr=False)
    known_hosts: str = field(repr=False)
    connect_timeout: float = 10.0


def _path() -> str:
    """PATH with this interpreter's bin first, so that a venv that is not activated still finds
    its own ansible-playbook (runner's binary= would drop the playbook argument)."""
    return os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin")))


def work_base() -> Path:
    """The writable tmp of the operator (the image's root filesystem is read-only)."""
    return Path(os.environ.get("WSO2_WORK_DIR") or tempfile.gettempdir()) / "wso2-operator"


async def run_play(
    target: Target,
    spec: AnsibleSpec,
    content: Path,
    extravars: Mapping[str, Any],
    marker_key: str,
    report: Callable[[PlayProgress], None],
    limit_seconds: float | None = None,
) -> PlayProgress:
    """Run the play on the target; return its final progress or raise PlayFailed.

    ``report`` is called on the event loop after every event that changed the progress. A
    cancelled run stops ansible-playbook (runner's cancel callback) before the data dir goes.
    """
    try:
        import ansible_runner  # local import: heavy, and only needed when a play runs
    except ImportError:
        raise PlayFailed(
            "ProvisionFailed",
            "this operator image has no ansible-runner (the slim variant, WITH_ANSIBLE=0); "
            "run the default image for provision.ansible and Ansible hooks",
        ) from None

    base = work_base()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    state = {"p": PlayProgress()}

    def on_event(ev: dict[str, Any]) -> bool:
        new = apply_event(state["p"], ev)
        if new != state["p"]:
            state["p"] = new
            loop.call_soon_threadsafe(report, new)
        return False  # not kept on disk: results stay in memory only

    def prepare() -> dict[str, Any]:
        project = data_dir / "project"
        shutil.copytree(content, project, symlinks=True)
        (data_dir / "ssh").mkdir(mode=0o700)
        key = data_dir / "ssh" / "key"
        key.write_bytes(target.private_key)
        key.chmod(0o600)
        kh = data_dir / "ssh" / "known_hosts"
        kh.write_text(target.known_hosts)
        (project / "wso2-operator-play.yml").write_text(
            json.dumps(wrapper_play(spec, marker_key), indent=1)
        )
        home = data_dir / "home"
        home.mkdir()
        inv = build_inventory(
            target.alias,
            target.host,
            target.port,
            target.user,
            str(key),
            str(kh),
            spec,
            target.connect_timeout,
        )
        envvars = {
            "PATH": _path(),
            "HOME": str(home),
            "ANSIBLE_HOME": str(home / ".ansible"),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            # No ControlPersist: a master connection must not outlive this run's data dir.
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPersist=no",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_ROLES_PATH": str(project / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_INTERPRETER_PYTHON": "auto_silent",
            "ANSIBLE_TIMEOUT": str(max(1, int(target.connect_timeout))),
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
        }
        cmdline = "--become" if spec.become and spec.playbook else None
        return {
            "private_data_dir": str(data_dir),
            "playbook": "wso2-operator-play.yml",
            "inventory": inv,
            "extravars": dict(extravars),
            "envvars": envvars,
            "cmdline": cmdline,
            "quiet": True,
            "suppress_output_file": True,
            "suppress_ansible_output": True,
            "event_handler": on_event,
            "cancel_callback": cancel.is_set,
            "timeout": max(1, int(limit_seconds)) if limit_seconds else None,
        }

    def work() -> tuple[str, int | None]:
        try:
            kw = prepare()
            r = ansible_runner.run(**kw)
            return str(r.status), r.rc
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    fut = loop.run_in_executor(_PLAYS, work)
    try:
        status, rc = await asyncio.shield(fut)
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(fut), CANCEL_GRACE)
        raise
    final = state["p"]
    if status == "successful":
        return final
    if status == "timeout":
        raise PlayFailed(
            "ProvisionTimeout",
            f"the play did not finish within {limit_seconds or 0:g}s (last task "
            f"'{clip(final.task, 120)}', {final.summary()})",
        )
    if status == "canceled":
        raise asyncio.CancelledError
    detail = final.failure or final.error or f"ansible-playbook ended {status} (rc={rc})"
    raise PlayFailed("ProvisionFailed", cap(detail, 900))

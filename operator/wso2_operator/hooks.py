"""Run-once rollout hooks (spec.update.hooks) and the rollout's play content, for the reconciler.

``beforeRollout`` runs once before the first node of a rollout is touched, ``afterRollout`` once
after the last node is back, each on one named host, as commands or an Ansible play.

Exactly once, across kill -9 and a replica taking over:

* status.rollout.hooks records Running before the hook starts (with the rollout's start time,
  which is part of the hook's key) and Succeeded/Failed after; a hook found Running is run
  again by whoever resumes;
* that re-run cannot repeat finished work: every command (and a play as a whole) carries an
  on-host marker keyed by cluster, hook, rollout and retry (ssh.py's once_key; the play's marker
  task), so a command that had completed is skipped and one that had not runs again.

A failed beforeRollout applies failurePolicy before any node is touched (nothing to roll back);
a failed afterRollout leaves the nodes as they are and marks the rollout Degraded. A rollback
runs no beforeRollout (of the version that failed, or of its own).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ansible_provision import (
    ContentProblem,
    ContentStore,
    PlayContext,
    PlayFailed,
    PlayProgress,
    Target,
    check_vars,
    marker_check_command,
    run_play,
    work_base,
)
from .errors import SSHCommandFailed, SSHCommandTimeout, WSO2OperatorError
from .kube import event
from .model import AnsibleSource, ClusterSpec, HookRun, HookSpec, NodeProgress, RolloutState
from .planner import Plan
from .status import SetupProblem, condition, iso
from .steps import shown_command
from .textcap import cap, clip

if TYPE_CHECKING:
    from .adapters import Adapters
    from .reconciler import ClusterReconciler

log = logging.getLogger(__name__)

BEFORE = "beforeRollout"
AFTER = "afterRollout"
# A running play's task shows in its node's status row at most this often (status writes).
LIVE_PERIOD = 1.0


class HookFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------- pure
def _undecided(h: HookRun | None) -> bool:
    return h is None or h.phase == "Running"


def before_hook_due(spec: ClusterSpec, r: RolloutState, rolling_back: bool) -> bool:
    """beforeRollout must (still) run before this rollout's first node begins."""
    return (
        spec.before_rollout is not None
        and not rolling_back
        and not r.rolling_back
        and r.to_version == spec.version
        and r.failed_version != spec.version
        and _undecided(r.before_hook)
    )


def before_hook_blocks(spec: ClusterSpec, r: RolloutState, rolling_back: bool) -> bool:
    """No node of this rollout may begin: its beforeRollout has not succeeded."""
    if spec.before_rollout is None or rolling_back or r.rolling_back:
        return False
    return r.before_hook is None or r.before_hook.phase != "Succeeded"


def after_hook_due(spec: ClusterSpec, r: RolloutState, p: Plan) -> bool:
    """afterRollout must (still) run: every node is done, forward, and the rollout changed
    something (a new object for nodes already at the version is no rollout; a restart, config
    revision or OS patch is one)."""
    return (
        spec.after_rollout is not None
        and p.complete
        and not p.rolling_back
        and not r.finished
        and r.to_version == spec.version
        and (r.from_version != r.to_version or r.maintenance is not None)
        and _undecided(r.after_hook)
    )


def hook_key(namespace: str, name: str, kind: str, r: RolloutState, index: int, text: str) -> str:
    """The on-host marker key of one command (or the play) of one hook in one rollout. Built
    from status only (the start time is kept to the second), so a restarted operator or another
    replica computes the same key; a retry of a failed rollout runs the hook anew."""
    parts = (
        namespace,
        name,
        kind,
        r.to_version or "",
        iso(r.start) or "",
        r.retry_token or "",
        str(index),
        text,
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def hook_address(spec: ClusterSpec, hook: HookSpec) -> tuple[str, str, int]:
    """(inventory name, host, port): a node's own address when the hook names a node."""
    for n in spec.nodes:
        if n.name == hook.host:
            return n.name, n.host, n.ssh_port
    return hook.host, hook.host, hook.ssh_port


def after_failed(r: RolloutState) -> bool:
    return r.after_hook is not None and r.after_hook.phase == "Failed"


# ------------------------------------------------------------------------------------- running
async def run_hook(
    a: Adapters,
    spec: ClusterSpec,
    hook: HookSpec,
    kind: str,
    r: RolloutState,
    namespace: str,
    name: str,
    content: ContentStore,
) -> str:
    """Run one hook; its success message, or HookFailed. Transient SSH errors propagate."""
    alias, host, port = hook_address(spec, hook)
    to_v, from_v = r.to_version or spec.version, r.from_version or ""
    if hook.ansible is None:
        total = len(hook.commands)
        for i, cmd in enumerate(hook.commands):
            try:
                await a.ssh_run(
                    host,
                    port,
                    cmd,
                    env={"TARGET_VERSION": to_v, "FROM_VERSION": from_v, "WSO2_HOOK": kind},
                    timeout=hook.timeout,
                    once_key=hook_key(namespace, name, kind, r, i, cmd),
                )
            except SSHCommandFailed as e:
                raise HookFailed(
                    f"{kind} command {i + 1}/{total} ({shown_command(cmd)}) failed on {alias}: "
                    f"{e.outcome}"
                ) from None
            except SSHCommandTimeout as e:
                raise HookFailed(
                    f"{kind} command {i + 1}/{total} ({shown_command(cmd)}) timed out after "
                    f"{e.timeout:g}s on {alias}"
                ) from None
            except WSO2OperatorError as e:
                if e.transient:
                    raise
                raise HookFailed(f"{kind} on {alias}: {type(e).__name__}: {cap(e, 300)}") from None
        return f"{kind}: {total} command(s) done on {alias}"
    ans = hook.ansible
    problem = check_vars(ans)
    if problem:
        raise HookFailed(f"{kind}.ansible: {problem}")
    try:
        revision, tree = await content.fetch(ans.source, None)
    except ContentProblem as e:
        if e.transient:
            raise
        raise HookFailed(f"{kind}: {e.message}") from None
    key = hook_key(namespace, name, kind, r, 0, f"ansible:{revision}")
    done = await a.ssh_run(host, port, marker_check_command(key), timeout=60.0)
    if done.stdout.strip() == "done":
        return f"{kind}: the play ({revision}) had finished on {alias} before a restart"
    creds = a.ssh.credentials
    where = Target(alias, host, port, creds.username, creds.private_key, creds.known_hosts)
    extravars = {**ans.extra_vars, ans.version_variable: to_v, "wso2_from_version": from_v}
    try:
        final = await run_play(where, ans, tree, extravars, key, _quiet, limit_seconds=ans.timeout)
    except PlayFailed as e:
        raise HookFailed(f"{kind}: {e.message}") from None
    return f"{kind}: play done on {alias} ({final.summary()}; {revision})"


def _quiet(_: PlayProgress) -> None:
    """A hook's play reports no per-task progress: it has no node row to show it in."""


class PlayDriving:
    """Mixin of ClusterReconciler: play content, live play progress, run-once hooks."""

    def _init_plays(self: ClusterReconciler) -> None:
        ns, name = self.namespace, self.name

        async def read_cm(cm: str) -> dict[str, Any] | None:
            return await self.kube.read_config_map(ns, cm)

        async def read_secret(secret: str, key_key: str, hosts_key: str) -> tuple[bytes, str]:
            return await self.kube.read_ssh_secret(ns, secret, key_key, hosts_key, cluster=name)

        self.content = ContentStore(read_cm, read_secret, work_base() / ns / name)
        self._live: dict[str, NodeProgress] = {}
        self._live_flush: asyncio.Task[None] | None = None

    # -------------------------------------------------------------- content and live progress
    async def _rollout_content(self: ClusterReconciler, src: AnsibleSource) -> tuple[str, Path]:
        """This rollout's content: fetched at its first node, then that revision every time."""
        rev, tree = await self.content.fetch(src, self.rollout.provision_revision)
        if self.rollout.provision_revision is None:
            self.rollout = replace(self.rollout, provision_revision=rev)
        return rev, tree

    def _play_context(self: ClusterReconciler, name: str, p: NodeProgress) -> PlayContext:
        def report(message: str) -> None:
            cur = self.progress.get(name)
            # Only while the step that reports still owns the node's row (not after a retarget,
            # not after the step returned: a late event must not overwrite the next phase).
            if cur is None or (cur is not p and cur is not self._live.get(name)):
                return
            self._live[name] = self.progress[name] = replace(cur, message=message)
            if self._live_flush is None or self._live_flush.done():
                self._live_flush = asyncio.create_task(self._flush_live())

        return PlayContext(content=self._rollout_content, report=report)

    def _step_owner(self: ClusterReconciler, name: str, p: NodeProgress) -> bool:
        """Whether the node's row is still what the step started from (or its live updates)."""
        cur = self.progress.get(name)
        live = self._live.pop(name, None)
        return cur is p or (live is not None and cur is live)

    async def _flush_live(self: ClusterReconciler) -> None:
        await asyncio.sleep(LIVE_PERIOD)
        if self._stood_down or self.writer.other is not None:
            return
        try:
            await self.persist(self.spec())
        except Exception as e:  # the next regular write carries it; never crash a node task
            log.debug("live progress write failed: %s", type(e).__name__)

    # ------------------------------------------------------------------------------ the hooks
    async def _around_rollout(self: ClusterReconciler, spec: ClusterSpec, p: Plan) -> Plan:
        """Before nodes begin: fetch the content once and run beforeRollout; once every node is
        done: afterRollout. Returns the plan, with no node beginning when they must wait."""
        if self.adapters is None or self.problem is not None:
            return p
        if after_hook_due(spec, self.rollout, p) and spec.after_rollout is not None:
            await self._hook(spec, AFTER, spec.after_rollout)
            return p
        if not p.begin:
            return p
        if spec.ansible is not None and self.rollout.provision_revision is None:
            try:
                await self._rollout_content(spec.ansible.source)
            except ContentProblem as e:
                self.problem = SetupProblem(e.reason, f"provision.ansible: {e.message}")
                return replace(p, begin=())
        if before_hook_due(spec, self.rollout, p.rolling_back) and spec.before_rollout:
            await self._hook(spec, BEFORE, spec.before_rollout)
        if before_hook_blocks(spec, self.rollout, p.rolling_back):
            return replace(p, begin=())
        return p

    async def _hook(self: ClusterReconciler, spec: ClusterSpec, kind: str, hook: HookSpec) -> None:
        assert self.adapters is not None
        field = "before_hook" if kind == BEFORE else "after_hook"
        prev = getattr(self.rollout, field)
        start = prev.start if prev is not None and prev.start else time.time()
        running = HookRun("Running", f"{kind} running on {clip(hook.host, 253)}", start)
        self.rollout = replace(self.rollout, **{field: running})
        # Recorded before it runs: whoever resumes knows it may have started (and its markers
        # keep finished commands from running twice).
        await self.persist(spec)
        event(self.body, f"{kind[0].upper()}{kind[1:]}Started", running.message)
        try:
            msg = await run_hook(
                self.adapters,
                spec,
                hook,
                kind,
                self.rollout,
                self.namespace,
                self.name,
                self.content,
            )
            done = HookRun("Succeeded", msg, start, time.time())
        except HookFailed as e:
            done = HookRun("Failed", e.message, start, time.time())
        except WSO2OperatorError as e:
            # Transient (host unreachable...): stays Running, the next pass tries again.
            self.rollout = replace(
                self.rollout,
                **{field: replace(running, message=f"{kind}: will retry after {cap(e, 300)}")},
            )
            return
        self.rollout = replace(self.rollout, **{field: done})
        reason = f"{kind[0].upper()}{kind[1:]}{done.phase}"
        if done.phase == "Succeeded":
            event(self.body, reason, done.message)
            await self.persist(spec)
            return
        if kind == BEFORE:
            # Before any node: failurePolicy applies to a rollout that touched nothing.
            await self._fail_rollout(spec, reason, f"{reason}: {done.message}")
        else:
            event(self.body, reason, done.message, warning=True)
            log.error("%s/%s: %s", self.namespace, self.name, done.message)
            await self.persist(spec)

    def _hooks_status(
        self: ClusterReconciler, spec: ClusterSpec, status: dict[str, Any], p: Plan
    ) -> None:
        """Conditions the hooks decide: Ready waits for a pending afterRollout (history and
        Ready=True go out together); a failed beforeRollout (no node touched, so summarize sees
        no failed node) or afterRollout (every node updated) makes the rollout Degraded."""
        r = self.rollout
        if r.to_version != spec.version:
            return
        now = time.time()
        conds: list[dict[str, Any]] = status.get("conditions") or []

        def put(ctype: str, value: bool, reason: str, message: str) -> None:
            for i, c in enumerate(conds):
                if c.get("type") == ctype:
                    conds[i] = condition(
                        ctype, value, reason, message, self.generation, self.conditions, now
                    )

        if after_hook_due(spec, r, p):
            put("Ready", False, "AfterRolloutPending", f"all nodes run {p.target}; {AFTER} next")
            if status.get("phase") == "Ready":
                status["phase"] = "Progressing"
        elif after_failed(r) and r.after_hook is not None:
            put("Degraded", True, "AfterRolloutFailed", r.after_hook.message)
            if status.get("phase") == "Ready":
                status["phase"] = "Degraded"
        elif (
            r.before_hook is not None
            and r.before_hook.phase == "Failed"
            and r.failed_version == spec.version
            and not p.rolling_back
        ):
            put("Degraded", True, "BeforeRolloutFailed", r.before_hook.message)
            put("Ready", False, "BeforeRolloutFailed", r.before_hook.message)
            status["phase"] = "Degraded"


def retry_resets(r: RolloutState) -> dict[str, Any]:
    """What a retry (vmops.dev/retry) forgets besides the failed version: a failed hook."""
    out: dict[str, Any] = {}
    if r.before_hook is not None and r.before_hook.phase == "Failed":
        out["before_hook"] = None
    if after_failed(r):
        out["after_hook"] = None
    return out

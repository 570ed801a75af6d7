"""One step of one node's update: drain, provision, verify, wait healthy, enable, soak.

Each step is idempotent, so that a step interrupted by an operator crash can simply run again.
A `StepFailed` is definitive (the failure policy applies); an adapter error marked transient is
retried by the caller with backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import replace

from .adapters import Adapters, VersionProblem, lb_view, parse_version_output, timed
from .analysis import NodeAnalysis, Verdict
from .ansible_provision import (
    ContentProblem,
    PlayContext,
    PlayFailed,
    PlayProgress,
    Target,
    check_vars,
    marker_check_command,
    run_play,
)
from .errors import (
    DrainTimeout,
    LBProtocolError,
    LBStateMismatch,
    LBUnreachable,
    ReenableTimeout,
    SSHCommandFailed,
    SSHCommandTimeout,
)
from .model import ClusterSpec, NodeProgress, Phase
from .ownership import proved_out, serving_lbs
from .planner import UNREACHABLE, UP, NodeObservation, Step, StepKind
from .ramp import RAMP_START, ramp_share, set_share
from .reboot import RebootFailed, reboot_step
from .revision import Kind, applied, record_command
from .status import iso
from .textcap import clip

# Characters of a provision command quoted in a failure message.
COMMAND_CHARS = 80

# A node that failed its analysis serves errors: its drain waits this long at most, then MAINT
# (requests in flight still finish; only new ones go elsewhere).
EVICT_BOUND = 5.0

VerdictOf = Callable[[str], NodeAnalysis]


class StepFailed(Exception):
    """A definitive failure of a node's update: the failure policy applies."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def run_step(
    a: Adapters,
    observed: dict[str, NodeObservation],
    spec: ClusterSpec,
    name: str,
    p: NodeProgress,
    step: Step,
    verdict: VerdictOf | None = None,
    play: PlayContext | None = None,
) -> NodeProgress:
    """Run one step of one node's update and return its new progress (not yet persisted).

    ``verdict``: the node's analysis so far, when spec.update.analysis is on (see soak).
    ``play``: content and progress reporting for spec.provision.ansible."""
    node = spec.node(name)
    target = p.target or spec.version
    now = time.time
    if step.kind == StepKind.DRAIN:
        try:
            async with timed("lb"):
                await a.pool.drain(
                    spec.backend,
                    name,
                    deadline=spec.drain_timeout,
                    on_timeout="shutdown"
                    if spec.on_drain_timeout == "ShutdownSessions"
                    else "fail",
                )
        except DrainTimeout as e:
            raise StepFailed("DrainTimeout", f"{name}: {e}") from None
        return p.to(Phase.PROVISIONING, now(), f"{name}: drained and in MAINT on every LB", step=0)
    if step.kind == StepKind.REBOOT:
        try:
            return await reboot_step(
                a, spec, name, p, lambda: ensure_out_of_rotation(a, spec, name)
            )
        except RebootFailed as e:
            raise StepFailed(e.reason, e.message) from None
    if step.kind == StepKind.PROVISION and spec.ansible is not None and p.kind == Kind.PROVISION:
        await ensure_out_of_rotation(a, spec, name)
        if play is None:
            raise AssertionError("provision.ansible needs a PlayContext")
        return await provision_play(a, spec, name, p, target, play)
    if step.kind == StepKind.PROVISION:
        commands, what = command_list(spec, p.kind)
        cmd = commands[step.index]
        total = len(commands)
        await ensure_out_of_rotation(a, spec, name)
        rev = p.revision.as_dict() if p.revision else {}
        try:
            await a.ssh_run(
                node.host,
                node.ssh_port,
                cmd,
                env={
                    "TARGET_VERSION": target,
                    "NODE_NAME": name,
                    "CONFIG_REVISION": rev.get("config", ""),
                },
                timeout=spec.provision_timeout,
                once_key=provision_key(name, target, p, step.index, once_text(p, cmd)),
            )
        except SSHCommandFailed as e:
            raise StepFailed(
                f"{what.capitalize()}Failed",
                f"{name}: {what} command {step.index + 1}/{total} ({shown_command(cmd)}) "
                f"failed: {e.outcome}",
            ) from None
        except SSHCommandTimeout as e:
            raise StepFailed(
                f"{what.capitalize()}Timeout",
                f"{name}: {what} command {step.index + 1}/{total} ({shown_command(cmd)}) "
                f"timed out after {e.timeout:g}s",
            ) from None
        nxt = step.index + 1
        if nxt >= total and p.kind == Kind.REBOOT:
            return replace(p, step=nxt, attempts=0, message=f"{name}: patched; rebooting next")
        if nxt >= total:
            done = "provisioned" if p.kind == Kind.PROVISION else "restarted on"
            return p.to(Phase.VERIFYING, now(), f"{name}: {done} {target}", step=nxt)
        return replace(
            p, step=nxt, attempts=0, message=f"{name}: {what} command {nxt}/{total} done"
        )
    if step.kind == StepKind.VERIFY:
        r = await a.ssh_run(
            node.host,
            node.ssh_port,
            spec.version_command,
            env={"NODE_NAME": name},
            timeout=min(60.0, spec.provision_timeout),
        )
        got = parse_version_output(r.stdout, r.stdout_dropped)
        if isinstance(got, VersionProblem):
            raise StepFailed("VersionMismatch", f"{name}: {got.message}, expected {target!r}")
        if got != target:
            raise StepFailed(
                "VersionMismatch",
                f"{name}: versionCommand printed {got!r}, expected {target!r}",
            )
        o = observed.get(name, NodeObservation())
        observed[name] = replace(o, version=got)
        if p.revision is not None and p.revision.as_dict():
            # What this update brought the node to, read back by every observation: a later
            # change on the node (drift) or a lost status still shows the truth.
            await a.ssh_run(
                node.host, node.ssh_port, record_command(applied(p.kind, p.revision)), timeout=30
            )
        return p.to(Phase.WAITING_HEALTHY, now(), f"{name}: runs {target}; waiting until healthy")
    if step.kind == StepKind.WAIT_HEALTHY:
        since = p.since or now()
        deadline = time.monotonic() + max(0.0, since + spec.health.healthy_deadline - now())
        # HAProxy's own checks rise while we wait (see LBPool.warm): the version is verified
        # and the old process gone, and the node stays out of rotation until ENABLE.
        async with timed("lb"):
            await a.pool.warm(spec.backend, name)
        ok, detail = await a.health.wait_healthy(
            node.host, spec.health, deadline, poll=min(spec.health.period, 0.2)
        )
        if not ok:
            # Back to MAINT: a node that failed our check must not sit in DRAIN, where passing
            # HAProxy checks would let persistent traffic reach it while the policy decides.
            async with timed("lb"):
                await a.pool.maint(spec.backend, name)
            raise StepFailed(
                "HealthCheckFailed",
                f"{name}: not healthy within {spec.health.healthy_deadline:g}s: {detail}",
            )
        o = observed.get(name, NodeObservation())
        observed[name] = replace(o, healthy=True)
        return p.to(Phase.ENABLING, now(), f"{name}: healthy; re-enabling on every LB")
    if step.kind == StepKind.ENABLE:
        try:
            async with timed("lb"):
                # A ramp starts low; without one the configured weight is set, so a weight left
                # lowered by an interrupted ramp never outlives the next enable.
                share = RAMP_START if spec.ramp_seconds > 0 else 1.0
                await set_share(a.pool.clients, spec.backend, name, share)
                await a.pool.reenable(
                    spec.backend, name, deadline=max(10.0, spec.health.healthy_deadline)
                )
        except ReenableTimeout as e:
            raise StepFailed("ReenableTimeout", f"{name}: {e}") from None
        return p.to(Phase.SOAKING, now(), f"{name}: UP on every LB; soaking")
    if step.kind == StepKind.SOAK:
        return await soak(a, observed, spec, name, p, verdict)
    raise AssertionError(step)


async def provision_play(
    a: Adapters, spec: ClusterSpec, name: str, p: NodeProgress, target: str, play: PlayContext
) -> NodeProgress:
    """The whole play on one node, as one provision step (see ansible_provision).

    Its exactly-once key is the commands' (provision_key) over the content revision: a play that
    finished before a restart left its marker and is not run again; one that did not runs again
    from the start."""
    ans = spec.ansible
    assert ans is not None
    node = spec.node(name)
    problem = check_vars(ans)
    if problem:
        raise StepFailed("InvalidProvisionSpec", f"{name}: provision.ansible: {problem}")
    try:
        revision, content = await play.content(ans.source)
    except ContentProblem as e:
        if e.transient:
            raise
        raise StepFailed(e.reason, f"{name}: {e.message}") from None
    key = provision_key(name, target, p, 0, f"ansible:{revision}")
    r = await a.ssh_run(
        node.host, node.ssh_port, marker_check_command(key), timeout=min(60.0, ans.timeout)
    )
    if r.stdout.strip() == "done":
        return p.to(
            Phase.VERIFYING,
            time.time(),
            f"{name}: the play ({revision}) had finished before a restart; not run again",
            step=1,
        )
    creds = a.ssh.credentials
    where = Target(
        alias=name,
        host=node.host,
        port=node.ssh_port,
        user=creds.username,
        private_key=creds.private_key,
        known_hosts=creds.known_hosts,
        connect_timeout=creds.connect_timeout,
    )

    def report(pp: PlayProgress) -> None:
        play.report(f"{name}: ansible task '{clip(pp.task, 120)}' ({pp.summary()})")

    extravars = {**ans.extra_vars, ans.version_variable: target}
    if p.revision is not None and p.revision.config:
        extravars["wso2_config_revision"] = p.revision.config
    try:
        final = await run_play(
            where, ans, content, extravars, key, report, limit_seconds=ans.timeout
        )
    except PlayFailed as e:
        raise StepFailed(e.reason, f"{name}: {e.message}") from None
    return p.to(
        Phase.VERIFYING,
        time.time(),
        f"{name}: provisioned {target} with the play ({final.summary()}; {revision})",
        step=1,
    )


def command_list(spec: ClusterSpec, kind: Kind) -> tuple[tuple[str, ...], str]:
    """The commands of one node's update of this kind, and what a message calls them."""
    if kind == Kind.RESTART:
        return spec.maintenance.restart_commands, "restart"
    if kind == Kind.REBOOT:
        return spec.maintenance.patch_commands, "patch"
    return spec.provision_commands, "provision"


def once_text(p: NodeProgress, cmd: str) -> str:
    """What a command's exactly-once key is made of besides the update: a restart or patch
    command is keyed by the revision it serves (a provision command keeps its old key)."""
    if p.kind == Kind.PROVISION:
        return cmd
    rev = p.revision.as_dict() if p.revision else {}
    tokens = ",".join(f"{k}={v}" for k, v in rev.items())
    return f"{p.kind}:{tokens}:{cmd}"


def shown_command(cmd: str) -> str:
    """A provision command as a message quotes it: its first line, in backticks, at most
    COMMAND_CHARS characters. The spec's own text, so the user finds which of their commands
    failed; several lines (a script) end in " ...", and control characters are replaced."""
    lines = cmd.strip().splitlines() or [""]
    first = clip(lines[0].strip(), COMMAND_CHARS)
    return f"`{first}{' ...' if len(lines) > 1 else ''}`"


async def ensure_out_of_rotation(a: Adapters, spec: ClusterSpec, name: str) -> None:
    """Never run a provision command on a node that an LB still sends traffic to.

    The drain proved it out, but status can be restored or edited, and an LB can reload: this is
    the last check before the node is touched. Transient: re-assertion or a re-drain fixes it.
    """
    states = (await lb_view(spec, a)).states.get(name, {})
    serving = serving_lbs(NodeObservation(lb=states))
    if serving or not proved_out(NodeObservation(lb=states)):
        shown = ", ".join(f"{lb}={s}" for lb, s in states.items())
        raise LBStateMismatch(
            f"{name} is not out of rotation on every LB ({shown}); not provisioning it"
        )


def provision_key(name: str, target: str, p: NodeProgress, index: int, cmd: str) -> str:
    """The exactly-once key of one provision command in one update of one node.

    Built only from what status keeps (the update's start time is stored to the second), so an
    operator that restarts from status computes the same key; a later update of the node (a
    retry, a rollback, the next version) has another start time and runs every command again.
    """
    parts = (name, target, iso(p.start) or "", str(index), cmd)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


async def soak(
    a: Adapters,
    observed: dict[str, NodeObservation],
    spec: ClusterSpec,
    name: str,
    p: NodeProgress,
    verdict: VerdictOf | None = None,
) -> NodeProgress:
    """Stay UP on every LB and healthy for minReadySeconds, or fail.

    With a ramp, the node's weight rises meanwhile (re-set every tick, so an HAProxy reload
    that restored the configured weight is corrected) and the soak lasts at least the ramp.
    With analysis, it ends only when the node passed its windows; a failed analysis takes the
    node out of rotation at once (see evict) and fails it.
    """
    node = spec.node(name)
    since = p.since or time.time()
    end = since + max(spec.min_ready_seconds, spec.ramp_seconds)
    while True:
        if spec.ramp_seconds > 0:
            share = ramp_share(time.time() - since, spec.ramp_seconds)
            async with timed("lb"):
                await set_share(a.pool.clients, spec.backend, name, share)
        judged = verdict(name) if verdict is not None else None
        if judged is not None and judged.verdict == Verdict.FAILED:
            await evict(a, spec, name)
            raise StepFailed("AnalysisFailed", f"{judged.message}; taken out of rotation")
        # A read up to half a second old will do (the loop sleeps a second): other soaking
        # nodes' reads of the same backend serve it.
        view = await lb_view(spec, a, not_before=time.monotonic() - 0.5)
        states = view.states.get(name, {})
        if view.errors:
            lb, err = next(iter(view.errors.items()))
            # Not the node's fault, and not a pass either: retried with backoff by the caller.
            raise LBProtocolError(f"LB {lb} answered wrongly during minReadySeconds: {err}", lb=lb)
        silent = [lb for lb, s in states.items() if s == UNREACHABLE]
        if silent and not spec.tolerate_unreachable:
            raise LBUnreachable(
                f"LB {', '.join(silent)} unreachable during minReadySeconds", lb=silent[0]
            )
        bad = {lb: s for lb, s in states.items() if s not in (UP, UNREACHABLE)}
        if bad:
            raise StepFailed(
                "SoakFailed",
                f"{name}: left rotation during minReadySeconds: "
                + ", ".join(f"{k}={v}" for k, v in bad.items()),
            )
        ok, detail = await a.health.check(node.host, spec.health)
        if not ok:
            raise StepFailed("SoakFailed", f"{name}: unhealthy during minReadySeconds: {detail}")
        if time.time() >= end and (judged is None or judged.verdict == Verdict.PASSED):
            break
        await asyncio.sleep(min(0.5 if judged else 1.0, max(0.05, end - time.time())))
    if spec.ramp_seconds > 0:
        async with timed("lb"):
            await set_share(a.pool.clients, spec.backend, name, 1.0)
    # What soak just proved is the freshest observation: without it the status written with
    # "Current" would still show the node out of rotation (ready 2/3) until the next observation.
    observed[name] = replace(observed.get(name, NodeObservation()), lb=dict(states), healthy=True)
    return NodeProgress(
        phase=Phase.CURRENT,
        since=time.time(),
        message=f"{name}: updated to {p.target}",
    )


async def evict(a: Adapters, spec: ClusterSpec, name: str) -> None:
    """Take a node that serves errors out of rotation now: DRAIN, at most EVICT_BOUND for its
    sessions, then MAINT on every LB; its weight goes back to the configured one."""
    async with timed("lb"):
        try:
            await a.pool.drain(spec.backend, name, deadline=EVICT_BOUND, on_timeout="fail")
        except DrainTimeout:
            await a.pool.maint(spec.backend, name)
        await set_share(a.pool.clients, spec.backend, name, 1.0)

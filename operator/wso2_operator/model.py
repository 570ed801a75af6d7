"""Typed views of a WSO2Cluster's spec and persisted progress.

The apiserver has already validated and defaulted the spec (see crds/wso2clusters.yaml), so the
parsing here is about types, not validation; the defaults repeated below only matter for objects
created before a default was added to the CRD.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from .revision import Kind, Revision

# The CRD's patterns for spec.version (also what a versionCommand must print to count as a
# version) and spec.nodes[].name. ASCII classes on purpose: \d would match other scripts' digits.
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class Phase(StrEnum):
    """Per-node phase, persisted in status.nodes[].phase. In-flight phases are resumable."""

    CURRENT = "Current"  # at the target version (not necessarily in rotation; see observation)
    OUTDATED = "Outdated"
    UNKNOWN = "Unknown"  # version could not be probed
    DRAINING = "Draining"
    PROVISIONING = "Provisioning"
    VERIFYING = "Verifying"
    WAITING_HEALTHY = "WaitingHealthy"
    ENABLING = "Enabling"
    SOAKING = "Soaking"
    FAILED = "Failed"
    REBOOTING = "Rebooting"  # a patch's reboot was asked for: waiting for a new boot id


IN_FLIGHT = frozenset(
    {
        Phase.DRAINING,
        Phase.PROVISIONING,
        Phase.REBOOTING,
        Phase.VERIFYING,
        Phase.WAITING_HEALTHY,
        Phase.ENABLING,
        Phase.SOAKING,
    }
)
# Phases in which the node must be out of load-balanced traffic on every LB.
MUST_BE_OUT = frozenset(
    {Phase.PROVISIONING, Phase.REBOOTING, Phase.VERIFYING, Phase.WAITING_HEALTHY, Phase.FAILED}
)
# Before re-enable starts, a new spec version can be applied to a node still out of rotation
# without putting it back first: that is the "safe point" for a retarget.
RETARGETABLE = frozenset({Phase.PROVISIONING, Phase.VERIFYING, Phase.WAITING_HEALTHY})


@dataclass(frozen=True)
class NodeSpec:
    name: str
    host: str
    ssh_port: int = 22


@dataclass(frozen=True)
class LBHostSpec:
    name: str
    host: str | None = None
    ssh_port: int = 22
    socket: str | None = None
    address: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "sshPort": self.ssh_port}
        if self.host:
            d["host"] = self.host
        if self.socket:
            d["socket"] = self.socket
        if self.address:
            d["address"] = self.address
        return d


@dataclass(frozen=True)
class HealthSpec:
    port: int = 8243
    scheme: str = "HTTPS"
    path: str = "/health"
    expected_status: int = 200
    period: float = 1.0
    timeout: float = 2.0
    healthy_deadline: float = 300.0


@dataclass(frozen=True)
class CanaryStep:
    """One item of spec.update.steps: a node count to reach, or a pause.

    Called a canary step in the code: "step" alone names a node's update steps (planner.Step).
    """

    nodes: int | str | None = None  # an int, or "N%" of the nodes rounded up
    pause: bool = False
    duration: float | None = None  # a timed pause; None with pause=True: until promoted

    def node_count(self, total: int) -> int:
        """The nodes this step asks for, between 1 and total."""
        if isinstance(self.nodes, str):
            n = math.ceil(total * int(self.nodes.rstrip("%")) / 100)
        else:
            n = int(self.nodes or total)
        return max(1, min(total, n))


@dataclass(frozen=True)
class AnalysisPolicy:
    """spec.update.analysis: how LB counter windows are judged (see analysis.py)."""

    interval: float = 10.0
    min_requests: int = 20
    failure_limit: int = 2
    success_windows: int = 3
    inconclusive_limit: int = 6
    max_error_percent: float = 2.0
    max_error_ratio: float = 3.0
    max_response_time_ratio: float = 2.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnalysisPolicy:
        return cls(
            interval=float(d.get("intervalSeconds", 10)),
            min_requests=int(d.get("minRequests", 20)),
            failure_limit=int(d.get("failureLimit", 2)),
            success_windows=int(d.get("successWindows", 3)),
            inconclusive_limit=int(d.get("inconclusiveLimit", 6)),
            max_error_percent=float(d.get("maxErrorPercent", 2)),
            max_error_ratio=float(d.get("maxErrorRatio", 3)),
            max_response_time_ratio=float(d.get("maxResponseTimeRatio", 2)),
        )


def parse_canary_steps(raw: object) -> tuple[CanaryStep, ...]:
    out = []
    for item in raw if isinstance(raw, list) else ():
        if not isinstance(item, Mapping):
            continue
        if "pause" in item:
            pause = item.get("pause") or {}
            d = pause.get("durationSeconds") if isinstance(pause, Mapping) else None
            out.append(CanaryStep(pause=True, duration=float(d) if d is not None else None))
        elif "nodes" in item:
            out.append(CanaryStep(nodes=item["nodes"]))
    return tuple(out)


@dataclass(frozen=True)
class AnsibleSource:
    """Where a play's content comes from: exactly one of a ConfigMap or a Git repository."""

    config_map: str | None = None
    git_url: str | None = None
    git_ref: str = "main"
    git_secret: str | None = None  # a Secret with an SSH key and known_hosts for the Git host
    git_private_key_key: str = "ssh-privatekey"
    git_known_hosts_key: str = "known_hosts"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnsibleSource:
        cm = d.get("configMap") or {}
        git = d.get("git") or {}
        ref = git.get("sshSecretRef") or {}
        return cls(
            config_map=cm.get("name") or None,
            git_url=git.get("url") or None,
            git_ref=str(git.get("ref", "main")),
            git_secret=ref.get("name") or None,
            git_private_key_key=ref.get("privateKeyKey", "ssh-privatekey"),
            git_known_hosts_key=ref.get("knownHostsKey", "known_hosts"),
        )


@dataclass(frozen=True)
class AnsibleSpec:
    """spec.provision.ansible (and a hook's ansible): the team's own play, run per host."""

    source: AnsibleSource
    playbook: str | None = None
    role: str | None = None
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    group_vars: Mapping[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    version_variable: str = "target_version"
    become: bool = False
    gather_facts: bool = True
    timeout: float = 1800.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnsibleSpec:
        return cls(
            source=AnsibleSource.from_dict(d.get("source") or {}),
            playbook=d.get("playbook") or None,
            role=d.get("role") or None,
            extra_vars=dict(d.get("extraVars") or {}),
            group_vars=dict(d.get("groupVars") or {}),
            groups=tuple(d.get("groups") or ()),
            version_variable=str(d.get("versionVariable", "target_version")),
            become=bool(d.get("become", False)),
            gather_facts=bool(d.get("gatherFacts", True)),
            timeout=float(d.get("timeoutSeconds", 1800)),
        )


@dataclass(frozen=True)
class HookSpec:
    """spec.update.hooks.beforeRollout / afterRollout: run once per rollout on one host."""

    host: str  # a node name (its host and port are used) or a host name with its own known_hosts
    ssh_port: int = 22
    commands: tuple[str, ...] = ()
    ansible: AnsibleSpec | None = None
    timeout: float = 600.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HookSpec:
        return cls(
            host=str(d.get("host", "")),
            ssh_port=int(d.get("sshPort", 22)),
            commands=tuple(d.get("commands") or ()),
            ansible=AnsibleSpec.from_dict(d["ansible"])
            if isinstance(d.get("ansible"), Mapping)
            else None,
            timeout=float(d.get("timeoutSeconds", 600)),
        )


@dataclass(frozen=True)
class MaintenanceSpec:
    """spec.maintenance: the commands of a rolling restart and of an OS patch (see revision.py)."""

    restart_commands: tuple[str, ...] = ("wso2ctl stop", "wso2ctl start")
    patch_commands: tuple[str, ...] = ()
    reboot_command: str = "sudo systemctl reboot"
    boot_id_command: str = "cat /proc/sys/kernel/random/boot_id"
    reboot_timeout: float = 600.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MaintenanceSpec:
        dflt = cls()
        return cls(
            restart_commands=tuple(d.get("restartCommands", dflt.restart_commands)),
            patch_commands=tuple(d.get("patchCommands") or ()),
            reboot_command=str(d.get("rebootCommand", dflt.reboot_command)),
            boot_id_command=str(d.get("bootIdCommand", dflt.boot_id_command)),
            reboot_timeout=float(d.get("rebootTimeoutSeconds", dflt.reboot_timeout)),
        )


def _hook(up: Mapping[str, Any], kind: str) -> HookSpec | None:
    hooks = up.get("hooks") or {}
    raw = hooks.get(kind) if isinstance(hooks, Mapping) else None
    return HookSpec.from_dict(raw) if isinstance(raw, Mapping) else None


@dataclass(frozen=True)
class ClusterSpec:
    version: str
    nodes: tuple[NodeSpec, ...]
    ssh_user: str
    secret_name: str
    private_key_key: str = "ssh-privatekey"
    known_hosts_key: str = "known_hosts"
    connect_timeout: float = 10.0
    backend: str = ""
    lb_hosts: tuple[LBHostSpec, ...] = ()
    tolerate_unreachable: bool = False
    provision_commands: tuple[str, ...] = ()
    version_command: str = ""
    provision_timeout: float = 600.0
    health: HealthSpec = field(default_factory=HealthSpec)
    max_unavailable: int = 1
    drain_timeout: float = 300.0
    on_drain_timeout: str = "Fail"
    min_ready_seconds: float = 0.0
    progress_deadline: float = 1800.0
    failure_policy: str = "Pause"
    paused: bool = False
    canary_steps: tuple[CanaryStep, ...] = ()
    ramp_seconds: float = 0.0
    analysis: AnalysisPolicy | None = None
    ansible: AnsibleSpec | None = None  # spec.provision.ansible, instead of provision_commands
    before_rollout: HookSpec | None = None
    after_rollout: HookSpec | None = None
    revision: Revision = field(default_factory=Revision)  # configRevision/restartedAt/patchedAt
    maintenance: MaintenanceSpec = field(default_factory=MaintenanceSpec)

    @property
    def provision_step_count(self) -> int:
        """Provision steps of one node's update: one per command, or the whole play as one."""
        return 1 if self.ansible is not None else len(self.provision_commands)

    def step_count(self, kind: str) -> int:
        """Command steps of one node's update of this kind (a reboot follows a patch's)."""
        if kind == Kind.RESTART:
            return len(self.maintenance.restart_commands)
        if kind == Kind.REBOOT:
            return len(self.maintenance.patch_commands)
        return self.provision_step_count

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> ClusterSpec:
        nodes = tuple(
            NodeSpec(name=n["name"], host=n["host"], ssh_port=int(n.get("sshPort", 22)))
            for n in spec.get("nodes", [])
        )
        ssh = spec.get("ssh", {})
        ref = ssh.get("secretRef", {})
        lbs = spec.get("loadBalancers", {})
        prov = spec.get("provision", {})
        hc = spec.get("healthCheck", {}) or {}
        up = spec.get("update", {}) or {}
        return cls(
            version=str(spec["version"]),
            nodes=nodes,
            ssh_user=ssh.get("user", "root"),
            secret_name=ref.get("name", ""),
            private_key_key=ref.get("privateKeyKey", "ssh-privatekey"),
            known_hosts_key=ref.get("knownHostsKey", "known_hosts"),
            connect_timeout=float(ssh.get("connectTimeoutSeconds", 10)),
            backend=lbs.get("backend", ""),
            lb_hosts=tuple(
                LBHostSpec(
                    name=h["name"],
                    host=h.get("host"),
                    ssh_port=int(h.get("sshPort", 22)),
                    socket=h.get("socket"),
                    address=h.get("address"),
                )
                for h in lbs.get("hosts", [])
            ),
            tolerate_unreachable=bool(lbs.get("tolerateUnreachable", False)),
            provision_commands=tuple(prov.get("commands", ())),
            version_command=prov.get("versionCommand", ""),
            provision_timeout=float(prov.get("timeoutSeconds", 600)),
            health=HealthSpec(
                port=int(hc.get("port", 8243)),
                scheme=hc.get("scheme", "HTTPS"),
                path=hc.get("path", "/health"),
                expected_status=int(hc.get("expectedStatus", 200)),
                period=float(hc.get("periodSeconds", 1)),
                timeout=float(hc.get("timeoutSeconds", 2)),
                healthy_deadline=float(hc.get("healthyDeadlineSeconds", 300)),
            ),
            max_unavailable=resolve_max_unavailable(up.get("maxUnavailable", 1), len(nodes)),
            drain_timeout=float(up.get("drainTimeoutSeconds", 300)),
            on_drain_timeout=up.get("onDrainTimeout", "Fail"),
            min_ready_seconds=float(up.get("minReadySeconds", 0)),
            progress_deadline=float(up.get("progressDeadlineSeconds", 1800)),
            failure_policy=up.get("failurePolicy", "Pause"),
            paused=bool(up.get("paused", False)),
            canary_steps=parse_canary_steps(up.get("steps")),
            ramp_seconds=float(up.get("rampSeconds", 0) or 0),
            analysis=(
                AnalysisPolicy.from_dict(up["analysis"])
                if isinstance(up.get("analysis"), Mapping)
                else None
            ),
            ansible=(
                AnsibleSpec.from_dict(prov["ansible"])
                if isinstance(prov.get("ansible"), Mapping)
                else None
            ),
            before_rollout=_hook(up, "beforeRollout"),
            after_rollout=_hook(up, "afterRollout"),
            revision=Revision.from_dict(
                {
                    "config": spec.get("configRevision"),
                    "restart": spec.get("restartedAt"),
                    "patch": spec.get("patchedAt"),
                }
            ),
            maintenance=MaintenanceSpec.from_dict(spec.get("maintenance") or {}),
        )


def resolve_max_unavailable(value: int | str, node_count: int) -> int:
    """An int, or a percentage rounded down as a Deployment does, never below 1.

    It is also capped at node_count - 1 (when there is more than one node), so that even a
    spec that slipped past validation always leaves one node serving.
    """
    if isinstance(value, str):
        pct = int(value.rstrip("%"))
        n = math.floor(node_count * pct / 100)
    else:
        n = int(value)
    n = max(1, n)
    if node_count > 1:
        n = min(n, node_count - 1)
    return n


@dataclass(frozen=True)
class NodeProgress:
    """What the operator has done to one node: the durable resume cursor, kept in status."""

    phase: Phase = Phase.UNKNOWN
    target: str | None = None  # the version this node is moving to while in flight
    previous_version: str | None = None
    step: int = 0  # next provision command to run
    since: float | None = None  # when the phase was entered (epoch seconds)
    start: float | None = None  # when this node's update began (for progressDeadlineSeconds)
    message: str = ""
    attempts: int = 0
    kind: Kind = Kind.PROVISION  # what this update does (see revision.py)
    revision: Revision | None = None  # the tokens this update brings the node to
    boot_id: str | None = None  # the boot id read before a reboot was asked for

    @property
    def in_flight(self) -> bool:
        return self.phase in IN_FLIGHT

    def to(self, phase: Phase, now: float, message: str = "", **changes: Any) -> NodeProgress:
        return replace(self, phase=phase, since=now, message=message, attempts=0, **changes)


@dataclass(frozen=True)
class HookRun:
    """One run-once hook of one rollout, as status.rollout.hooks keeps it."""

    phase: str  # Running, Succeeded or Failed
    message: str = ""
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class RolloutState:
    """Cluster-level cursor: what the current rollout is, and any failed version to hold on."""

    from_version: str | None = None
    to_version: str | None = None
    start: float | None = None
    rolling_back: bool = False
    failed_version: str | None = None
    retry_token: str | None = None
    finished: bool = False  # the history entry for this rollout has been written
    rollback_failed: bool = False  # a rollback itself failed: hold everything for a human
    hand_back_token: str | None = None  # the vmops.dev/hand-back value last acted on
    # Canary steps (see canary.py) and the annotations that steer them.
    step_index: int = 0
    pause_start: float | None = None
    promoted_full: bool = False
    aborted: bool = False
    promote_token: str | None = None
    promote_full_token: str | None = None
    abort_token: str | None = None
    # provision.ansible content fetched for this rollout (every node runs the same), and the
    # run-once hooks: what status and history show, and what makes them run once.
    provision_revision: str | None = None
    before_hook: HookRun | None = None
    after_hook: HookRun | None = None
    # The spec's configRevision/restartedAt/patchedAt this rollout moves to, and, for a rollout
    # that keeps the version, what it is named in history (revision.change_label).
    to_revision: Revision | None = None
    maintenance: str | None = None

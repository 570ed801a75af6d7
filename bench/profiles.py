"""The benchmark's scenarios (profiles), run kinds, and what one run takes and gives back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wso2_sandbox.fleet import FleetConfig
from wso2_sandbox.load import LoadConfig

FROM_VERSION, TO_VERSION = "1.0.0", "2.0.0"
RUN_KINDS = ("operator", "seed", "seed-delay0", "operator-analysis", "operator-ansible")
DEFAULT_RUNS = ("operator", "seed", "seed-delay0")

# The operator-analysis run's spec.update (issue 17's check): one canary node, a timed pause, and
# analysis from the LBs' counters; a failed analysis rolls every updated node back.
ANALYSIS_UPDATE: dict[str, Any] = {
    "failurePolicy": "Rollback",
    "steps": [{"nodes": 1}, {"pause": {"durationSeconds": 60}}],
    "analysis": {"intervalSeconds": 5, "minRequests": 20, "failureLimit": 2, "successWindows": 3},
}

# The operator-ansible run's spec.provision (issue 10's check): the seed's own role
# (bench/seed/roles, packed into this ConfigMap by bench.runs) through ansible-runner, with the
# seed play's settings (become, fact gathering on) and its inventory vars.
ANSIBLE_CONFIGMAP = "wso2ei-play"
ANSIBLE_PROVISION: dict[str, Any] = {
    "versionCommand": "wso2ctl version",
    "ansible": {
        "source": {"configMap": {"name": ANSIBLE_CONFIGMAP}},
        "role": "wso2ei",
        "versionVariable": "wso2_target_version",
        "become": True,
        "groups": ["wso2ei"],
        "groupVars": {
            "wso2ei_lb_server": "{{ inventory_hostname }}",  # inventory name = node name
            "wso2ei_lb_backend": "PRD_wso2ei",
            # Every fleet host is this machine: as bench/seed/ansible.cfg, name the interpreter.
            "ansible_python_interpreter": "/usr/bin/python3",
        },
        "timeoutSeconds": 120,
    },
}


@dataclass(frozen=True)
class Profile:
    """Fleet timing and traffic mix of one benchmark scenario."""

    name: str
    boot_seconds: float = 3.0
    ready_gap_seconds: float = 2.0  # the port opens this long before the node is ready
    install_seconds: float = 0.5
    rate: float = 200.0
    long_fraction: float = 0.10
    long_ms: tuple[int, int] = (2000, 5000)
    nodes: int = 3
    lbs: int = 2
    # Per-version faults of the stand-in (FleetConfig.faults): {} for a good release.
    faults: dict[str, dict[str, float | int]] = field(default_factory=dict)
    runs: tuple[str, ...] = DEFAULT_RUNS  # the run kinds `--runs` defaults to
    # Keep the load going until t0 + this, so runs that end at different times are compared
    # over the same window (a bad release keeps failing requests after the rollout ends). 0: off.
    observe_seconds: float = 0.0

    def fleet_config(self) -> FleetConfig:
        return FleetConfig(
            nodes=self.nodes,
            lbs=self.lbs,
            initial_version=FROM_VERSION,
            boot_seconds=self.boot_seconds,
            ready_gap_seconds=self.ready_gap_seconds,
            install_seconds=self.install_seconds,
            faults=self.faults or None,
        )

    def load_config(self, max_seconds: float) -> LoadConfig:
        return LoadConfig(
            rate=self.rate,
            long_fraction=self.long_fraction,
            long_ms=self.long_ms,
            max_seconds=max_seconds,
        )


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("default", boot_seconds=3.0, ready_gap_seconds=2.0),
        # WSO2 opens its ports long before its services answer: an open port proves nothing.
        Profile("slow-ready", boot_seconds=12.0, ready_gap_seconds=10.0),
        # Three times as many long requests: what waiting for a drain is worth.
        Profile("long-requests", long_fraction=0.30),
        # Issue 17: a 2.0.0 that answers 10 % of plain requests with 500 while /health passes.
        # Not in the default set: its run kinds and its figures are different (bench/README.md).
        Profile(
            "bad-release",
            faults={TO_VERSION: {"errorPercent": 10, "errorStatus": 500}},
            runs=("seed", "operator", "operator-analysis"),
            observe_seconds=90.0,
        ),
        # Issue 10: the seed's role through provision.ansible, next to the operator with
        # provision.commands and the seed's play; the default profile's fleet and load.
        Profile("ansible", runs=("operator", "operator-ansible", "seed")),
    )
}
DEFAULT_PROFILES = ("default", "slow-ready", "long-requests")


@dataclass
class RunOptions:
    warmup: float = 5.0  # load before t0, so long requests are in flight at the first drain
    tail: float = 3.0  # load after the last node is back, to catch late failures
    rollout_timeout: float = 300.0
    artifacts: Path | None = None
    pyinstrument: bool = False


@dataclass
class RunResult:
    name: str
    profile: str
    rollout_seconds: float | None = None
    requests_total: int = 0
    requests_failed: int = 0
    long_cut: int = 0
    max_nodes_out: int = 0
    max_nodes_admin_out: int = 0  # DRAIN/MAINT only: what the tool itself did
    health_flaps: dict[str, int] = field(default_factory=dict)  # DOWN outside own update
    decision_latency_seconds: float | None = None
    physical_limit_seconds: float | None = None
    overhead: float | None = None
    peak_rss_kib: int | None = None
    peak_rss_of: str = ""
    done_seconds: float | None = None  # operator: CR Ready at 2.0.0; seed: play exited
    load: dict[str, Any] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

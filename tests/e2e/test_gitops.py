"""GitOps for real: a real Argo CD syncs a WSO2Cluster from a Git repository.

One control plane, one Argo CD (redis, repo-server, application-controller, argocd-server), one
fleet and one operator process for the whole module, since Argo CD takes a while to start on
small machines. The control plane is the module's own, fresh, without our CRD: Argo CD installs it
from Git, which is what the sync-wave test is about. The tests run in file order and each one
leaves the WSO2Cluster Healthy for the next.

What Argo CD shows is read from the Application's status (`--persist-resource-health` puts each
resource's health, as our health.lua computed it, into `.status.resources`); resource actions go
through the real `argocd app actions run` against argocd-server with auth off.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import kubernetes
import pytest
import yaml

from tests.conftest import REPO, Kube, wait_for
from tests.e2e.conftest import FAST, OperatorProcess
from wso2_sandbox import fleet_procs
from wso2_sandbox.controlplane import ControlPlane
from wso2_sandbox.demo_kube import rolled_out
from wso2_sandbox.fleet import Fleet, FleetConfig
from wso2_sandbox.gitops import (
    GROUP,
    NAMESPACE,
    ArgoCD,
    GitRepo,
    app_health,
    app_revision,
    app_sync,
    application,
    resource_health,
)
from wso2_sandbox.gitops import VERSION as ARGO_VERSION
from wso2_sandbox.load import LoadConfig, LoadGenerator, LoadThread, targets_from_fleet
from wso2_sandbox.manifest import fleet_manifests

pytestmark = pytest.mark.e2e

APP, NAME, NS = "wso2", "wso2ei", "wso2"
APP_PATH = "apps/wso2"
CR_FILE = f"{APP_PATH}/wso2cluster.yaml"


@dataclass
class GitOpsEnv:
    kube: Kube
    argo: ArgoCD
    repo: GitRepo
    fleet: Fleet
    operator: OperatorProcess
    api: Any  # kubernetes.client.CustomObjectsApi
    cluster: dict[str, Any] = field(default_factory=dict)  # the WSO2Cluster as in Git
    initial: dict[str, Any] = field(default_factory=dict)  # the first sync's Application
    timings: dict[str, float] = field(default_factory=dict)

    # -- reading
    def app(self) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(
            GROUP, ARGO_VERSION, NAMESPACE, "applications", APP, _request_timeout=5
        )

    def w2c(self) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(
            "vmops.dev", "v1alpha1", NS, "wso2clusters", NAME, _request_timeout=5
        )

    def info(self) -> str:
        with contextlib.suppress(Exception):
            app = self.app()
            st = app.get("status") or {}
            w = self.w2c()
            return (
                f"app sync={app_sync(app)} rev={app_revision(app)[:7]} health={st.get('health')}"
                f"\nresource health={resource_health(app, 'WSO2Cluster', NAME)}"
                f"\noperation={json.dumps(st.get('operationState'))[:1500]}"
                f"\nw2c status={json.dumps(w.get('status'))[:2500]}"
                f"\n--- controller log ---\n{self.argo.log_tail('application-controller', 1500)}"
                f"\n--- operator log ---\n{self.operator.log()[-2000:]}"
            )
        return "(could not read the Application)"

    def wait_app(
        self, what: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 120
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            with contextlib.suppress(Exception):
                app = self.app()
                if pred(app):
                    return app
            return None

        return wait_for(what, check, timeout, self.info)

    def wait_w2c(
        self, what: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 120
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            with contextlib.suppress(Exception):
                obj = self.w2c()
                if pred(obj):
                    return obj
            return None

        return wait_for(what, check, timeout, self.info)

    # -- Git
    def commit(self, message: str, **spec: Any) -> str:
        """Change the WSO2Cluster's spec in Git (None removes a key of spec.update), commit,
        and trigger a refresh as a Git webhook would. Returns the commit SHA."""
        cr = self.cluster
        for k, v in spec.items():
            if k == "update":
                upd = cr["spec"]["update"]
                for uk, uv in v.items():
                    if uv is None:
                        upd.pop(uk, None)
                    else:
                        upd[uk] = uv
            else:
                cr["spec"][k] = v
        self.repo.write(CR_FILE, cr)
        sha = self.repo.commit(message)
        self.argo.refresh(APP)
        return sha

    def synced_at(self, sha: str) -> Callable[[dict[str, Any]], bool]:
        return lambda a: app_sync(a) == "Synced" and app_revision(a) == sha

    def wait_healthy(self, sha: str, timeout: float = 150) -> dict[str, Any]:
        return self.wait_app(
            f"Synced at {sha[:7]} and Healthy",
            lambda a: self.synced_at(sha)(a) and app_health(a) == "Healthy",
            timeout,
        )

    # -- actions through Argo CD
    def actions(self) -> dict[str, bool]:
        """`argocd app actions list`: action -> enabled."""
        out = self.argo.cli("app", "actions", "list", APP, "--kind", "WSO2Cluster", "-o", "json")
        # The CLI prints its DisplayedAction structs as they are (Go field names).
        return {a["Action"]: not a["Disabled"] for a in json.loads(out or "[]")}

    def run_action(self, action: str) -> None:
        self.argo.cli(
            "app",
            "actions",
            "run",
            APP,
            action,
            "--kind",
            "WSO2Cluster",
            "--resource-name",
            NAME,
            "--namespace",
            NS,
        )


@pytest.fixture(scope="module")
def gitops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitOpsEnv]:
    base = tmp_path_factory.mktemp("gitops")
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        t = time.monotonic()
        cp = stack.enter_context(ControlPlane(workdir=base / "cluster"))
        assert cp.kubeconfig is not None
        kube = Kube(cp.kubeconfig)
        timings["control plane"] = time.monotonic() - t
        t = time.monotonic()
        argo = stack.enter_context(ArgoCD(workdir=base / "argocd", kubeconfig=cp.kubeconfig))
        timings["argocd start (warm build)"] = time.monotonic() - t
        fleet = Fleet(FleetConfig(nodes=3, **FAST)).start()
        stack.callback(fleet.stop)
        operator = OperatorProcess(cp.kubeconfig, NS, base / "operator.log")
        stack.callback(operator.stop)
        api = kubernetes.client.CustomObjectsApi(
            kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig))
        )
        repo = GitRepo(base / "git").init()
        env = GitOpsEnv(kube, argo, repo, fleet, operator, api, timings=timings)

        # Git: our CRDs as manifests/crds has them (its kustomization.yaml too, which the
        # Application excludes) and the WSO2Cluster; the Secret is applied by hand (keys stay out
        # of Git, as they should).
        for f in sorted((REPO / "manifests" / "crds").iterdir()):
            repo.write(f"{APP_PATH}/crds/{f.name}", f.read_text())
        secret, cr = fleet_manifests(fleet.description, name=NAME, namespace=NS, version="1.0.0")
        env.cluster = cr
        repo.write(CR_FILE, cr)
        sha = repo.commit("wso2ei 1.0.0 with the CRDs")
        kube.run("create", "namespace", NS)
        kube.apply(secret)
        # A fresh cluster: the WSO2Cluster CRD does not exist yet.
        assert kube.run("get", "crd", "wso2clusters.vmops.dev", check=False).returncode != 0
        t = time.monotonic()
        argo.apply_application(application(APP, repo.url, APP_PATH, NS))
        env.initial = env.wait_app(
            "the first sync to succeed",
            lambda a: (
                ((a.get("status") or {}).get("operationState") or {}).get("phase") == "Succeeded"
                and app_revision(a) == sha
            ),
            timeout=120,
        )
        timings["first sync"] = time.monotonic() - t
        operator.start()
        env.wait_healthy(sha)
        timings["first sync to Healthy"] = time.monotonic() - t
        yield env
        print(f"\ngitops timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


# The module's fixture runs in this test's setup; on a cold machine it includes the Argo CD build
# (~12 min on 2 cores; `make test` builds it before pytest, so there it is a cache hit).
@pytest.mark.timeout(1800)
def test_sync_waves_put_the_crds_before_the_cluster_on_a_fresh_cluster(gitops: GitOpsEnv) -> None:
    op = gitops.initial["status"]["operationState"]
    results = op["syncResult"]["resources"]
    assert all(r.get("status") == "Synced" for r in results), results
    # What the controller did, in its own words and order. (The Application keeps only the last
    # operation's results, and an automated sync may start a second one at once.)
    log = gitops.argo.log_tail("application-controller", 10**7)
    assert "no matches for kind" not in log and "could not find the requested resource" not in log
    crd_created = log.find(
        "customresourcedefinition.apiextensions.k8s.io/wso2clusters.vmops.dev created"
    )
    cr_created = log.find(f"wso2cluster.vmops.dev/{NAME} created")
    assert 0 <= crd_created < cr_created, log[-3000:]
    # Not applied as an object: the folder's kustomization.yaml is excluded.
    assert "Kustomization" not in json.dumps(gitops.initial["status"].get("resources"))
    # The wave of the CRDs (-10) finished before wave 0 started: the CRD is strictly older.
    crd_obj = gitops.kube.get_json("crd", "wso2clusters.vmops.dev")
    w2c = gitops.w2c()
    assert crd_obj["metadata"]["creationTimestamp"] < w2c["metadata"]["creationTimestamp"]
    assert crd_obj["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-10"
    # And the health Argo CD shows for the WSO2Cluster is ours (health.lua's message).
    health = resource_health(gitops.app(), "WSO2Cluster", NAME)
    assert health.get("status") == "Healthy", health


def test_a_version_bump_committed_to_git_rolls_out_under_load(gitops: GitOpsEnv) -> None:
    fleet = gitops.fleet
    gen = LoadGenerator(
        targets_from_fleet(fleet.description),
        LoadConfig(rate=50, long_fraction=0.1, long_ms=(800, 1500), max_seconds=240),
    )
    load = LoadThread(gen)
    samples: list[tuple[float, str, str, str, dict[str, Any]]] = []
    stop = threading.Event()

    def sample() -> None:
        # The Application and the WSO2Cluster, read one right after the other, 4 times a second.
        while not stop.is_set():
            with contextlib.suppress(Exception):
                app = gitops.app()
                obj = gitops.w2c()
                samples.append(
                    (time.monotonic(), app_sync(app), app_revision(app), app_health(app), obj)
                )
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    load.start()
    try:
        time.sleep(1.0)  # long requests in flight before the first drain
        sampler.start()
        t0 = time.monotonic()
        sha = gitops.commit("wso2ei 2.0.0", version="2.0.0")
        gitops.wait_app("Synced at the bump", gitops.synced_at(sha), timeout=60)
        synced = time.monotonic() - t0
        app = gitops.wait_healthy(sha)
        healthy = time.monotonic() - t0
        time.sleep(1.0)
    finally:
        stop.set()
        gen.stop()
        records = load.stop(timeout=10)
        sampler.join(timeout=5)
    print(f"\ncommit -> Synced {synced:.1f}s, commit -> Healthy {healthy:.1f}s")
    gitops.timings["commit to Synced"] = synced
    gitops.timings["commit to Healthy"] = healthy
    obj = gitops.w2c()
    assert rolled_out(obj, "2.0.0"), obj.get("status")
    assert resource_health(app, "WSO2Cluster", NAME).get("status") == "Healthy"
    failed = [r for r in records if not r.ok]
    assert records and not failed, failed[:5]
    at_bump = [s for s in samples if s[2] == sha]
    # Progressing while the nodes roll: seen with some node not yet at 2.0.0.
    rolling = [
        s
        for s in at_bump
        if s[3] == "Progressing"
        and any(r.get("version") != "2.0.0" for r in (s[4].get("status") or {}).get("nodes", []))
    ]
    assert rolling, [(s[1], s[3]) for s in at_bump]
    # Synced and Healthy only once Ready=True for the current generation with every node at
    # 2.0.0. (Before the sync, Argo CD shows the new revision as OutOfSync with the old object's
    # health, Healthy: that is not a claim about the new version.)
    early = [
        s
        for s in at_bump
        if s[1] == "Synced" and s[3] == "Healthy" and not rolled_out(s[4], "2.0.0")
    ]
    assert not early, early[0][4].get("status")


def test_a_failed_install_turns_the_application_degraded(gitops: GitOpsEnv) -> None:
    gitops.fleet.node("node2").set_fail_install(["3.0.0"])
    sha = gitops.commit("wso2ei 3.0.0", version="3.0.0")
    app = gitops.wait_app(
        "Degraded", lambda a: gitops.synced_at(sha)(a) and app_health(a) == "Degraded"
    )
    health = resource_health(app, "WSO2Cluster", NAME)
    assert health["status"] == "Degraded"
    # Our reason, as the operator wrote it in the Degraded condition.
    assert "node2" in health["message"] and "wso2ctl install" in health["message"], health
    assert gitops.actions()["retry"] is True

    # Fix the "package" and retry through Argo CD's resource action.
    gitops.fleet.node("node2").set_fail_install([])
    gitops.run_action("retry")
    obj = gitops.w2c()
    assert obj["metadata"]["annotations"].get("vmops.dev/retry")
    gitops.wait_healthy(sha)
    assert rolled_out(gitops.w2c(), "3.0.0")


def test_paused_committed_to_git_is_suspended(gitops: GitOpsEnv) -> None:
    sha = gitops.commit("pause wso2ei", update={"paused": True})
    app = gitops.wait_app(
        "Suspended", lambda a: gitops.synced_at(sha)(a) and app_health(a) == "Suspended"
    )
    assert resource_health(app, "WSO2Cluster", NAME)["status"] == "Suspended"
    actions = gitops.actions()
    assert actions["resume"] and not actions["pause"], actions
    sha = gitops.commit("unpause wso2ei", update={"paused": None})
    gitops.wait_healthy(sha)
    assert gitops.w2c()["spec"]["update"].get("paused") in (None, False)


def test_pause_and_resume_actions_through_argocd(gitops: GitOpsEnv) -> None:
    sha = gitops.repo.head()
    gitops.run_action("pause")
    assert gitops.w2c()["spec"]["update"]["paused"] is True
    gitops.wait_app("Suspended after pause", lambda a: app_health(a) == "Suspended")
    # Git does not set the field, so the live change is not a drift: still Synced.
    assert app_sync(gitops.app()) == "Synced"
    gitops.run_action("resume")
    assert gitops.w2c()["spec"]["update"]["paused"] is False
    gitops.wait_healthy(sha)


def _step_paused_at(version: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: (
        (o.get("status") or {}).get("phase") == "Paused"
        and (o.get("status") or {}).get("targetVersion") == version
    )


def test_promote_abort_retry_promote_full_actions_through_argocd(gitops: GitOpsEnv) -> None:
    steps = [{"nodes": 1}, {"pause": {}}]
    # promote: at the indefinite pause after one node.
    sha = gitops.commit(
        "wso2ei 4.0.0 as a canary",
        version="4.0.0",
        update={"steps": steps, "failurePolicy": "Rollback"},
    )
    gitops.wait_w2c("the canary pause of 4.0.0", _step_paused_at("4.0.0"))
    gitops.wait_app("Suspended at the pause", lambda a: app_health(a) == "Suspended")
    enabled = gitops.actions()
    assert enabled["promote"] and enabled["promote-full"] and enabled["abort"], enabled
    gitops.run_action("promote")
    assert gitops.w2c()["metadata"]["annotations"].get("vmops.dev/promote")
    gitops.wait_healthy(sha)
    assert rolled_out(gitops.w2c(), "4.0.0")

    # abort: the next canary, at its pause; failurePolicy Rollback returns node1.
    sha = gitops.commit("wso2ei 5.0.0 as a canary", version="5.0.0")
    gitops.wait_w2c("the canary pause of 5.0.0", _step_paused_at("5.0.0"))
    gitops.run_action("abort")
    assert gitops.w2c()["metadata"]["annotations"].get("vmops.dev/abort")
    app = gitops.wait_app("Degraded after abort", lambda a: app_health(a) == "Degraded")
    obj = gitops.wait_w2c(
        "every node back on 4.0.0",
        lambda o: all(r.get("version") == "4.0.0" for r in o["status"].get("nodes", [])),
    )
    assert obj["status"]["rollout"]["aborted"] is True
    assert resource_health(app, "WSO2Cluster", NAME)["status"] == "Degraded"

    # retry: 5.0.0 again, from its first step; promote-full then skips the pause.
    assert gitops.actions()["retry"] is True
    gitops.run_action("retry")
    assert gitops.w2c()["metadata"]["annotations"].get("vmops.dev/retry")
    gitops.wait_w2c("the canary pause of 5.0.0 again", _step_paused_at("5.0.0"))
    gitops.run_action("promote-full")
    assert gitops.w2c()["metadata"]["annotations"].get("vmops.dev/promote-full")
    gitops.wait_healthy(sha)
    obj = gitops.w2c()
    assert rolled_out(obj, "5.0.0") and obj["status"]["rollout"]["promotedFull"] is True


def test_the_argocd_cli_shows_the_application(gitops: GitOpsEnv) -> None:
    out = gitops.argo.cli("app", "get", APP)
    assert "Health Status:      Healthy" in out or "Healthy" in out, out
    assert "WSO2Cluster" in out and NAME in out, out
    # Nothing of Argo CD's own install left the argocd namespace.
    cm = gitops.kube.get_json("configmap", "argocd-cm", "-n", NAMESPACE)
    assert "resource.customizations.health.vmops.dev_WSO2Cluster" in cm["data"]
    assert yaml.safe_load(cm["data"]["resource.customizations.actions.vmops.dev_WSO2Cluster"])


def test_teardown_leaves_nothing_running(gitops: GitOpsEnv) -> None:
    # The last test: stop this module's Argo CD here, so the result can be checked (the
    # fixture's own stop() afterwards finds nothing to do).
    argo = gitops.argo
    pids = set(argo.pids.values())
    assert len(pids) == 4 and argo.processes() >= pids
    assert argo.stop() == set()
    assert not argo.processes()
    assert not any(fleet_procs.is_alive(p) for p in pids)
    assert not argo.state_file.exists()

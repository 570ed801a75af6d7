"""The ArgoCD health check (manifests/argocd/health.lua) run against real WSO2Cluster objects.

The fixtures in tests/fixtures/status/ are whole objects the real operator wrote while it drove a
local fleet (hack/capture_status.py regenerates them). The script runs in Lua 5.1, the dialect of
ArgoCD's gopher-lua, with `obj` built from the object the way ArgoCD does: a table per mapping,
a 1-based array per list, and no entry for a JSON null.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

from tests.conftest import CRD, REPO

ARGOCD = REPO / "manifests" / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
HEALTH_CM = ARGOCD / "argocd-cm-health.yaml"
HEALTH_KEY = "resource.customizations.health.vmops.dev_WSO2Cluster"
FIXTURES = REPO / "tests" / "fixtures" / "status"

# fixture -> (health status, a piece of the message)
EXPECTED: dict[str, tuple[str, str]] = {
    "new-no-status": ("Progressing", "Waiting for the operator to report status"),
    "ready": ("Healthy", "3/3 nodes run 1.0.0"),
    "stale-generation": ("Progressing", "observe generation 2 (status is for generation 1)"),
    "progressing": ("Progressing", "0/3 at 2.0.0; node1 Provisioning"),
    "degraded": ("Degraded", "node2: provision command 2/3 failed"),
    "ready-after-retry": ("Healthy", "3/3 nodes run 2.0.0"),
    "paused": ("Suspended", "paused with 1/3 nodes at 3.0.0"),
    "rolling-back": ("Degraded", "node3: provision command 2/3 failed"),
    "rolled-back": ("Degraded", "3.0.0 failed; rolling back to 2.0.0"),
}


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def to_lua(lua: Any, value: Any) -> Any:
    """Python (JSON) value -> Lua value, recursively; None becomes nil (the key is left out)."""
    if isinstance(value, dict):
        table = lua.table()
        for k, v in value.items():
            if v is not None:
                table[k] = to_lua(lua, v)
        return table
    if isinstance(value, list):
        table = lua.table()
        for i, v in enumerate(value, start=1):
            if v is not None:
                table[i] = to_lua(lua, v)
        return table
    return value


def health(obj: dict[str, Any], script: str | None = None) -> dict[str, Any]:
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    g = lua.globals()
    # ArgoCD's VM has no file or process access: make sure the script needs none.
    for lib in ("io", "os", "debug", "require", "dofile", "loadfile"):
        g[lib] = None
    g.obj = to_lua(lua, obj)
    hs = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    assert lua.eval("type")(hs) == "table", f"the script returned {hs!r}, not a table"
    return {k: v for k, v in hs.items()}


def test_fixtures_are_the_captured_set() -> None:
    names = {p.stem for p in FIXTURES.glob("*.json")}
    assert names == set(EXPECTED), "recapture with hack/capture_status.py and update EXPECTED"
    assert len(names) >= 6


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_health_of_captured_object(name: str) -> None:
    status, fragment = EXPECTED[name]
    hs = health(load(name))
    assert hs["status"] == status, hs
    assert fragment in hs["message"], hs
    assert set(hs) == {"status", "message"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_is_operator_written(name: str) -> None:
    """Whole objects as the apiserver served them, with only managedFields stripped, and every
    status field known to the CRD (nothing the apiserver would have pruned)."""
    obj = load(name)
    assert obj["apiVersion"] == "vmops.dev/v1alpha1" and obj["kind"] == "WSO2Cluster"
    assert "managedFields" not in obj["metadata"]
    assert obj["metadata"]["uid"] and obj["metadata"]["resourceVersion"]
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    known = set(version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"])
    status = obj.get("status") or {}
    assert set(status) <= known, set(status) - known
    if name != "new-no-status":
        assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}


def test_fixtures_cover_every_health_status() -> None:
    assert {s for s, _ in EXPECTED.values()} == {"Healthy", "Progressing", "Degraded", "Suspended"}


# Derived cases: a real object with one field changed, for the branches no capture reaches.


def test_paused_while_a_node_is_in_flight_is_progressing() -> None:
    obj = load("progressing")
    obj["spec"]["update"]["paused"] = True
    hs = health(obj)
    assert hs["status"] == "Progressing"
    assert hs["message"].startswith("Pausing after the node in flight: ")


def test_degraded_wins_over_paused() -> None:
    obj = load("degraded")
    obj["spec"]["update"]["paused"] = True
    assert health(obj)["status"] == "Degraded"


def test_paused_when_all_nodes_are_ready_is_suspended() -> None:
    obj = load("ready")
    obj["spec"]["update"]["paused"] = True
    (ready,) = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    assert health(obj) == {"status": "Suspended", "message": ready["message"]}


def test_stale_status_wins_over_degraded() -> None:
    """A spec change may be the fix for a failure: until the operator has seen it, wait."""
    obj = load("degraded")
    obj["metadata"]["generation"] += 1
    assert health(obj)["status"] == "Progressing"


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"observedGeneration": 1},
        {"observedGeneration": 1, "conditions": []},
        {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "Unknown"}]},
    ],
)
def test_sparse_status_does_not_break_the_script(status: dict[str, Any]) -> None:
    obj = copy.deepcopy(load("new-no-status"))
    obj["status"] = status
    hs = health(obj)
    assert hs["status"] == "Progressing"
    assert isinstance(hs["message"], str) and hs["message"]


def test_missing_spec_update_is_not_paused() -> None:
    obj = load("ready")
    del obj["spec"]["update"]
    assert health(obj)["status"] == "Healthy"


def test_configmap_snippet_holds_the_same_script() -> None:
    cm = yaml.safe_load(HEALTH_CM.read_text())
    assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][HEALTH_KEY] == HEALTH_LUA.read_text()
    assert health(load("ready"), cm["data"][HEALTH_KEY])["status"] == "Healthy"


def test_script_is_not_part_of_the_kustomize_base() -> None:
    """argocd-cm belongs to ArgoCD's install: `kubectl apply -k manifests/` must not touch it."""
    kustomization = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
    assert not any(str(r).startswith("argocd") for r in kustomization["resources"])


def test_lua_dialect_is_argocds() -> None:
    assert lua51.LuaRuntime().eval("_VERSION") == "Lua 5.1"
    # Lua 5.1 has no integer subtype: generations compare as numbers, and print without ".0".
    assert health(load("stale-generation"))["message"].endswith("generation 1)")

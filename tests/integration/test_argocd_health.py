"""The ArgoCD health check (manifests/argocd/health.lua) run against real WSO2Cluster objects.

The fixtures in tests/fixtures/status/ are whole objects the real operator wrote while it drove a
local fleet (hack/capture_status.py regenerates them). The handmade-*.json ones are not captured:
they are built by hand from issue 17's design (canary pause steps, analysis) out of captured ones,
until the operator writes those states and the capture script can record them.

The script runs in Lua 5.1, the dialect of ArgoCD's gopher-lua, with `obj` built from the object
the way ArgoCD does: a table per mapping, a 1-based array per list, and no entry for a JSON null;
and with only the libraries ArgoCD opens for a script from argocd-cm (see `argocd_lua`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
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

# Hand-made from issue 17's design until real captures exist: fixture -> (status, message).
HANDMADE: dict[str, tuple[str, str]] = {
    "handmade-step-paused-timed": ("Suspended", "step 2/3: paused until 2026-11-25T13:28:05Z"),
    "handmade-step-paused-indefinite": (
        "Suspended",
        "step 4/5: paused until promoted (annotate vmops.dev/promote)",
    ),
    "handmade-analysis-failed-pause": (
        "Degraded",
        "Analysis failed: node1: error rate 9.8% (51/520) vs baseline 0.0%, limit 2%",
    ),
    "handmade-analysis-failed-rolling-back": (
        "Degraded",
        "Analysis failed: node1: response time 36 ms vs baseline 11 ms, limit 2x; "
        "3.0.0 failed; rolling back to 2.0.0",
    ),
}
ALL = {**EXPECTED, **HANDMADE}

# Status fields issue 17's design adds (not in the CRD until that lands).
DESIGN_STATUS = {"analysis"}
DESIGN_ROLLOUT = {
    "stepIndex",
    "stepCount",
    "stepMessage",
    "pauseStartTime",
    "pauseEndTime",
    "promoteToken",
    "promoteFullToken",
    "abortToken",
    "promotedFull",
    "aborted",
}
DESIGN_ANALYSIS = {"phase", "message", "metric", "nodes", "windows"}
DESIGN_WINDOW = {
    "time",
    "node",
    "lb",
    "requests",
    "errors",
    "errorPercent",
    "baselineRequests",
    "baselineErrorPercent",
    "responseMs",
    "baselineResponseMs",
    "verdict",
    "reason",
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


# ArgoCD's os.date (util/lua/oslib_safe.go): strftime flags mapped to Go layouts; others stay as
# "%<c>" in the output.
_DATE_FLAGS = {
    "a": "%a",
    "A": "%A",
    "b": "%b",
    "B": "%B",
    "c": "%d %b %y %H:%M %Z",
    "d": "%d",
    "F": "%Y-%m-%d",
    "H": "%H",
    "I": "%I",
    "m": "%m",
    "M": "%M",
    "p": "%p",
    "S": "%S",
    "x": "%H/%M/%S",
    "X": "%H:%M:%S",
    "y": "%y",
    "Y": "%Y",
    "z": "%z",
    "Z": "%Z",
}


def _argocd_os_date(now: datetime, fmt: str = "%c", t: float | None = None) -> Any:
    when = now.astimezone()  # local time, as Go's time.Now()
    if fmt.startswith("!"):
        when, fmt = now.astimezone(UTC), fmt.lstrip("!")
    if t is not None:
        when = datetime.fromtimestamp(int(t)).astimezone()
    if fmt.startswith("*t"):
        raise NotImplementedError("os.date('*t'): no script here uses it")
    out, i = [], 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%" and i + 1 < len(fmt):
            flag = fmt[i + 1]
            if flag == "%":
                out.append("%")
            elif flag == "w":
                out.append(str(when.isoweekday() % 7))
            elif flag in _DATE_FLAGS:
                out.append(when.strftime(_DATE_FLAGS[flag]))
            else:
                out.append("%" + flag)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def argocd_lua(now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Any:
    """A Lua 5.1 state with what ArgoCD's util/lua runLua gives a script from argocd-cm
    (SkipOpenLibs, then package, base, table and its 'safe' os): no string, math, io, debug or
    coroutine library, no string methods, and `os` / `require("os")` with only time() and date().
    `now` is the clock behind os.time and os.date. Also without dofile/loadfile (ArgoCD has them,
    our scripts must not need files)."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    safe_os = lua.table(
        time=lambda *a: _no_args(a, int(now().timestamp())),
        date=lambda *a: _argocd_os_date(now(), *a),
    )
    lua.execute(
        """
        local safe_os = ...
        debug.setmetatable("", nil)  -- no string library, so no ("x"):method()
        for _, lib in ipairs({"string", "math", "io", "debug", "coroutine", "os"}) do
          package.loaded[lib] = nil
          _G[lib] = nil
        end
        package.loaders = {package.loaders[1]}  -- preload only: nothing from files
        package.preload = {os = function() return safe_os end}
        package.loaded.os = nil
        os = safe_os
        dofile, loadfile = nil, nil
        """,
        safe_os,
    )
    lua.globals().actionParams = lua.table()
    return lua


def _no_args(args: tuple[Any, ...], value: Any) -> Any:
    if args:
        raise NotImplementedError("os.time(table): no script here uses it")
    return value


def run_lua(script: str, obj: dict[str, Any], now: Callable[[], datetime] | None = None) -> Any:
    """Run a health, discovery or action script on obj as ArgoCD does; return (runtime, result)."""
    lua = argocd_lua(now) if now is not None else argocd_lua()
    lua.globals().obj = to_lua(lua, obj)
    return lua, lua.execute(script)


def health(obj: dict[str, Any], script: str | None = None) -> dict[str, Any]:
    lua, hs = run_lua(script if script is not None else HEALTH_LUA.read_text(), obj)
    assert lua.eval("type")(hs) == "table", f"the script returned {hs!r}, not a table"
    return {k: v for k, v in hs.items()}


def test_fixtures_are_the_captured_set() -> None:
    names = {p.stem for p in FIXTURES.glob("*.json")}
    captured = {n for n in names if not n.startswith("handmade-")}
    assert captured == set(EXPECTED), "recapture with hack/capture_status.py and update EXPECTED"
    assert names - captured == set(HANDMADE)
    assert len(captured) >= 6


@pytest.mark.parametrize("name", sorted(ALL))
def test_health_of_captured_object(name: str) -> None:
    status, fragment = ALL[name]
    hs = health(load(name))
    assert hs["status"] == status, hs
    assert fragment in hs["message"], hs
    assert set(hs) == {"status", "message"}


@pytest.mark.parametrize("name", sorted(ALL))
def test_fixture_is_operator_written(name: str) -> None:
    """Whole objects as the apiserver served them, with only managedFields stripped, and every
    status field known to the CRD (nothing the apiserver would have pruned); the hand-made ones
    may add only the status fields of issue 17's design."""
    obj = load(name)
    assert obj["apiVersion"] == "vmops.dev/v1alpha1" and obj["kind"] == "WSO2Cluster"
    assert "managedFields" not in obj["metadata"]
    assert obj["metadata"]["uid"] and obj["metadata"]["resourceVersion"]
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    known, known_rollout = set(schema), set(schema["rollout"]["properties"])
    if name in HANDMADE:
        known, known_rollout = known | DESIGN_STATUS, known_rollout | DESIGN_ROLLOUT
    status = obj.get("status") or {}
    assert set(status) <= known, set(status) - known
    assert set(status.get("rollout") or {}) <= known_rollout
    if name != "new-no-status":
        assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}


@pytest.mark.parametrize("name", sorted(HANDMADE))
def test_handmade_fixture_follows_the_design(name: str) -> None:
    status = load(name)["status"]
    rollout = status["rollout"]
    assert 0 <= rollout["stepIndex"] < rollout["stepCount"]
    assert rollout["stepCount"] == len(load(name)["spec"]["update"]["steps"]) + 1
    if "analysis" in status:
        analysis = status["analysis"]
        assert set(analysis) == DESIGN_ANALYSIS
        assert analysis["phase"] in {"Running", "Passed", "Failed", "Inconclusive"}
        assert len(analysis["windows"]) <= 20
        for w in analysis["windows"]:
            assert set(w) <= DESIGN_WINDOW and set(w) >= DESIGN_WINDOW - {"lb"}
            assert w["verdict"] in {"Good", "Bad", "Inconclusive", "Reset"}
        for n in analysis["nodes"]:
            assert set(n) == {"name", "verdict", "good", "bad", "inconclusive"}
    if status["phase"] == "Paused":
        reasons = {c["type"]: c["reason"] for c in status["conditions"]}
        assert reasons["Ready"] == reasons["Progressing"] == "StepPaused"
        assert ("pauseEndTime" in rollout) == ("promoted" not in rollout["stepMessage"])


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


def test_step_pause_with_spec_paused_is_suspended() -> None:
    obj = load("handmade-step-paused-indefinite")
    obj["spec"]["update"]["paused"] = True
    message = HANDMADE["handmade-step-paused-indefinite"][1]
    assert health(obj) == {"status": "Suspended", "message": message}


def test_stale_status_wins_over_a_step_pause() -> None:
    obj = load("handmade-step-paused-timed")
    obj["metadata"]["generation"] += 1
    assert health(obj)["status"] == "Progressing"


def test_analysis_failure_without_a_message_uses_the_degraded_condition() -> None:
    obj = load("handmade-analysis-failed-pause")
    del obj["status"]["analysis"]["message"]
    (degraded,) = [c for c in obj["status"]["conditions"] if c["type"] == "Degraded"]
    assert health(obj) == {"status": "Degraded", "message": degraded["message"]}


def test_analysis_failure_is_degraded_even_without_the_condition() -> None:
    obj = load("handmade-analysis-failed-pause")
    for c in obj["status"]["conditions"]:
        if c["type"] == "Degraded":
            c["status"] = "False"
    assert health(obj)["status"] == "Degraded"


def test_a_failed_analysis_left_on_a_ready_cluster_is_not_degraded() -> None:
    obj = load("ready")
    obj["status"]["analysis"] = load("handmade-analysis-failed-pause")["status"]["analysis"]
    assert health(obj)["status"] == "Healthy"


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
    lua = argocd_lua(lambda: datetime(2026, 11, 30, 20, 1, 2, tzinfo=UTC))
    assert lua.eval("type(string)") == "nil" and lua.eval("type(math)") == "nil"
    ok, err = lua.eval('pcall(function() return ("x"):upper() end)')
    assert ok is False and "attempt to index a string value" in err
    assert lua.eval('require("os").date("!%Y-%m-%dT%XZ")') == "2026-11-30T20:01:02Z"
    assert lua.eval("os.time()") == 1796068862
    assert lua.eval("os.exit") is None and lua.eval("os.getenv") is None
    # Lua 5.1 has no integer subtype: generations compare as numbers, and print without ".0".
    assert health(load("stale-generation"))["message"].endswith("generation 1)")

"""The ArgoCD resource actions for WSO2Cluster (manifests/argocd/argocd-cm-actions.yaml).

discovery.lua and each action.lua run as ArgoCD runs them (see `argocd_lua`: Lua 5.1, base, table
and a safe os with only time and date) on the status fixtures, captured and hand-made. An action
returns the whole object; ArgoCD turns it back into JSON (an empty table becomes [] unless the
object had {} there) and patches the difference, so the result must be the input with exactly the
one annotation or spec field changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from tests.integration.test_argocd_health import ALL, ARGOCD, load, run_lua

ACTIONS_CM = ARGOCD / "argocd-cm-actions.yaml"
ACTIONS_KEY = "resource.customizations.actions.vmops.dev_WSO2Cluster"
NAMES = ("promote", "promote-full", "abort", "retry", "pause", "resume", "restart")
# action -> (annotation, the status.rollout field with the value last acted on)
TOKEN_ACTIONS = {
    "promote": ("vmops.dev/promote", "promoteToken"),
    "promote-full": ("vmops.dev/promote-full", "promoteFullToken"),
    "abort": ("vmops.dev/abort", "abortToken"),
    "retry": ("vmops.dev/retry", "retryToken"),
}

# fixture -> the actions discovery enables (the others are listed, disabled)
ENABLED: dict[str, set[str]] = {
    "new-no-status": {"pause", "restart"},
    "ready": {"pause", "restart"},
    "stale-generation": {"pause", "restart"},
    "progressing": {"abort", "pause", "restart"},
    "degraded": {"retry", "pause", "restart"},
    "ready-after-retry": {"pause", "restart"},
    "paused": {"abort", "resume", "restart"},
    "rolling-back": {"retry", "pause", "restart"},
    "rolled-back": {"retry", "pause", "restart"},
    "handmade-step-paused-timed": {"promote", "promote-full", "abort", "pause", "restart"},
    "handmade-step-paused-indefinite": {"promote", "promote-full", "abort", "pause", "restart"},
    "handmade-analysis-failed-pause": {"retry", "pause", "restart"},
    "handmade-analysis-failed-rolling-back": {"retry", "pause", "restart"},
}

T0 = datetime(2026, 11, 30, 20, 1, 2, tzinfo=UTC)


def config() -> dict[str, Any]:
    cm = yaml.safe_load(ACTIONS_CM.read_text())
    assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap"
    assert cm["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    assert set(cm["data"]) == {ACTIONS_KEY}
    # ArgoCD reads the value as YAML into ResourceActions {discovery.lua, definitions}.
    actions = yaml.safe_load(cm["data"][ACTIONS_KEY])
    assert isinstance(actions, dict) and set(actions) == {"discovery.lua", "definitions"}
    return actions


def action_script(name: str) -> str:
    (script,) = [d["action.lua"] for d in config()["definitions"] if d["name"] == name]
    return script


def from_lua(lua: Any, value: Any, like: Any) -> Any:
    """A Lua result back to JSON the way ArgoCD does: gopher-json encodes a table with keys 1..n
    as an array and an empty table as [], then cleanReturnedObj puts back {} where the object
    had a mapping."""
    if lua.eval("type")(value) != "table":
        return value
    items = dict(value.items())
    if not items:
        return {} if isinstance(like, dict) else []
    if set(items) == set(range(1, len(items) + 1)):
        old = like if isinstance(like, list) else []
        return [
            from_lua(lua, items[i], old[i - 1] if i <= len(old) else None)
            for i in range(1, len(items) + 1)
        ]
    old = like if isinstance(like, dict) else {}
    return {k: from_lua(lua, v, old.get(k)) for k, v in items.items()}


def discover(obj: dict[str, Any]) -> dict[str, bool]:
    """action name -> disabled, as ExecuteResourceActionDiscovery reads the returned table."""
    lua, result = run_lua(config()["discovery.lua"], obj)
    assert lua.eval("type")(result) == "table"
    out = {}
    for name, value in result.items():
        fields = dict(value.items())
        assert set(fields) <= {"disabled", "displayName", "iconClass"}, fields
        out[name] = fields.get("disabled") is True
    return out


def run_action(
    name: str, obj: dict[str, Any], now: Callable[[], datetime] = lambda: T0
) -> dict[str, Any]:
    lua, result = run_lua(action_script(name), copy.deepcopy(obj), now)
    return from_lua(lua, result, obj)


def without(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    """obj without the one field at path (and without parents it leaves empty)."""
    obj = copy.deepcopy(obj)
    parents, node = [], obj
    for key in path[:-1]:
        parents.append(node)
        node = node.setdefault(key, {})
    node.pop(path[-1], None)
    for parent, key in reversed(list(zip(parents, path[:-1], strict=True))):
        if parent[key] == {}:
            del parent[key]
    return obj


def test_definitions_are_the_seven_actions() -> None:
    actions = config()
    assert [d["name"] for d in actions["definitions"]] == list(NAMES)
    assert all(set(d) == {"name", "action.lua"} for d in actions["definitions"])


@pytest.mark.parametrize("name", sorted(ENABLED))
def test_discovery(name: str) -> None:
    disabled = discover(load(name))
    assert set(disabled) == set(NAMES), (
        "every action is listed, the ones that do not apply disabled"
    )
    assert {a for a, off in disabled.items() if not off} == ENABLED[name]


def test_every_fixture_has_a_discovery_case() -> None:
    assert set(ENABLED) == set(ALL)


@pytest.mark.parametrize("name", sorted(ENABLED))
@pytest.mark.parametrize("action", sorted(TOKEN_ACTIONS))
def test_token_action_sets_only_its_annotation(action: str, name: str) -> None:
    obj = load(name)
    key, _ = TOKEN_ACTIONS[action]
    out = run_action(action, obj)
    assert out["metadata"]["annotations"][key] == "2026-11-30T20:01:02Z"
    assert without(out, "metadata", "annotations", key) == without(
        obj, "metadata", "annotations", key
    )
    before = (obj["metadata"].get("annotations") or {}).keys() - {key}
    assert out["metadata"]["annotations"].keys() - {key} == before


@pytest.mark.parametrize("action", sorted(TOKEN_ACTIONS))
def test_token_differs_between_calls(action: str) -> None:
    """Each call is a new request: a later call gives a new value, and so does a second call
    within the same second (os.date has whole seconds) on the object the first one wrote."""
    key, field = TOKEN_ACTIONS[action]
    obj = load("handmade-step-paused-timed")
    first = run_action(action, obj)
    later = run_action(action, first, lambda: T0 + timedelta(seconds=1))
    again = run_action(action, first)
    third = run_action(action, again)
    values = [o["metadata"]["annotations"][key] for o in (first, later, again, third)]
    assert values == [
        "2026-11-30T20:01:02Z",
        "2026-11-30T20:01:03Z",
        "2026-11-30T20:01:02Z-2",
        "2026-11-30T20:01:02Z",
    ]
    # ... and never the value the operator already acted on (status.rollout.<field>), even with
    # the annotation gone.
    acted = without(first, "metadata", "annotations", key)
    acted["status"]["rollout"][field] = "2026-11-30T20:01:02Z"
    assert run_action(action, acted)["metadata"]["annotations"][key] == "2026-11-30T20:01:02Z-2"


def test_token_uses_the_wall_clock() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    lua, result = run_lua(action_script("promote"), load("handmade-step-paused-indefinite"))
    value = from_lua(lua, result, {})["metadata"]["annotations"]["vmops.dev/promote"]
    stamp = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= stamp <= datetime.now(UTC)


def test_promote_on_an_object_without_annotations() -> None:
    obj = load("handmade-step-paused-timed")
    del obj["metadata"]["annotations"]
    out = run_action("promote", obj)
    assert out["metadata"]["annotations"] == {"vmops.dev/promote": "2026-11-30T20:01:02Z"}
    assert without(out, "metadata", "annotations") == obj


@pytest.mark.parametrize("name", sorted(ENABLED))
@pytest.mark.parametrize(("action", "paused"), [("pause", True), ("resume", False)])
def test_pause_and_resume_set_only_spec_update_paused(action: str, paused: bool, name: str) -> None:
    obj = load(name)
    out = run_action(action, obj)
    assert out["spec"]["update"]["paused"] is paused
    assert without(out, "spec", "update", "paused") == without(obj, "spec", "update", "paused")


def test_pause_on_a_spec_without_update() -> None:
    obj = load("ready")
    del obj["spec"]["update"]
    out = run_action("pause", obj)
    assert out["spec"]["update"] == {"paused": True}
    assert without(out, "spec", "update") == obj


def test_empty_mappings_survive_an_action() -> None:
    """A {pause: {}} step is an empty Lua table: it must come back as {}, not []."""
    obj = load("handmade-step-paused-indefinite")
    assert {"pause": {}} in obj["spec"]["update"]["steps"]
    assert run_action("pause", obj)["spec"]["update"]["steps"] == obj["spec"]["update"]["steps"]


def test_actions_then_discovery() -> None:
    """pause enables resume; resume enables pause again."""
    obj = load("handmade-step-paused-timed")
    paused = run_action("pause", obj)
    assert discover(paused) == {**discover(obj), "pause": True, "resume": False}
    assert discover(run_action("resume", paused)) == discover(obj)


@pytest.mark.parametrize("name", sorted(ENABLED))
def test_restart_sets_only_spec_restarted_at(name: str) -> None:
    obj = load(name)
    out = run_action("restart", obj)
    assert out["spec"]["restartedAt"] == "2026-11-30T20:01:02Z"
    assert without(out, "spec", "restartedAt") == without(obj, "spec", "restartedAt")


def test_restart_differs_between_calls() -> None:
    """Each call is a new restart: within the same second too; the value is a valid
    spec.restartedAt (the CRD's pattern)."""
    from wso2_operator.revision import TOKEN_RE

    obj = load("ready")
    first = run_action("restart", obj)
    again = run_action("restart", first)
    later = run_action("restart", again, lambda: T0 + timedelta(seconds=1))
    values = [o["spec"]["restartedAt"] for o in (first, again, later)]
    assert values == ["2026-11-30T20:01:02Z", "2026-11-30T20:01:02Z-2", "2026-11-30T20:01:03Z"]
    assert all(TOKEN_RE.fullmatch(v) for v in values)


# Derived cases: a fixture with one field changed, for branches no fixture reaches.


def test_promote_while_a_nodes_step_runs() -> None:
    obj = load("progressing")
    obj["spec"]["update"]["steps"] = [{"nodes": 1}, {"pause": {}}]
    disabled = discover(obj)
    assert not disabled["promote"] and not disabled["promote-full"] and not disabled["abort"]


def test_no_promote_full_twice() -> None:
    obj = load("handmade-step-paused-indefinite")
    obj["status"]["rollout"]["promotedFull"] = True
    disabled = discover(obj)
    assert disabled["promote-full"] and not disabled["promote"]


def test_nothing_to_promote_or_abort_once_aborted() -> None:
    obj = load("handmade-step-paused-timed")
    obj["status"]["rollout"]["aborted"] = True
    for cond in obj["status"]["conditions"]:
        cond["reason"] = "Aborted"
    obj["status"]["phase"] = "Degraded"
    disabled = discover(obj)
    assert disabled["promote"] and disabled["promote-full"] and disabled["abort"]


def test_an_inconclusive_pause_is_not_a_step_pause() -> None:
    obj = load("handmade-step-paused-indefinite")
    obj["spec"]["update"].pop("steps")
    obj["status"]["rollout"]["stepCount"] = 1
    obj["status"]["rollout"]["stepIndex"] = 0
    for cond in obj["status"]["conditions"]:
        if cond["type"] in ("Ready", "Progressing"):
            cond["reason"] = "AnalysisInconclusive"
    disabled = discover(obj)
    assert disabled["promote"] and disabled["promote-full"] and not disabled["abort"]

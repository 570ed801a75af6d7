"""Render docs/crd-reference.md from crds/wso2clusters.yaml, so the reference never drifts.

    python hack/crd_doc.py           # rewrite docs/crd-reference.md
    python hack/crd_doc.py --check   # exit 1 if the committed file is stale
    python hack/crd_doc.py --stdout  # print the rendered reference

Everything in the reference comes from the CRD: descriptions, types, defaults, required lists,
OpenAPI bounds, CEL rules and their messages, and the printer columns. tests/integration/test_crd.py
checks that the committed file equals what this script renders.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_PATH = REPO / "crds" / "wso2clusters.yaml"
DOC_PATH = REPO / "docs" / "crd-reference.md"

Schema = dict[str, Any]


@dataclass
class Field:
    path: str
    schema: Schema
    required: bool


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _cell(text: str) -> str:
    """Make text safe inside a Markdown table cell."""
    return _one_line(text).replace("|", "\\|")


def _code(text: str) -> str:
    # Backticks inside a value would end the code span; none of the CRD's values have them.
    return f"`{text}`"


def type_of(s: Schema) -> str:
    if s.get("x-kubernetes-int-or-string"):
        return "integer or string"
    t = s.get("type", "")
    if t == "array":
        return "[]" + type_of(s.get("items", {}))
    if t == "object" and isinstance(s.get("additionalProperties"), dict):
        return "map[string]" + type_of(s["additionalProperties"])
    if s.get("format") in ("date-time", "int64"):
        return f"{t} ({s['format']})"
    return t


def _bounds(s: Schema) -> list[str]:
    out = []
    if "enum" in s:
        out.append("one of " + ", ".join(_code(json.dumps(v)) for v in s["enum"]))
    if "pattern" in s:
        out.append("matches " + _code(s["pattern"]))
    lo, hi = s.get("minLength"), s.get("maxLength")
    if lo is not None and hi is not None:
        out.append(f"{lo} to {hi} characters")
    elif lo is not None:
        out.append(f"at least {lo} character{'s' if lo != 1 else ''}")
    elif hi is not None:
        out.append(f"at most {hi} characters")
    lo, hi = s.get("minimum"), s.get("maximum")
    if lo is not None and hi is not None:
        out.append(f"{lo} to {hi}")
    elif lo is not None:
        out.append(f"at least {lo}")
    elif hi is not None:
        out.append(f"at most {hi}")
    lo, hi = s.get("minItems"), s.get("maxItems")
    if lo is not None and hi is not None:
        out.append(f"{lo} to {hi} items")
    elif lo is not None:
        out.append(f"at least {lo} item{'s' if lo != 1 else ''}")
    elif hi is not None:
        out.append(f"at most {hi} items")
    if s.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(s.get("x-kubernetes-list-map-keys", []))
        out.append(f"items unique by {keys}")
    return out


def rules_by_path(fields: list[Field]) -> dict[str, list[str]]:
    """CEL rule messages keyed by the field path the API server reports them at."""
    out: dict[str, list[str]] = {}
    for f in fields:
        for where, s in (("", f.schema), ("[]", f.schema.get("items") or {})):
            for r in s.get("x-kubernetes-validations", []):
                at = f.path + where + r.get("fieldPath", "")
                out.setdefault(at, []).append(_one_line(r.get("message")))
    return out


def validation_of(f: Field, rules: dict[str, list[str]]) -> str:
    parts = _bounds(f.schema)
    parts.extend(rules.get(f.path, []))
    items = f.schema.get("items")
    if isinstance(items, dict):
        parts.extend("each item: " + p for p in _bounds(items) + rules.get(f.path + "[]", []))
    return "; ".join(parts)


def description_of(s: Schema) -> str:
    text = _one_line(s.get("description"))
    items = s.get("items")
    if isinstance(items, dict) and items.get("description"):
        text += " Each item: " + _one_line(items["description"])
    value = s.get("additionalProperties")
    if isinstance(value, dict) and value.get("description"):
        text += " Each value: " + _one_line(value["description"])
    return text


def walk(s: Schema, path: str, required: bool = False) -> list[Field]:
    """Every field under s, depth first in schema order; arrays of objects as path[]."""
    out = [Field(path, s, required)]
    node = s
    suffix = ""
    if s.get("type") == "array" and isinstance(s.get("items"), dict):
        node, suffix = s["items"], "[]"
    req = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        out.extend(walk(child, f"{path}{suffix}.{name}", name in req))
    return out


def _field_table(fields: list[Field]) -> list[str]:
    rules = rules_by_path(fields)
    lines = [
        "| Field | Type | Required | Default | Validation | Description |",
        "|---|---|---|---|---|---|",
    ]
    for f in fields:
        s = f.schema
        default = _code(json.dumps(s["default"])) if "default" in s else ""
        lines.append(
            f"| {_code(f.path)} | {_cell(type_of(s))} | {'yes' if f.required else ''} "
            f"| {default} | {_cell(validation_of(f, rules))} | {_cell(description_of(s))} |"
        )
    return lines


def _rules(fields: list[Field]) -> list[str]:
    lines: list[str] = []
    for f in fields:
        for where, s in (("", f.schema), ("[]", f.schema.get("items") or {})):
            for r in s.get("x-kubernetes-validations", []):
                at = f.path + where + r.get("fieldPath", "")
                lines += [
                    f"- On {_code(f.path + where)}, reported at {_code(at)}: "
                    f"{_one_line(r.get('message'))}",
                    "",
                    "  ```cel",
                    *("  " + line for line in r["rule"].strip().splitlines()),
                    "  ```",
                    "",
                ]
    return lines


def render(crd: dict[str, Any]) -> str:
    spec = crd["spec"]
    names = spec["names"]
    (version,) = [v for v in spec["versions"] if v.get("storage")]
    root = version["schema"]["openAPIV3Schema"]
    group = spec["group"]
    api_version = f"{group}/{version['name']}"
    subresources = ", ".join(sorted(version.get("subresources", {}))) or "none"

    spec_fields = walk(root["properties"]["spec"], "spec", "spec" in root.get("required", []))
    status_fields = walk(root["properties"]["status"], "status")

    lines = [
        f"# {names['kind']} reference",
        "",
        "<!-- Generated by hack/crd_doc.py from crds/wso2clusters.yaml. Do not edit by hand:",
        "     change the CRD and run `python hack/crd_doc.py`. A test checks they agree. -->",
        "",
        _one_line(root.get("description")),
        "",
        "A complete example is in `manifests/examples/wso2cluster.yaml`.",
        "",
        "| | |",
        "|---|---|",
        f"| API version | {_code(api_version)} |",
        f"| Kind | {_code(names['kind'])} |",
        f"| Scope | {spec['scope']} |",
        f"| Plural / singular | {_code(names['plural'])} / {_code(names['singular'])} |",
        f"| Short names | {', '.join(_code(n) for n in names.get('shortNames', []))} |",
        f"| Categories | {', '.join(_code(n) for n in names.get('categories', []))} |",
        f"| Subresources | {subresources} |",
        "",
        "`kubectl apply` rejects unknown fields (it asks for strict field validation); clients",
        "that do not ask get a warning and the field is dropped. Fields with a default are filled",
        "in by the API server when they are omitted, so `kubectl get -o yaml` shows them.",
        "Required means required whenever the enclosing object is present.",
        "",
        "## Printer columns",
        "",
        f"`kubectl get {names['shortNames'][0]}` shows the columns with priority 0; `-o wide` adds"
        " the rest.",
        "",
        "| Column | Type | Priority | JSONPath | Description |",
        "|---|---|---|---|---|",
    ]
    for c in version.get("additionalPrinterColumns", []):
        lines.append(
            f"| {c['name'].upper()} | {c['type']} | {c.get('priority', 0)} "
            f"| {_cell(_code(c['jsonPath']))} | {_cell(c.get('description', ''))} |"
        )
    lines += [
        "",
        "## Spec",
        "",
        *_field_table(spec_fields),
        "",
        "### Rules across fields",
        "",
        "These CEL rules run on the API server; the message is what `kubectl apply` prints after",
        "the field path.",
        "",
        *_rules(spec_fields),
        "## Status",
        "",
        "Written by the operator through the `status` subresource only: a change to `status` sent",
        "to the main resource is ignored, and a status change does not bump",
        "`metadata.generation`. Fields not in this table are dropped (with only a warning).",
        "",
        *_field_table(status_fields),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if the committed doc is stale")
    mode.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = ap.parse_args(argv)
    text = render(load_crd())
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is stale: run python hack/crd_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(text)
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

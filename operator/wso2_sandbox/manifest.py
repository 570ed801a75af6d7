"""Render the Secret and WSO2Cluster for a running fleet (tests, demo and benchmark use it)."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any


def fleet_manifests(
    description: dict[str, Any],
    *,
    name: str = "wso2ei",
    namespace: str = "default",
    version: str = "1.0.0",
    update: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
    lb_overrides: dict[str, dict[str, Any]] | None = None,
    nodes: list[str] | None = None,
    backend: str | None = None,
) -> list[dict[str, Any]]:
    """The Secret and WSO2Cluster; ``nodes`` and ``backend`` pick one cluster of a fleet with
    several backends (``description["backends"]``: backend -> its nodes)."""
    ssh = description["ssh"]
    secret_name = f"{name}-ssh"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name, "namespace": namespace},
        "type": "kubernetes.io/ssh-auth",
        "stringData": {
            "ssh-privatekey": Path(ssh["private_key_path"]).read_text(),
            "known_hosts": Path(ssh["known_hosts_path"]).read_text(),
        },
    }
    lbs = []
    for lb in description["lbs"]:
        entry: dict[str, Any] = {"name": lb["name"], "host": lb["host"], "sshPort": lb["ssh_port"]}
        entry["socket"] = lb["socket"]
        entry.update((lb_overrides or {}).get(lb["name"], {}))
        lbs.append({k: v for k, v in entry.items() if v is not None})
    cluster = {
        "apiVersion": "vmops.dev/v1alpha1",
        "kind": "WSO2Cluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "version": version,
            "nodes": [
                {"name": n["name"], "host": n["host"], "sshPort": n["ssh_port"]}
                for n in description["nodes"]
                if nodes is None or n["name"] in nodes
            ],
            "ssh": {
                "user": ssh["user"],
                "secretRef": {"name": secret_name},
                "connectTimeoutSeconds": 5,
            },
            "loadBalancers": {
                "backend": backend or description.get("backend", "PRD_wso2ei"),
                "hosts": lbs,
            },
            "provision": {
                # The same commands the benchmark's Ansible play runs where the seed runs its role.
                "commands": ["wso2ctl stop", "wso2ctl install", "wso2ctl start"],
                "versionCommand": "wso2ctl version",
                "timeoutSeconds": 120,
            },
            "healthCheck": {
                "port": 8243,
                "scheme": "HTTP",
                "path": "/health",
                "periodSeconds": 0.2,
                "timeoutSeconds": 2,
                "healthyDeadlineSeconds": 60,
                **(health or {}),
            },
            "update": {
                "maxUnavailable": 1,
                "drainTimeoutSeconds": 60,
                "minReadySeconds": 0,
                "progressDeadlineSeconds": 300,
                **(update or {}),
            },
        },
    }
    return [secret, copy.deepcopy(cluster)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wso2_sandbox.manifest")
    p.add_argument("--fleet", default=".sandbox/fleet/fleet.json")
    p.add_argument("--name", default="wso2ei")
    p.add_argument("--namespace", default="default")
    p.add_argument("--version", default="1.0.0")
    a = p.parse_args(argv)
    desc = json.loads(Path(a.fleet).read_text())
    docs = fleet_manifests(desc, name=a.name, namespace=a.namespace, version=a.version)
    print(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

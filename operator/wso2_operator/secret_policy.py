"""Which WSO2Cluster may use which SSH Secret: the opt-in guard against a confused deputy.

Without it, whoever can create a WSO2Cluster in a namespace can make the operator use any SSH
Secret of that namespace, against any host its known_hosts trusts. With it (``--require-secret-
label`` or WSO2_REQUIRE_SECRET_LABEL=1), a Secret is used only if its owner opted in:

- the label ``vmops.dev/ssh-access: "true"`` marks it as meant for the operator;
- the optional annotation ``vmops.dev/allowed-clusters: "name1,name2"`` (or ``*``) names the
  WSO2Clusters of the same namespace that may use it; without it, any of them may.

Pure: it looks only at the Secret's labels and annotations, never at its data, so it can run
before anything is decoded and a refusal cannot carry secret bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

ACCESS_LABEL = "vmops.dev/ssh-access"
ALLOWED_CLUSTERS_ANNOTATION = "vmops.dev/allowed-clusters"
REQUIRE_LABEL_ENV = "WSO2_REQUIRE_SECRET_LABEL"
REASON = "SecretNotAllowed"


class Refusal(NamedTuple):
    reason: str
    message: str


def required_by_env(environ: Mapping[str, str]) -> bool:
    """WSO2_REQUIRE_SECRET_LABEL: 1/true/yes/on (any case) turn the restriction on."""
    return environ.get(REQUIRE_LABEL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def allowed_clusters(annotation: str) -> frozenset[str]:
    """The names in the annotation's comma-separated list, blanks dropped ("*" kept as is)."""
    return frozenset(n.strip() for n in annotation.split(",") if n.strip())


def check_secret_use(
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
    cluster: str,
    enabled: bool,
    *,
    secret_namespace: str = "",
    secret_name: str = "",
) -> Refusal | None:
    """None if the WSO2Cluster `cluster` may use the Secret, else why not and what to add.

    Disabled, every Secret may be used (the default, as before). Enabled, the label must be
    exactly "true"; a present annotation must list the cluster or "*" (an empty one lists
    nobody). The message names the Secret, the cluster and the label or annotation to set, and
    nothing else: no label or annotation values are echoed.
    """
    if not enabled:
        return None
    labels = labels or {}
    annotations = annotations or {}
    secret = f"{secret_namespace}/{secret_name}" if secret_namespace else secret_name or "?"
    who = f"WSO2Cluster {cluster!r}" if cluster else "this WSO2Cluster"
    ns = f" -n {secret_namespace}" if secret_namespace else ""
    if labels.get(ACCESS_LABEL) != "true":
        return Refusal(
            REASON,
            f"Secret {secret} may not be used by {who}: this operator only uses SSH Secrets "
            f'labelled {ACCESS_LABEL}="true"; if the Secret is meant for it, add the label '
            f"(kubectl label secret{ns} {secret_name or '<name>'} {ACCESS_LABEL}=true)",
        )
    if ALLOWED_CLUSTERS_ANNOTATION not in annotations:
        return None
    names = allowed_clusters(annotations[ALLOWED_CLUSTERS_ANNOTATION] or "")
    if "*" in names or (cluster and cluster in names):
        return None
    return Refusal(
        REASON,
        f"Secret {secret} may not be used by {who}: its annotation "
        f"{ALLOWED_CLUSTERS_ANNOTATION} does not list {cluster or 'it'}; if it may, add "
        f'{cluster or "its name"} to that comma-separated list on the Secret (or set it to "*")',
    )

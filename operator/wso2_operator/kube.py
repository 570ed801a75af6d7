"""The Kubernetes side adapter: status writes, Secret reads and Events.

The official client is synchronous, so calls go through a thread; they are few (one status patch
per step) and short, so this does not limit the rollout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from . import events
from .textcap import MESSAGE_LIMIT, cap, strip_reason

GROUP, VERSION, PLURAL = "vmops.dev", "v1alpha1", "wso2clusters"
# (connect, read) seconds: a hung apiserver connection must not hold the status lock, and with it
# every node task, for ever (a call in a thread cannot be cancelled from asyncio).
API_TIMEOUT = (5, 30)
log = logging.getLogger(__name__)


class StatusConflict(Exception):
    """A conditional status write lost: the object changed since the resourceVersion we had."""


class SecretProblem(Exception):
    """The SSH Secret is missing or lacks a key: a condition for the user, not a crash."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def load_client_config() -> None:
    """In-cluster credentials when running in a Pod, the kubeconfig otherwise."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


class KubeAdapter:
    def __init__(self) -> None:
        self._custom = kubernetes.client.CustomObjectsApi()
        self._core = kubernetes.client.CoreV1Api()

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> str | None:
        """A merge patch of /status; returns the object's new resourceVersion (None if gone).

        Lists (nodes, conditions, history) are sent whole. With ``resource_version`` the write is
        conditional: the apiserver refuses it with 409 (raised as StatusConflict) when anyone
        wrote the object since, so two actors can never both record a decision made on the
        same old status.
        """
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}

        def call() -> Any:
            return self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=API_TIMEOUT
            )

        try:
            result = await asyncio.to_thread(call)
        except ApiException as e:
            if e.status == 404:
                # Deleted under our feet: nothing to record, and no node is touched because of it.
                log.info("%s/%s is gone; status not written", namespace, name)
                return None
            if e.status == 409:
                raise StatusConflict(
                    f"{namespace}/{name} changed since resourceVersion {resource_version}"
                ) from None
            raise
        return str(((result or {}).get("metadata") or {}).get("resourceVersion") or "") or None

    async def drop_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        """Remove ``finalizer`` from the WSO2Cluster if it has it; True if removed.

        A JSON patch that first tests the whole list as read, so a finalizer someone added
        meanwhile (kopf adds its own) is never lost: the write then fails (422) and is tried
        again on the next call.
        """

        def call() -> bool:
            obj = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=API_TIMEOUT
            )
            present = list((obj.get("metadata") or {}).get("finalizers") or [])
            if finalizer not in present:
                return False
            patch = [
                {"op": "test", "path": "/metadata/finalizers", "value": present},
                {
                    "op": "replace",
                    "path": "/metadata/finalizers",
                    "value": [f for f in present if f != finalizer],
                },
            ]
            self._custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                patch,
                _request_timeout=API_TIMEOUT,
                _content_type="application/json-patch+json",
            )
            return True

        return await asyncio.to_thread(call)

    async def read_cluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The whole WSO2Cluster as the apiserver has it now (None if gone)."""

        def call() -> Any:
            return self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=API_TIMEOUT
            )

        try:
            return dict(await asyncio.to_thread(call))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap as plain data: resourceVersion, data and binaryData (base64 text, as the
        API sends it), or None if it does not exist. Raw JSON, so binaryData is not decoded by
        the client's models twice."""

        def call() -> Any:
            return self._core.read_namespaced_config_map(
                name, namespace, _request_timeout=API_TIMEOUT, _preload_content=False
            )

        try:
            resp = await asyncio.to_thread(call)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        import json  # local import: only this method needs it

        obj = json.loads(resp.data)
        return {
            "resourceVersion": str((obj.get("metadata") or {}).get("resourceVersion") or ""),
            "data": dict(obj.get("data") or {}),
            "binaryData": dict(obj.get("binaryData") or {}),
        }

    async def read_ssh_secret(
        self,
        namespace: str,
        name: str,
        key_key: str,
        hosts_key: str,
        cluster: str = "",
        require_label: bool | None = None,
    ) -> tuple[bytes, str]:
        """The private key and known_hosts of the Secret the WSO2Cluster `cluster` names.

        With the opt-in restriction (require_label, default from WSO2_REQUIRE_SECRET_LABEL) the
        Secret's labels and annotations are checked first (secret_policy), before any data is
        looked at: a refusal is SecretNotAllowed and names only what to add to the Secret.
        """
        import os  # local imports: only this method needs them

        from .secret_policy import check_secret_use, required_by_env

        if require_label is None:
            require_label = required_by_env(os.environ)

        def call():
            return self._core.read_namespaced_secret(name, namespace, _request_timeout=API_TIMEOUT)

        try:
            secret = await asyncio.to_thread(call)
        except ApiException as e:
            if e.status == 404:
                raise SecretProblem(
                    "SecretNotFound", f"Secret {namespace}/{name} (spec.ssh.secretRef) not found"
                ) from None
            if e.status == 403:
                raise SecretProblem(
                    "SecretForbidden", f"the operator may not read Secret {namespace}/{name}"
                ) from None
            raise
        meta = secret.metadata
        refusal = check_secret_use(
            meta.labels if meta else None,
            meta.annotations if meta else None,
            cluster,
            require_label,
            secret_namespace=namespace,
            secret_name=name,
        )
        if refusal is not None:
            raise SecretProblem(refusal.reason, refusal.message)
        data = secret.data or {}
        missing = [k for k in (key_key, hosts_key) if not data.get(k)]
        if missing:
            raise SecretProblem(
                "SecretKeyMissing",
                f"Secret {namespace}/{name} has no key(s) {', '.join(missing)}",
            )
        where = f"Secret {namespace}/{name}"
        try:
            key = base64.b64decode(data[key_key], validate=True)
            raw_hosts = base64.b64decode(data[hosts_key], validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise SecretProblem(
                "InvalidSSHCredentials", f"{where}: a value is not valid base64"
            ) from None
        try:
            hosts = raw_hosts.decode("utf-8")
        except UnicodeDecodeError as e:
            # The position only: the bytes are the Secret's.
            raise SecretProblem(
                "InvalidSSHCredentials",
                f"{where} key {hosts_key}: not UTF-8 text (byte {e.start}); it must be "
                "known_hosts lines",
            ) from None
        return key, hosts


PEERING_SCOPE_ENV = "WSO2_PEERING_SCOPE"  # set by __main__ from kopf's -A / -n flags


def ensure_peering(name: str, scope: str) -> None:
    """Create kopf's peering object(s) if missing.

    With mandatory peering kopf starts paused and resumes only on reading its peering object;
    if that object does not exist, kopf's keep-alive reports "not found" at debug level and the
    operator stays paused for ever. Creating it here keeps `kubectl apply -k manifests/` a single
    step (a CRD and an object of it cannot be applied together) and makes a missing object
    impossible. `scope` is "cluster" or a comma-separated list of namespaces.
    """
    custom = kubernetes.client.CustomObjectsApi()
    targets = [None] if scope == "cluster" else [n for n in scope.split(",") if n]
    for ns in targets:
        if ns is not None and any(c in ns for c in "*?[!"):
            log.warning("namespace pattern %r: create its KopfPeering %r yourself", ns, name)
            continue
        kind = "ClusterKopfPeering" if ns is None else "KopfPeering"
        body = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": name}}
        try:
            if ns is None:
                custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body)
            else:
                custom.create_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", body)
        except ApiException as e:
            if e.status == 409:  # already there: the usual case
                continue
            where = "cluster-wide" if ns is None else f"in namespace {ns}"
            log.error(
                "cannot create %s %r %s (HTTP %s): create it, or the operator stays paused",
                kind, name, where, e.status,
            )  # fmt: skip
            continue
        log.info("created %s %r", kind, name)


def event(body: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
    """A Kubernetes Event on the WSO2Cluster, posted in the background, and a log line: an
    operator's log should tell what it did without `kubectl get events`."""
    meta = body.get("metadata") or {}
    # `kubectl get events` and `describe` show the reason next to the message: a message that
    # starts with it ("ProvisionFailed: node2: ...", the node row's convention) would repeat it.
    message = strip_reason(reason, message)
    # Messages can carry node or LB output: bounded like everything else that leaves the process.
    message = cap(message, MESSAGE_LIMIT)
    log.log(
        logging.WARNING if warning else logging.INFO,
        "[%s/%s] %s: %s",
        meta.get("namespace"),
        meta.get("name"),
        reason,
        message,
    )
    try:
        events.post(body, reason, message, warning)
    except Exception:  # Events are best effort: never let one stop a rollout.
        log.exception("could not post event %s", reason)

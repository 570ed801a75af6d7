"""Posting Kubernetes Events on a WSO2Cluster (core/v1, as `kubectl describe` and `kubectl get
events` read them).

kopf's own poster names Events with a random suffix (generateName) and stamps them to the
second in lastTimestamp. `kubectl get events` lists Events by name, so those posted within one
second came out shuffled. Here each Event is named like client-go's recorder does,
``<object>.<nanoseconds in hex>``, so the listing of one object's Events is in the order they
happened, and eventTime carries microseconds for `kubectl events` and `--sort-by=.eventTime`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

COMPONENT = "wso2-operator"
# The apiserver's limits on a core/v1 Event with eventTime (k8s.io/kubernetes
# pkg/apis/core/validation/events.go): bytes, not characters.
NOTE_BYTES = 1024
REASON_BYTES = 128
INSTANCE_BYTES = 128
# An Event's name is a DNS subdomain (253) and ends in "." plus up to 16 hex digits.
NAME_STEM = 253 - 17
API_TIMEOUT = (5, 30)

_last_ns = 0
_ns_lock = threading.Lock()
# Posts in flight; asyncio keeps only weak references to tasks.
_PENDING: set[asyncio.Future[None]] = set()


def _unique_ns() -> int:
    """Nanoseconds since the epoch, strictly increasing in this process: two Events posted in
    the same clock tick still get distinct names, in the order they were posted."""
    global _last_ns
    with _ns_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def _cut_bytes(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore")


def micro_time(ts_ns: int) -> str:
    """A metav1.MicroTime: RFC 3339 in UTC with exactly six fraction digits."""
    # Integer arithmetic: a float of nanoseconds since 1970 rounds the microseconds.
    t = dt.datetime.fromtimestamp(ts_ns // 1_000_000_000, dt.UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{ts_ns // 1000 % 1_000_000:06d}Z"


def _instance() -> str:
    # In a Pod the hostname is the Pod's name: which replica posted the Event.
    return _cut_bytes(os.environ.get("HOSTNAME") or socket.gethostname() or "local", INSTANCE_BYTES)


def event_body(
    obj: Mapping[str, Any], reason: str, message: str, warning: bool, ts_ns: int
) -> dict[str, Any]:
    """The core/v1 Event for `obj` (a WSO2Cluster as the apiserver returns it)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "unnamed")
    namespace = str(meta.get("namespace") or "default")
    seconds = dt.datetime.fromtimestamp(ts_ns // 1_000_000_000, dt.UTC)
    stamp = seconds.strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "name": name,
        "namespace": namespace,
        "uid": meta.get("uid"),
    }
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name[:NAME_STEM]}.{ts_ns:x}", "namespace": namespace},
        "involvedObject": {k: v for k, v in involved.items() if v},
        "type": "Warning" if warning else "Normal",
        "reason": _cut_bytes(reason, REASON_BYTES),
        "message": _cut_bytes(message, NOTE_BYTES),
        "action": "Reconcile",
        "eventTime": micro_time(ts_ns),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": _instance(),
    }


_shared: tuple[object, kubernetes.client.CoreV1Api] | None = None
_shared_lock = threading.Lock()


def _default_api() -> kubernetes.client.CoreV1Api:
    """One client for every Event, while the default configuration stays the same.

    A client of its own per Event meant a deep copy of the configuration, a new connection pool
    and a TLS handshake with the apiserver for each: a 40-node rollout posts some 300 Events.
    """
    global _shared
    config = kubernetes.client.Configuration.get_default()
    with _shared_lock:
        if _shared is None or _shared[0] is not config:
            _shared = (config, kubernetes.client.CoreV1Api())
        return _shared[1]


def create(body: Mapping[str, Any], api: kubernetes.client.CoreV1Api | None = None) -> None:
    """Create one Event (blocking). Events are best effort: a failure is logged, not raised."""
    api = api or _default_api()
    ns = body["metadata"]["namespace"]
    try:
        api.create_namespaced_event(ns, body, _request_timeout=API_TIMEOUT)
    except (ApiException, OSError, ValueError) as e:
        reason = e.reason if isinstance(e, ApiException) else type(e).__name__
        log.warning("could not post Event %s on %s: %s", body.get("reason"), ns, reason)
    except Exception as e:  # the urllib3 errors of an apiserver gone away, among others
        log.warning("could not post Event %s on %s: %s", body.get("reason"), ns, type(e).__name__)


def post(obj: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
    """Post an Event in the background (from the event loop), or at once (from a thread).

    The name and times are fixed here, at the call, so Events keep the order of the calls
    whatever order the background posts finish in.
    """
    body = event_body(obj, reason, message, warning, _unique_ns())
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        create(body)
        return
    task = loop.create_task(asyncio.to_thread(create, body))
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)

"""Conditional status writes: two operators never both act on the same WSO2Cluster.

Kopf's peering keeps one replica active, but during a handover (or with two operators that use
different peering names) two actors can run the same cluster's loop for a while. Each plans from
its own memory, so without a guard both could start a different node and exceed
maxUnavailable, or both pick the same one. The guard is the status write that records every
decision *before* it is acted on:

* every write carries the resourceVersion this writer last wrote or read, so it fails (409) if
  anyone wrote the object since;
* on a conflict the object is read again. If its status is still the one this writer last wrote
  or read (only metadata or spec changed: a user's edit, kopf's finalizer), the write is
  repeated on the new resourceVersion. If someone else wrote status since, this writer *stands
  down*: the decision
  it was about to record is dropped, its node tasks are cancelled, and it does not act again
  until the other writer has been silent for ``lease`` seconds (every writer writes status at
  least once per observe period, so silence means it stopped).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from typing import Any

from .kube import KubeAdapter, StatusConflict

log = logging.getLogger(__name__)

WRITER_FIELD = "writer"


def writer_identity() -> str:
    """Unique per process: the pod (host) name, the pid and a random suffix."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{host[:40]}/{os.getpid()}/{secrets.token_hex(3)}"


class StoodDown(Exception):
    """Another writer owns the cluster's status: do not act, do not write."""

    def __init__(self, other: str) -> None:
        super().__init__(f"another operator ({other}) is writing this WSO2Cluster's status")
        self.other = other


def _heartbeat(status: Mapping[str, Any]) -> float | None:
    value = status.get("lastObservedTime")
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class StatusWriter:
    def __init__(
        self,
        kube: KubeAdapter,
        namespace: str,
        name: str,
        resource_version: str | None,
        *,
        identity: str | None = None,
        lease: float = 75.0,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or writer_identity()
        self.lease = lease
        self.resource_version = resource_version or None
        self.other: str | None = None  # set while standing down
        self.fresh: dict[str, Any] | None = None  # the object read on the last conflict
        # (writer, lastObservedTime) of the status this writer last wrote or read.
        self.known: tuple[Any, Any] = (None, None)

    def adopt(self, obj: Mapping[str, Any]) -> None:
        """Start from this object: its resourceVersion and status are the ones we know."""
        self.resource_version = str(obj["metadata"].get("resourceVersion") or "") or None
        st = obj.get("status") or {}
        self.known = (st.get(WRITER_FIELD), st.get("lastObservedTime"))

    async def write(self, status: Mapping[str, Any]) -> None:
        """Write status conditionally; raises StoodDown when another writer got there first."""
        if self.other is not None:
            raise StoodDown(self.other)
        body = {**status, WRITER_FIELD: self.identity}
        for _ in range(3):
            try:
                rv = await self.kube.patch_status(
                    self.namespace, self.name, body, self.resource_version
                )
            except StatusConflict:
                obj = await self.kube.read_cluster(self.namespace, self.name)
                if obj is None:
                    return
                self.fresh = obj
                st = obj.get("status") or {}
                other = st.get(WRITER_FIELD)
                seen = (other, st.get("lastObservedTime"))
                self.resource_version = str(obj["metadata"].get("resourceVersion") or "") or None
                # Compared by heartbeat too: a CRD older than the writer field prunes it.
                if other != self.identity and seen[1] != self.known[1]:
                    self.other = str(other or "unknown")[:120]
                    log.warning(
                        "%s/%s: status was written by %s; standing down",
                        self.namespace,
                        self.name,
                        self.other,
                    )
                    raise StoodDown(self.other) from None
                continue
            if rv is not None:
                self.resource_version = rv
            self.known = (self.identity, status.get("lastObservedTime"))
            return
        raise StatusConflict(f"{self.namespace}/{self.name}: status write kept conflicting")

    async def other_still_active(self) -> bool:
        """While standing down: has the other writer written within the lease? Reads the
        object; when the other writer went silent, this writer may act again (from ``fresh``)."""
        obj = await self.kube.read_cluster(self.namespace, self.name)
        if obj is None:
            return False
        self.fresh = obj
        status = obj.get("status") or {}
        writer = status.get(WRITER_FIELD)
        beat = _heartbeat(status)
        active = (
            isinstance(writer, str)
            and writer != self.identity
            and beat is not None
            and time.time() - beat < self.lease
        )
        if not active:
            self.adopt(obj)
            self.other = None
        return active


__all__ = ["StatusWriter", "StoodDown", "writer_identity"]

"""Conditional status writes: two operators never both act on the same WSO2Cluster.

Kopf's peering keeps one replica active, but during a handover (or with two operators that use
different peering names) two actors can run the same cluster's loop for a while. Each plans from
its own memory, so without a guard both could start a different node and exceed
maxUnavailable, or both pick the same one. The guard is the status write that records every
decision *before* it is acted on:

* every write carries the resourceVersion this writer last wrote or read, so it fails (409) if
  anyone wrote the object since;
* every write stamps ``status.writer`` with this process's identity and a sequence number, so
  each write is told apart from every other, even two in the same second;
* on a conflict the object is read again. If its ``writer`` is still the stamp this writer last
  wrote or read, or is empty (status wiped, or a CRD too old to keep the field), only metadata,
  spec or other status fields changed (a user's edit, kopf's finalizer): the write is repeated on
  the new resourceVersion. If it is another identity's stamp, this writer *stands down*: the
  decision it was about to record is dropped, its node tasks are cancelled, and it does not act
  again until that stamp has stayed unchanged for ``lease`` seconds, measured on this process's
  own clock (every writer writes at least once per observe period, and a forged time in status
  cannot stretch the wait).
"""

from __future__ import annotations

import functools
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


@functools.cache
def writer_identity() -> str:
    """Unique per process (one for all its clusters and daemon restarts): the pod (host) name,
    the pid and a random suffix."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{host[:40]}/{os.getpid()}/{secrets.token_hex(3)}"


def stamp_identity(stamp: object) -> str:
    """The identity part of a ``writer`` stamp ("identity#sequence")."""
    return str(stamp).rpartition("#")[0] if "#" in str(stamp) else str(stamp)


class StoodDown(Exception):
    """Another writer owns the cluster's status: do not act, do not write."""

    def __init__(self, other: str) -> None:
        super().__init__(f"another operator ({other}) is writing this WSO2Cluster's status")
        self.other = other


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
        self.known: Any = None  # the writer stamp of the status this writer last wrote or read
        self._sequence = 0
        self._other_stamp: Any = None  # while standing down: the other's last stamp seen...
        self._other_since = 0.0  # ...and since when (monotonic) it has not changed

    def adopt(self, obj: Mapping[str, Any]) -> None:
        """Start from this object: its resourceVersion and status are the ones we know."""
        self.resource_version = str(obj["metadata"].get("resourceVersion") or "") or None
        self.known = (obj.get("status") or {}).get(WRITER_FIELD)

    def _foreign(self, stamp: object) -> bool:
        if not isinstance(stamp, str) or not stamp or stamp == self.known:
            return False
        return stamp_identity(stamp) != self.identity

    async def write(self, status: Mapping[str, Any]) -> None:
        """Write status conditionally; raises StoodDown when another writer got there first."""
        if self.other is not None:
            raise StoodDown(self.other)
        self._sequence += 1
        stamp = f"{self.identity}#{self._sequence}"
        body = {**status, WRITER_FIELD: stamp}
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
                other = (obj.get("status") or {}).get(WRITER_FIELD)
                self.resource_version = str(obj["metadata"].get("resourceVersion") or "") or None
                if self._foreign(other):
                    self.other = stamp_identity(other)[:120]
                    self._other_stamp, self._other_since = other, time.monotonic()
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
            self.known = stamp
            return
        raise StatusConflict(f"{self.namespace}/{self.name}: status write kept conflicting")

    async def other_still_active(self) -> bool:
        """While standing down: has the other writer written within the lease? Reads the
        object; when the other writer went silent, this writer may act again (from ``fresh``)."""
        obj = await self.kube.read_cluster(self.namespace, self.name)
        if obj is None:
            return False
        self.fresh = obj
        stamp = (obj.get("status") or {}).get(WRITER_FIELD)
        now = time.monotonic()
        if stamp != self._other_stamp:
            self._other_stamp, self._other_since = stamp, now
        foreign = isinstance(stamp, str) and bool(stamp) and stamp_identity(stamp) != self.identity
        active = foreign and now - self._other_since < self.lease
        if not active:
            self.adopt(obj)
            self.other = None
        return active


__all__ = ["StatusWriter", "StoodDown", "stamp_identity", "writer_identity"]

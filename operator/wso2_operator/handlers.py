"""kopf wiring, kept thin: one daemon per WSO2Cluster runs its reconcile loop.

Why a daemon and not create/update handlers: a rollout takes minutes and must survive restarts.
The daemon is re-spawned for every existing object on start-up and resumes from status alone,
so kopf's own handler-progress annotations play no part in correctness.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from . import lifecycle, shard
from .kube import (
    GROUP,
    PEERING_SCOPE_ENV,
    PLURAL,
    VERSION,
    KubeAdapter,
    ensure_peering,
    load_client_config,
)
from .reconciler import HAND_BACK_ANNOTATION, RETRY_ANNOTATION, ClusterReconciler, Settings

# The WSO2Clusters this process handles (--selector, see shard.py). Read at import: kopf takes
# its filters from the decorators below.
SHARD = shard.parse_selector(os.environ.get(shard.SELECTOR_ENV))


def _in_shard(labels: kopf.Labels, **_: Any) -> bool:
    return SHARD.matches(labels)


# kopf's `when` filter: an object of another shard is invisible to this process (no daemon, no
# finalizer, nothing logged). None without a selector, so an unsharded operator is unchanged.
IN_SHARD = _in_shard if SHARD.terms else None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    load_client_config()
    memo.kube = KubeAdapter()
    memo.reconcile_settings = Settings(
        observe_period=float(os.environ.get("WSO2_OBSERVE_PERIOD", "30")),
        active_period=float(os.environ.get("WSO2_ACTIVE_PERIOD", "5")),
        resume_grace=float(os.environ.get("WSO2_RESUME_GRACE", "2")),
    )
    # Log lines are not Events (loggers=False is kopf's default); the reconciler posts the
    # Events users need itself (events.py).
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    # asyncssh logs every channel at INFO: far too much for an operator's log.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    # The wake handler runs on every watch event, including our own status writes.
    logging.getLogger("kopf.objects").addFilter(_QuietWake())
    # kopf's --peering NAME sets name and mandatory before this handler runs: keep them.
    # Mandatory peering starts paused until the peering object is read, so a standby never
    # acts before it knows a higher-priority peer exists (--standalone skips peering entirely).
    if not settings.peering.mandatory:
        settings.peering.name = os.environ.get("WSO2_PEERING_NAME", SHARD.peering)
    elif os.environ.get(PEERING_SCOPE_ENV):
        ensure_peering(settings.peering.name, os.environ[PEERING_SCOPE_ENV])
    # Give a dying peer's lock up quickly, so a standby takes over within about a minute.
    settings.peering.lifetime = 30
    # Per shard: kopf strips its finalizer from objects none of its handlers match, which would
    # be the other shards' objects if they shared one name.
    settings.persistence.finalizer = SHARD.finalizer
    if SHARD.terms:
        logging.getLogger(__name__).info(
            "shard %s: handling the WSO2Clusters with labels %s (finalizer %s)",
            SHARD.name,
            SHARD.selector,
            SHARD.finalizer,
        )


@kopf.on.startup()
async def watch_apiserver(**_: Any) -> None:
    """--exit-if-apiserver-gone: runs in the operator's loop, after `configure` loaded the
    client configuration it probes with."""
    lifecycle.start_watch()


# On a stop, kopf first only signals (the loop exits at once and cleans up) and cancels the
# daemon only after cancellation_backoff; without a backoff it cancels right away.
@kopf.daemon(
    GROUP,
    VERSION,
    PLURAL,
    id="reconcile",
    cancellation_backoff=5.0,
    cancellation_timeout=10.0,
    when=IN_SHARD,
)
async def reconcile(
    namespace: str,
    name: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    r = ClusterReconciler(
        namespace=namespace,
        name=name,
        body=body,
        kube=memo.kube,
        settings=memo.reconcile_settings,
    )
    memo.reconciler = r
    memo.seen = _trigger(body)
    cleanup = None
    if SHARD.terms and shard.FINALIZER in (body.get("metadata", {}).get("finalizers") or []):
        cleanup = asyncio.create_task(_drop_unsharded_finalizer(memo.kube, namespace, name))
    try:
        await r.run(stopped)
    finally:
        if cleanup is not None:
            cleanup.cancel()


async def _drop_unsharded_finalizer(kube: KubeAdapter, namespace: str, name: str) -> None:
    """A cluster from before sharding carries the unsharded operator's finalizer, which no
    shard would ever remove (each has its own): deleting the cluster would hang. Its shard
    takes it off, alongside the reconcile loop. kopf adds the shard's own finalizer at about
    the same moment, which makes the guarded patch fail (422): read again and retry."""
    log = logging.getLogger(__name__)
    for attempt in range(1, 31):
        try:
            if await kube.drop_finalizer(namespace, name, shard.FINALIZER):
                log.info(
                    "[%s/%s] removed the unsharded finalizer %s (now %s)",
                    namespace,
                    name,
                    shard.FINALIZER,
                    SHARD.finalizer,
                )
            return
        except Exception as e:
            if attempt % 10 == 0:
                log.warning(
                    "[%s/%s] still cannot remove the unsharded finalizer %s: %s",
                    namespace,
                    name,
                    shard.FINALIZER,
                    e,
                )
        await asyncio.sleep(min(10.0, 0.2 * attempt))


@kopf.on.event(GROUP, VERSION, PLURAL, id="wake", when=IN_SHARD)
async def wake(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Wake the loop at once on a spec or retry change; our own status writes do not count.

    Async, though it never awaits: kopf runs a sync handler in a thread of its executor, a
    hop for every watch event, and most events are this operator's own status writes."""
    r = memo.get("reconciler")
    key = _trigger(body)
    if r is not None and key != memo.get("seen"):
        memo.seen = key
        r.wake.set()


class _QuietWake(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Handler 'wake'" not in record.getMessage()


def _trigger(body: kopf.Body) -> tuple[Any, Any, Any]:
    meta = body.get("metadata", {})
    annotations = meta.get("annotations") or {}
    return (
        meta.get("generation"),
        annotations.get(RETRY_ANNOTATION),
        annotations.get(HAND_BACK_ANNOTATION),
    )

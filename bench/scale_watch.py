"""When each cluster was first seen Ready at a version, from one watch on the namespace.

The scale bench used to LIST every cluster of the namespace every 0.25 s: at 50 clusters the
apiserver serialized, and the bench parsed, every status four times a second although few had
changed. A watch sends each change once, as it happens, so a cluster's Ready time is when its
status said so (to the event's arrival), not the next poll's: finer than the 0.25 s grid, for a
fraction of the bytes. One LIST at the start (and after a "410 Gone") sees what the watch missed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import kubernetes

from bench.kube import GROUP, PLURAL, VERSION, Kube, cluster_done

WATCH_SECONDS = 30  # the apiserver ends each watch after this long; the thread starts another


class ReadyWatch:
    """A thread that records, per (cluster, version), the first time the cluster was Ready for
    its current generation with every node at that version (bench.kube.cluster_done)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.ns = namespace
        self.first_done: dict[tuple[str, str], float] = {}
        self.latest: dict[str, dict[str, Any]] = {}  # the newest object of every cluster
        self.lists = 0  # the bench's own requests, to take off the apiserver's counters
        self.watches = 0
        self.events = 0
        self.errors = 0
        self.cpu_seconds = 0.0  # this thread's CPU: what watching costs the bench
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        if not self._synced.wait(60):
            raise TimeoutError(f"could not list the clusters of {self.ns}")
        return self

    def __exit__(self, *exc: object) -> None:
        # The open watch ends within WATCH_SECONDS; the daemon thread is not waited for that.
        self._stop.set()

    def wait_done(
        self, names: list[str], version: str, timeout: float, t0: float, partial: bool = False
    ) -> dict[str, float]:
        """Seconds from t0 until each cluster was first seen Ready at `version`.

        At the deadline: raises, or with `partial` returns the clusters that made it."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {n: self.first_done.get((n, version)) for n in names}
            done = {n: round(max(0.0, t - t0), 3) for n, t in seen.items() if t is not None}
            if len(done) == len(names) or (partial and time.monotonic() > deadline):
                return done
            if time.monotonic() > deadline:
                missing = sorted(set(names) - set(done))
                raise TimeoutError(f"not Ready at {version} after {timeout:.0f}s: {missing}")
            if not self._thread.is_alive():
                raise RuntimeError("the cluster watch is not running")
            time.sleep(0.05)  # a dict lookup; the watch thread does the API work

    def clusters(self) -> dict[str, dict[str, Any]]:
        """The newest object of every cluster, as the watch last saw it."""
        return dict(self.latest)  # a copy: the watch thread adds to it

    def own_requests(self) -> dict[str, int]:
        """The apiserver requests this watch made (a WATCH still open is not counted by the
        apiserver yet: at most one off)."""
        return {"LIST": self.lists, "WATCH": self.watches}

    def _observe(self, obj: dict[str, Any], t: float) -> None:
        name = obj["metadata"]["name"]
        self.latest[name] = obj
        versions = {r.get("version") for r in (obj.get("status") or {}).get("nodes") or []}
        if len(versions) == 1 and cluster_done(obj):
            self.first_done.setdefault((name, str(versions.pop())), t)

    def _list(self) -> str:
        self.lists += 1
        items = self.kube._custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)
        t = time.time()
        for obj in items.get("items", []):
            self._observe(obj, t)
        self._synced.set()
        return str(items["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> str | None:
        """One watch from `rv`; returns where to go on, or None when the history is gone."""
        self.watches += 1
        w = kubernetes.watch.Watch()
        for ev in w.stream(
            self.kube._custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.ns,
            PLURAL,
            resource_version=rv,
            timeout_seconds=WATCH_SECONDS,
            allow_watch_bookmarks=True,
        ):
            t = time.time()
            obj = ev["object"]
            if ev["type"] == "ERROR":  # 410 Gone: the watch cache has moved past rv
                return None
            rv = obj["metadata"]["resourceVersion"]
            if ev["type"] in ("ADDED", "MODIFIED"):
                self.events += 1
                self._observe(obj, t)
                self.cpu_seconds = time.thread_time()
            if self._stop.is_set():
                w.stop()
        return rv

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                rv = self._list() if rv is None else self._watch(rv)
            except kubernetes.client.ApiException as e:
                self.errors += 1
                rv = None if e.status == 410 else rv
                time.sleep(0.5)
            except Exception:  # a broken connection: watch again from where it was
                self.errors += 1
                time.sleep(0.5)
            self.cpu_seconds = time.thread_time()

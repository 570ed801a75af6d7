"""Starting and stopping the operator process: clear one-line errors instead of tracebacks.

* `liveness_problem`: kopf binds --liveness only after start-up, and a port in use then ends the
  process with an OSError traceback. Checked before kopf starts, it is one line.
* `ApiserverWatch`: with --exit-if-apiserver-gone S, an operator whose Kubernetes API has not
  answered for S seconds stops (exit code 3) with one line saying so, instead of retrying and
  logging for ever. For a sandbox whose control plane was torn down; in a Pod leave it off
  (the default): the kubelet's liveness probe and restarts cover an apiserver outage there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import signal
import socket
import threading
import time
import urllib.parse

import kubernetes

log = logging.getLogger(__name__)

GONE_EXIT_CODE = 3
APISERVER_GONE_ENV = "WSO2_EXIT_IF_APISERVER_GONE"
# How long a graceful stop may take before the process exits anyway: a stop must not hang on
# an apiserver that is not there.
STOP_GRACE = 20.0


def liveness_address(kopf_args: list[str]) -> tuple[str, int] | None:
    """(host, port) of kopf's --liveness URL in `kopf_args`, or None if it has none."""
    url = None
    for i, a in enumerate(kopf_args):
        if a.startswith("--liveness="):
            url = a.split("=", 1)[1]
        elif a == "--liveness" and i + 1 < len(kopf_args):
            url = kopf_args[i + 1]
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "0.0.0.0", parts.port or 80


def liveness_problem(kopf_args: list[str]) -> str | None:
    """One line saying why the --liveness endpoint cannot be served, or None if it can."""
    addr = liveness_address(kopf_args)
    if addr is None:
        return None
    host, port = addr
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # As aiohttp binds it: a port in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            hint = " (is another operator running?)" if e.errno == errno.EADDRINUSE else ""
            return f"cannot serve --liveness on {host}:{port}: {e.strerror or e}{hint}"
    return None


class ApiserverWatch:
    """Stops the operator once the Kubernetes API has not answered for `limit` seconds."""

    def __init__(self, limit: float, period: float = 2.0) -> None:
        self.limit = limit
        self.period = period
        self.message: str | None = None  # set once it gave up; __main__ prints it and exits
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="apiserver-watch")

    def _probe(self, api: kubernetes.client.VersionApi) -> str | None:
        """None if the apiserver answered (any HTTP status), else why not."""
        try:
            api.get_code(_request_timeout=(2, 5))
        except kubernetes.client.ApiException:
            return None  # it answered, if only to refuse
        except Exception as e:  # urllib3's connection errors, TLS errors, timeouts
            text = str(getattr(e, "reason", None) or e)
            m = re.search(r"\[Errno -?\d+\] [^'\")]*", text)
            return m.group(0).strip() if m else f"{type(e).__name__}: {text[:160]}"
        return None

    async def _run(self) -> None:
        cfg = kubernetes.client.Configuration.get_default_copy()
        cfg.retries = False  # one probe is one attempt: urllib3 would log each of its retries
        api = kubernetes.client.VersionApi(kubernetes.client.ApiClient(cfg))
        server = api.api_client.configuration.host
        # Counted from the first probe that failed, not the last that answered (up to a period
        # earlier): the API has really been silent for the whole limit when the operator stops.
        down_since: float | None = None
        warned = False
        while True:
            why = await asyncio.to_thread(self._probe, api)
            now = time.monotonic()
            if why is None:
                if warned:
                    log.warning("the Kubernetes API at %s answers again", server)
                down_since, warned = None, False
                await asyncio.sleep(self.period)
                continue
            if down_since is None:
                down_since = now
            if now - down_since >= self.limit:
                self.message = (
                    f"the Kubernetes API at {server} has not answered for {self.limit:g}s "
                    f"({why}); the operator stops"
                )
                log.error("%s", self.message)
                self._stop()
                return
            elif not warned:
                warned = True
                log.warning(
                    "the Kubernetes API at %s does not answer (%s); stopping if it has not "
                    "answered within %gs",
                    server,
                    why,
                    self.limit,
                )
            await asyncio.sleep(self.period)

    def _stop(self) -> None:
        # kopf stops gracefully on SIGTERM (daemons are told to stop, connections closed).
        os.kill(os.getpid(), signal.SIGTERM)

        def last_resort() -> None:
            time.sleep(STOP_GRACE)
            with contextlib.suppress(Exception):
                print(f"wso2-operator: {self.message}", flush=True)
            os._exit(GONE_EXIT_CODE)

        threading.Thread(target=last_resort, daemon=True).start()


# The watch of this process, if --exit-if-apiserver-gone is on (started by handlers.py).
WATCH: ApiserverWatch | None = None


def start_watch() -> None:
    """Start the watch if --exit-if-apiserver-gone asked for it; from the operator's loop."""
    global WATCH
    limit = float(os.environ.get(APISERVER_GONE_ENV) or 0)
    if limit > 0 and WATCH is None:
        WATCH = ApiserverWatch(limit)
        WATCH.start()

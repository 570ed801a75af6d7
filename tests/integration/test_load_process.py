"""LoadProcess (the load generator in its own OS process) against a real HTTP server.

The server is a small threaded stdlib HTTP server in the test process that answers like the
stand-in (X-Node, X-Version, GET /slow?ms=N), so the child's records can be checked one by one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from wso2_sandbox.load import LONG, LoadConfig, Target, client_figures
from wso2_sandbox.load_process import LoadProcess

pytestmark = pytest.mark.timeout(120)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/slow":
            time.sleep(int(parse_qs(url.query)["ms"][0]) / 1000)
        body = b"ok"
        self.send_response(200)
        self.send_header("X-Node", "n1")
        self.send_header("X-Version", "1.0.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # a client killed mid-request (on purpose)
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # one line per request would flood the log
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[Target]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield Target("lb1", f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()


def config(**kw: object) -> LoadConfig:
    return LoadConfig(**{"rate": 100.0, "long_ms": (50, 150), "seed": 7, **kw})  # type: ignore[arg-type]


def wait_sent(load: LoadProcess, at_least: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        snap = load.counters.snapshot()
        if snap["sent"] >= at_least:
            return snap
        time.sleep(0.1)
    raise AssertionError(f"the child's counters never showed {at_least} sent: {snap}")


def test_every_request_comes_back_with_its_outcome(server: Target) -> None:
    load = LoadProcess([server], config(long_fraction=0.2), snapshot_interval=0.2).start()
    assert load.pid is not None and load.pid != os.getpid()
    snap = wait_sent(load, 50)  # live counters from the child while it runs
    records = load.stop()
    assert len(records) >= snap["sent"]
    assert sorted(r.seq for r in records) == list(range(len(records)))
    assert all(r.ok and r.status == 200 for r in records), [r for r in records if not r.ok][:3]
    assert {r.node for r in records} == {"n1"} and {r.version for r in records} == {"1.0.0"}
    assert {r.lb for r in records} == {"lb1"}
    assert all(r.lag is not None and r.end >= r.start for r in records)
    longs = [r for r in records if r.kind == LONG]
    assert longs and all(50 <= (r.slow_ms or 0) <= 150 for r in longs)
    assert all(r.duration >= (r.slow_ms or 0) / 1000 for r in longs)
    assert client_figures(records)["refused"] == 0
    assert load.child_cpu_seconds is not None and load.child_cpu_seconds > 0


def test_requests_over_the_in_flight_bound_are_refused_and_recorded(server: Target) -> None:
    # One slot, long requests only: whatever is due while one is open is refused, not dropped.
    cfg = config(long_fraction=1.0, long_ms=(300, 300), max_in_flight=1)
    load = LoadProcess([server], cfg).start()
    wait_sent(load, 20)
    records = load.stop()
    figures = client_figures(records)
    assert figures["refused"] > 0 and figures["failed_sent"] == 0, figures
    assert sum(r.ok for r in records) + figures["refused"] == len(records)


def test_a_child_killed_by_a_signal_is_reported(server: Target) -> None:
    load = LoadProcess([server], config()).start()
    wait_sent(load, 10)
    assert load.pid is not None
    os.kill(load.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="crashed: killed by signal 9"):
        load.stop()


def test_an_exception_in_the_child_is_reported_with_its_traceback(server: Target) -> None:
    load = LoadProcess([server], config(), snapshot_interval=0.1).start()
    wait_sent(load, 10)
    # The child can no longer publish its counters: it must fail loudly, not run on blind.
    while load.counters.path.parent.exists():  # the child may write into it meanwhile
        shutil.rmtree(load.counters.path.parent, ignore_errors=True)
    with pytest.raises(RuntimeError, match=r"(?s)crashed: exit code 1.*FileNotFoundError"):
        load.stop()


def test_the_child_runs_ahead_of_the_machine_under_test_when_allowed(server: Target) -> None:
    load = LoadProcess([server], config(), nice=-5).start()
    try:
        # Root (CI) may raise a priority; anyone else keeps the default and is told so.
        expected = -5 if os.geteuid() == 0 else 0
        assert load.priority == expected
        assert load.pid is not None and os.getpriority(os.PRIO_PROCESS, load.pid) == expected
        wait_sent(load, 20)  # and it still works as before
    finally:
        records = load.stop()
    assert records and all(r.ok for r in records)

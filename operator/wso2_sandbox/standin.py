"""A stand-in for a WSO2 product node: a small threaded HTTP server, standard library only.

It is started by `wso2ctl start` on a fleet node (see `wso2_sandbox.fleet`) and mimics what matters
for rolling updates:

- boot takes `boot_seconds`; the port opens `ready_gap_seconds` before the node is ready, because
  WSO2 opens its ports before its services are up, so an open port proves nothing;
- until ready every request gets 503, so traffic sent to a booting node shows up as errors;
- `GET /slow?ms=N` holds a request open, so a stop (SIGKILL, like a JVM going away) visibly aborts
  requests in flight;
- every response names the node and version (`X-Node`, `X-Version`) so clients can tell where
  they landed;
- a bad build can be simulated per version (`<home>/etc/faults.json`, see `parse_faults`): a share
  of the requests answered 5xx and/or extra latency, while `/health` and `/version` stay fine, as a
  real bad release behaves. The file is re-read when it changes, so faults can change on a running
  node.

It writes `port_open` and `ready` to `<home>/log/events.jsonl`; `wso2ctl` writes the other events.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# Fallback boot origin when wso2ctl passes no --t0; taken as early as possible.
_T0 = time.time()

DEFAULTS = {"boot_seconds": 3.0, "ready_gap_seconds": 2.0}
MAX_SLOW_MS = 600_000
MAX_LATENCY_MS = 600_000
ANY_VERSION = "*"
_FAULT_KEYS = {"errorPercent", "errorStatus", "latencyMs"}


@dataclass(frozen=True)
class Fault:
    """How a version misbehaves on non-probe requests."""

    error_percent: float = 0.0  # share of requests answered `error_status`
    error_status: int = 500
    latency_ms: float = 0.0  # added to every non-probe request, errors included

    def as_json(self) -> dict[str, float | int]:
        return {
            "errorPercent": self.error_percent,
            "errorStatus": self.error_status,
            "latencyMs": self.latency_ms,
        }


def parse_faults(raw: object) -> dict[str, Fault]:
    """Validate faults.json: {"<version>" | "*": {"errorPercent", "errorStatus", "latencyMs"}}.

    "*" applies to every version without an entry of its own (entries are not merged). Raises
    ValueError on anything else, so a typo never silently means "no fault".
    """
    if not isinstance(raw, Mapping):
        raise ValueError("faults must be a JSON object keyed by version")
    out = {}
    for version, entry in raw.items():
        if not isinstance(version, str) or not version:
            raise ValueError(f"bad version key {version!r}")
        if not isinstance(entry, Mapping) or not set(entry) <= _FAULT_KEYS:
            raise ValueError(f"{version}: expected an object with keys from {sorted(_FAULT_KEYS)}")
        pct = _number(entry.get("errorPercent", 0), f"{version}.errorPercent", 0, 100)
        status = entry.get("errorStatus", 500)
        if type(status) is not int or not 500 <= status <= 599:
            raise ValueError(f"{version}.errorStatus must be an integer 500..599, not {status!r}")
        lat = _number(entry.get("latencyMs", 0), f"{version}.latencyMs", 0, MAX_LATENCY_MS)
        out[version] = Fault(pct, status, lat)
    return out


def _number(value: object, what: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValueError(f"{what} must be a number {lo:g}..{hi:g}, not {value!r}")
    return float(value)


class FaultModel:
    """The fault of the version this stand-in runs, from faults.json, re-read when it changes."""

    def __init__(self, path: Path, version: str) -> None:
        self._path = path
        self._version = version
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._fault: Fault | None = None
        self._credit = 0.0

    def next_request(self) -> tuple[int | None, float]:
        """(status to fail this request with or None, seconds to delay it)."""
        with self._lock:
            self._refresh()
            f = self._fault
            if f is None:
                return None, 0.0
            # Error diffusion instead of a random draw: exactly errorPercent of any run of
            # requests fails, evenly spread, so a test or an analysis window sees the configured
            # rate without sampling noise.
            self._credit += f.error_percent
            fail = self._credit >= 100.0
            if fail:
                self._credit -= 100.0
            return (f.error_status if fail else None), f.latency_ms / 1000

    def _refresh(self) -> None:
        # One stat per request; the inode catches an atomic replace within the mtime granularity.
        try:
            st = os.stat(self._path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if key == self._key:
            return
        self._key = key
        fault = None
        if key is not None:
            try:
                faults = parse_faults(json.loads(self._path.read_text()))
                fault = faults.get(self._version, faults.get(ANY_VERSION))
            except (OSError, ValueError) as e:
                print(f"standin: ignoring {self._path}: {e}", file=sys.stderr, flush=True)
        if fault != self._fault:
            self._credit = 0.0
        self._fault = fault


class EventLog:
    """Appends one JSON object per line; O_APPEND keeps lines whole next to wso2ctl's writes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def write(self, event: str, version: str, t: float | None = None) -> None:
        line = json.dumps({"t": t or time.time(), "event": event, "version": version}) + "\n"
        with self._lock:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops connections under bursts of a few hundred requests per second.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], node: str, version: str) -> None:
        super().__init__(address, Handler)
        self.node = node
        self.version = version
        self.ready = threading.Event()
        self.faults: FaultModel | None = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wso2-standin/1"
    sys_version = ""
    # Idle keep-alive connections (HAProxy keeps server connections for reuse) free their thread
    # eventually instead of piling up forever.
    timeout = 120
    server: StandinServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle(send_body=True)

    def do_HEAD(self) -> None:
        self._handle(send_body=False)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._handle(send_body=True)

    def _fault(self) -> int | None:
        """Applies the version's fault to this request: sleeps, returns a status to fail it with.

        Only called past the probe paths, which a bad build still answers.
        """
        if self.server.faults is None:
            return None
        status, delay = self.server.faults.next_request()
        if delay:
            time.sleep(delay)
        return status

    def _handle(self, send_body: bool) -> None:
        srv = self.server
        url = urlsplit(self.path)
        if not srv.ready.is_set():
            code, text = 503, f"{srv.node} {srv.version} starting\n"
        elif url.path == "/health":
            code, text = 200, "ok\n"
        elif url.path in ("/version", "/services/Version"):
            code, text = 200, srv.version + "\n"
        elif (fail := self._fault()) is not None:
            code, text = fail, f"{srv.node} {srv.version} failed (simulated fault)\n"
        elif url.path == "/slow":
            try:
                ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
            except ValueError:
                ms = 1000
            ms = max(0, min(ms, MAX_SLOW_MS))
            time.sleep(ms / 1000)
            code, text = 200, f"{srv.node} {srv.version} slow {ms}ms\n"
        else:
            code, text = 200, f"{srv.node} {srv.version}\n"
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Node", srv.node)
        self.send_header("X-Version", srv.version)
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _load_timing(home: Path) -> tuple[float, float]:
    cfg = dict(DEFAULTS)
    try:
        cfg.update(json.loads((home / "etc" / "standin.json").read_text()))
    except (OSError, ValueError):
        pass
    boot = max(0.0, float(cfg["boot_seconds"]))
    gap = min(max(0.0, float(cfg["ready_gap_seconds"])), boot)
    return boot, gap


def _bind(host: str, port: int, node: str, version: str) -> StandinServer:
    # A predecessor killed a moment ago may still hold the port while the kernel tears it down.
    deadline = time.monotonic() + 3.0
    while True:
        try:
            return StandinServer((host, port), node, version)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, help="the node directory (NODE_HOME)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=8243)
    ap.add_argument("--t0", type=float, help="when wso2ctl started us (unix time)")
    args = ap.parse_args(argv)
    # Boot time counts from the moment wso2ctl spawned us, so interpreter start-up under load
    # doesn't stretch it; an implausible value falls back to our own start.
    t0 = args.t0 if args.t0 and abs(args.t0 - _T0) < 60 else _T0

    home = Path(args.home)
    try:
        version = (home / "opt" / "VERSION").read_text().strip() or "unknown"
    except OSError:
        version = "unknown"
    boot, gap = _load_timing(home)
    # The fleet's own first start skips the simulated boot so it reaches steady state quickly;
    # every start the operator triggers honours the configured timing.
    if os.environ.get("STANDIN_INSTANT_BOOT") == "1":
        boot = gap = 0.0
    events = EventLog(home / "log" / "events.jsonl")

    _sleep_until(t0 + boot - gap)
    server = _bind(args.host, args.port, args.name, version)
    server.faults = FaultModel(home / "etc" / "faults.json", version)
    events.write("port_open", version)

    def become_ready() -> None:
        _sleep_until(t0 + boot)
        server.ready.set()
        events.write("ready", version)

    threading.Thread(target=become_ready, name="ready", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

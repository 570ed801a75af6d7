"""Open-loop HTTP load through the fleet's HAProxy frontends, with every request recorded.

Used by the benchmark (`python -m bench.run`), the bench smoke test and the demo:

    gen = LoadGenerator(targets_from_fleet(fleet.description), LoadConfig(rate=200))
    with LoadThread(gen) as load:        # its own thread and event loop
        ...                              # load.counters.snapshot() any time, e.g. for a UI
    records = load.records               # one RequestRecord per request, complete after exit

or from async code: `records = await gen.run()` (returns after `gen.stop()` or max_seconds), or in
its own OS process with `wso2_sandbox.load_process.LoadProcess` when the caller's process is busy.

Traffic shape. Requests are issued at a constant rate on a fixed schedule (request i is due at
t0 + i/rate), whether or not earlier ones finished: a closed loop would slow down exactly when the
system under test does and so hide the failures we want to count. A share of them (default 10 %)
are long, `GET /slow?ms=N` with N uniform in [2000, 5000], so that a node always holds requests in
flight and a rollout that does not drain cuts them. In "split" mode the requests alternate over the
targets (half through each LB of a pair); in "vip" mode they all go to the one target currently
selected with `set_vip()`, like clients behind a Pacemaker VIP.

Connections. Every request opens its own TCP connection and closes it afterwards (aiohttp's
`force_close` plus `Connection: close`). A pooled keep-alive connection can be closed by HAProxy
while idle (timeout client) at the very moment the client reuses it; the client then sees an error
that says nothing about the rollout. HAProxy also does not count idle keep-alive connections in a
server's sessions, so a pool would not exercise the drain any better. With one connection per
request, a failure is a failure of the system: HAProxy had no server (503), the server answered
an error (the stand-in's 503 while booting), or the connection broke (the node was stopped with
the request in flight, which HAProxy reports as 502).

Bounds. The generator stops issuing after `max_seconds` by itself, waits at most
`request_timeout` for what is in flight, and never has more than `max_in_flight` requests open
(an over-limit request is recorded as failed with error "client-overload", never silently
dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

SHORT = "short"
LONG = "long"
# HAProxy 2.x sends header names lower-cased; aiohttp's header lookup is case-insensitive anyway.
NODE_HEADER = "X-Node"
VERSION_HEADER = "X-Version"
# The error of a request the generator refused to send (its in-flight bound): never reached a LB.
REFUSED = "client-overload"


@dataclass(frozen=True)
class Target:
    """One entry point for clients: an LB frontend (or a VIP)."""

    name: str
    url: str  # base URL, e.g. http://127.1.2.101:80


@dataclass
class LoadConfig:
    rate: float = 200.0  # requests per second, all targets together
    long_fraction: float = 0.10  # share of requests that are GET /slow
    long_ms: tuple[int, int] = (2000, 5000)  # uniform range of the slow requests' duration
    short_path: str = "/"
    max_seconds: float = 900.0  # stop issuing after this long even if nobody calls stop()
    request_timeout: float = 30.0  # per request, connect to last byte
    max_in_flight: int = 5000
    seed: int | None = None  # for a reproducible request mix

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        if not 0.0 <= self.long_fraction <= 1.0:
            raise ValueError("long_fraction must be within 0..1")
        lo, hi = self.long_ms
        if lo < 0 or hi < lo:
            raise ValueError("long_ms must be (lo, hi) with 0 <= lo <= hi")


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are Unix time (comparable with node event logs)."""

    seq: int
    start: float
    end: float
    status: int | None  # HTTP status, None when no response arrived
    error: str | None  # connection error, timeout, ...; None when a response arrived
    kind: str  # SHORT or LONG
    lb: str  # target name the request was sent to
    node: str | None  # X-Node of the response: the node that answered it
    slow_ms: int | None = None  # requested duration of a LONG request
    # X-Version of the response: the build that answered (errors of a bad build carry it too;
    # HAProxy's own 502/503 and broken connections do not).
    version: str | None = None
    # How late the request went out against its slot on the schedule (seconds): the generator's
    # own delay, so a busy client can be told from a slow system.
    lag: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RequestRecord:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


@dataclass
class Counters:
    """Live counters, updated on the generator's event loop; safe to read from any thread."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    in_flight: int = 0
    long_failed: int = 0
    by_node: Counter[str] = field(default_factory=Counter)
    by_lb: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # "503", "502", "ClientOSError", ...
    failed_by_version: Counter[str] = field(default_factory=Counter)  # failed answers of a build
    started_at: float | None = None
    last_failure: RequestRecord | None = None

    def snapshot(self) -> dict[str, Any]:
        """A plain copy for a UI or a log line (dict copies guard against concurrent updates)."""
        elapsed = time.time() - self.started_at if self.started_at else 0.0
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "long_failed": self.long_failed,
            "by_node": dict(self.by_node.copy()),
            "by_lb": dict(self.by_lb.copy()),
            "failures": dict(self.failures.copy()),
            "failed_by_version": dict(self.failed_by_version.copy()),
            "elapsed": round(elapsed, 3),
        }


class LoadGenerator:
    """Constant-rate GET load over `targets`, recording every request (see the module doc)."""

    def __init__(
        self, targets: Sequence[Target], config: LoadConfig | None = None, *, mode: str = "split"
    ) -> None:
        if not targets:
            raise ValueError("need at least one target")
        if mode not in ("split", "vip"):
            raise ValueError("mode must be 'split' or 'vip'")
        self.targets = list(targets)
        self.config = config or LoadConfig()
        self.mode = mode
        self.counters = Counters()
        self.records: list[RequestRecord] = []
        self._vip = self.targets[0]
        self._rng = random.Random(self.config.seed)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self.issuing_ended_at: float | None = None
        self.issued = 0  # requests scheduled; each one gets exactly one record

    # ------------------------------------------------------------------ control
    def set_vip(self, name: str) -> None:
        """Send all new requests to target `name` ("vip" mode); e.g. simulate a VIP failover."""
        for t in self.targets:
            if t.name == name:
                self._vip = t
                return
        raise KeyError(f"no target {name!r}")

    def stop(self) -> None:
        """Stop issuing new requests (thread-safe). `run()` returns once in-flight ones end."""
        self._stop_requested = True
        loop, ev = self._loop, self._stop
        if loop is None or ev is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            ev.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed: nothing to stop
                loop.call_soon_threadsafe(ev.set)

    # ------------------------------------------------------------------ running
    async def run(self) -> list[RequestRecord]:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        connector = aiohttp.TCPConnector(force_close=True, limit=0, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"Connection": "close"}
        ) as session:
            self.counters.started_at = time.time()
            t0 = self._loop.time()
            hard_end = t0 + cfg.max_seconds
            seq = 0
            while not self._stop.is_set():
                due = t0 + seq / cfg.rate
                if due >= hard_end:
                    break
                delay = due - self._loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    if self._stop.is_set():
                        break
                # Open loop: a request that is overdue (the loop was busy) goes out at once.
                task = asyncio.create_task(self._one(session, seq, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                seq += 1
                self.issued = seq
            self.issuing_ended_at = time.time()
            if tasks:
                # Bounded: every request has its own total timeout.
                await asyncio.wait(set(tasks), timeout=cfg.request_timeout + 5)
            for t in list(tasks):
                t.cancel()
        return self.records

    def _pick(self, seq: int) -> tuple[Target, str, int | None]:
        cfg = self.config
        target = self.targets[seq % len(self.targets)] if self.mode == "split" else self._vip
        if cfg.long_fraction and self._rng.random() < cfg.long_fraction:
            return target, LONG, self._rng.randint(*cfg.long_ms)
        return target, SHORT, None

    async def _one(self, session: aiohttp.ClientSession, seq: int, due: float) -> None:
        assert self._loop is not None
        lag = self._loop.time() - due
        target, kind, ms = self._pick(seq)
        path = f"/slow?ms={ms}" if kind == LONG else self.config.short_path
        c = self.counters
        c.sent += 1
        c.by_lb[target.name] += 1
        start = time.time()
        t = time.perf_counter()
        status: int | None = None
        error: str | None = None
        node: str | None = None
        version: str | None = None
        entered = c.in_flight < self.config.max_in_flight
        if not entered:
            error = REFUSED
        try:
            if entered:
                c.in_flight += 1
                async with session.get(target.url + path, allow_redirects=False) as resp:
                    await resp.read()
                    status = resp.status
                    node = resp.headers.get(NODE_HEADER)
                    version = resp.headers.get(VERSION_HEADER)
        except TimeoutError:
            error = "timeout"
        except (aiohttp.ClientError, OSError) as e:
            error = f"{type(e).__name__}: {e}"[:300]
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        finally:
            if entered:
                c.in_flight -= 1
            self._record(
                RequestRecord(
                    seq=seq,
                    start=start,
                    end=start + (time.perf_counter() - t),
                    status=status,
                    error=error,
                    kind=kind,
                    lb=target.name,
                    node=node,
                    slow_ms=ms,
                    version=version,
                    lag=round(lag, 4),
                )
            )

    def _record(self, rec: RequestRecord) -> None:
        c = self.counters
        self.records.append(rec)
        if rec.ok:
            c.ok += 1
            if rec.node:
                c.by_node[rec.node] += 1
        else:
            c.failed += 1
            key = str(rec.status) if rec.error is None else rec.error.split(":", 1)[0]
            c.failures[key] += 1
            c.last_failure = rec
            if rec.version:
                c.failed_by_version[rec.version] += 1
            if rec.kind == LONG:
                c.long_failed += 1


class LoadThread:
    """Runs a LoadGenerator on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(self, generator: LoadGenerator) -> None:
        self.generator = generator
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="load", daemon=True)

    @property
    def counters(self) -> Counters:
        return self.generator.counters

    @property
    def records(self) -> list[RequestRecord]:
        return self.generator.records

    def start(self) -> LoadThread:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> list[RequestRecord]:
        """Stop issuing, wait for the in-flight requests (bounded) and return all records."""
        self.generator.stop()
        bound = self.generator.config.request_timeout + 15 if timeout is None else timeout
        self._thread.join(bound)
        if self._thread.is_alive():
            raise TimeoutError(f"load generator did not finish within {bound:.0f}s")
        if self.error is not None:
            raise RuntimeError("load generator crashed") from self.error
        return self.records

    def __enter__(self) -> LoadThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self.generator.run())
        except BaseException as e:  # reported by stop(); a thread has nobody else to tell
            self.error = e


# --------------------------------------------------------------------- helpers


def targets_from_fleet(description: Mapping[str, Any]) -> list[Target]:
    """One target per LB frontend of a fleet description (fleet.json)."""
    return [Target(lb["name"], f"http://{lb['frontend']}") for lb in description["lbs"]]


def summarize(records: Iterable[RequestRecord]) -> dict[str, Any]:
    """Totals for a report: failures by cause, long requests cut, latency percentiles."""
    recs = list(records)
    failed = [r for r in recs if not r.ok]
    ok_durations = sorted(r.duration for r in recs if r.ok and r.kind == SHORT)
    return {
        "total": len(recs),
        "ok": len(recs) - len(failed),
        "failed": len(failed),
        "long_total": sum(1 for r in recs if r.kind == LONG),
        "long_cut": sum(1 for r in failed if r.kind == LONG),
        "failures": dict(
            Counter(str(r.status) if r.error is None else r.error.split(":", 1)[0] for r in failed)
        ),
        "by_node": dict(Counter(r.node for r in recs if r.ok and r.node)),
        "by_version": by_version(recs),
        "short_p50_s": _pct(ok_durations, 0.50),
        "short_p99_s": _pct(ok_durations, 0.99),
    }


def client_figures(records: Iterable[RequestRecord]) -> dict[str, Any]:
    """What the generator itself did, to tell the client machine from the system under test:
    requests it refused to send (its in-flight bound), failed requests it did send, and how late
    it sent them against its schedule (p50 / p99 / max, seconds)."""
    recs = list(records)
    lags = sorted(r.lag for r in recs if r.lag is not None)
    refused = sum(1 for r in recs if r.error == REFUSED)
    return {
        "refused": refused,
        "failed_sent": sum(1 for r in recs if not r.ok) - refused,
        "lag_p50_s": _pct(lags, 0.50),
        "lag_p99_s": _pct(lags, 0.99),
        "lag_max_s": round(lags[-1], 4) if lags else None,
    }


def _pct(ordered: Sequence[float], p: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 4)


def by_version(records: Iterable[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Per answering build: requests, failed ones, and every node that ever served it."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.version is None:
            continue
        v = out.setdefault(r.version, {"total": 0, "failed": 0, "nodes": set()})
        v["total"] += 1
        v["failed"] += not r.ok
        if r.node:
            v["nodes"].add(r.node)
    return {k: {**v, "nodes": sorted(v["nodes"])} for k, v in sorted(out.items())}


def write_records(path: str | Path, records: Iterable[RequestRecord]) -> None:
    """One JSON object per line."""
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r.as_dict()) + "\n")


def read_records(path: str | Path) -> list[RequestRecord]:
    return [RequestRecord.from_dict(json.loads(ln)) for ln in Path(path).read_text().splitlines()]


# --------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wso2_sandbox.load", description=__doc__)
    ap.add_argument("--fleet", default=".sandbox/fleet/fleet.json", help="fleet.json to target")
    ap.add_argument("--url", action="append", help="NAME=URL target (instead of --fleet)")
    ap.add_argument("--rate", type=float, default=LoadConfig.rate)
    ap.add_argument("--long-fraction", type=float, default=LoadConfig.long_fraction)
    ap.add_argument("--long-ms", type=int, nargs=2, default=LoadConfig.long_ms)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--mode", choices=["split", "vip"], default="split")
    ap.add_argument("--out", help="write every request as JSON lines here")
    a = ap.parse_args(argv)
    if a.url:
        targets = [Target(*u.split("=", 1)) for u in a.url]
    else:
        targets = targets_from_fleet(json.loads(Path(a.fleet).read_text()))
    cfg = LoadConfig(
        rate=a.rate, long_fraction=a.long_fraction, long_ms=tuple(a.long_ms), max_seconds=a.seconds
    )
    load = LoadThread(LoadGenerator(targets, cfg, mode=a.mode)).start()
    try:
        deadline = time.monotonic() + a.seconds
        while time.monotonic() < deadline:
            time.sleep(1.0)
            s = load.counters.snapshot()
            print(
                f"sent {s['sent']} ok {s['ok']} failed {s['failed']} "
                f"in-flight {s['in_flight']} {s['failures'] or ''}",
                flush=True,
            )
    except KeyboardInterrupt:
        pass
    records = load.stop()
    if a.out:
        write_records(a.out, records)
    print(json.dumps(summarize(records), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One process standing in for the products of many fleet nodes (the scale fleet's stand-in).

`wso2_sandbox.standin` is one process per node: fine for 3 nodes, too dear for 200 on 2 cores
(each Python start costs ~60 ms of CPU, twice per node). This host serves many nodes from one
asyncio loop, and keeps every node's behaviour its own:

- each node listens on its own address (`<addr>:8243`), only while its "process" runs;
- version, timing (`etc/standin.json`), faults (`etc/faults.json`) and events
  (`log/events.jsonl`) are read from and written to that node's own directory, as the
  per-node stand-in does, so `NodeHandle` works on either;
- boot is the same: the port opens `ready_gap_seconds` before ready, 503 until ready;
- `wso2ctl stop` closes the node's listener and aborts its connections (requests in flight
  are cut, like SIGKILL to a JVM); other nodes of the host are untouched.

`wso2ctl` reaches the host over TCP on 127.0.0.1 (bash's /dev/tcp: no Python start per
command), at an ephemeral port the host writes with a random token to the `--endpoint` file
(`<port> <token>`, mode 600). One line per command, the token first:
`<token> start <node> <t0> [instant]`, `<token> stop <node>`, `<token> status <node>`; the
answer starts with `ok` or `error`. The token keeps other local users and other fleets' nodes
out, as the unix socket's file mode did.

    python standin_host.py --endpoint FILE --node NAME=ADDR=HOME ... [--port 8243]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, parse_qs, urlsplit

from wso2_sandbox.standin import MAX_SLOW_MS, EventLog, FaultModel, _load_timing

MAX_HEADER_BYTES = 16384


@dataclass
class NodeProduct:
    """The product "process" of one node: stopped, booting, or serving."""

    name: str
    addr: str
    home: Path
    port: int
    version: str = "unknown"
    ready: bool = False
    server: asyncio.base_events.Server | None = None
    boot: asyncio.Task[None] | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    faults: FaultModel | None = None

    @property
    def running(self) -> bool:
        return self.boot is not None

    def events(self) -> EventLog:
        return EventLog(self.home / "log" / "events.jsonl")

    def installed(self) -> str:
        try:
            return (self.home / "opt" / "VERSION").read_text().strip()
        except OSError:
            return ""


class StandinHost:
    def __init__(self, nodes: list[NodeProduct], token: str) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.token = token

    # ------------------------------------------------------------------ control

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode(errors="replace").split()
            if line and hmac.compare_digest(line[0].encode(), self.token.encode()):
                answer = await self._command(line[1:])
            else:
                answer = "error: bad token"
            writer.write((answer + "\n").encode())
            await writer.drain()
        finally:
            writer.close()

    async def _command(self, words: list[str]) -> str:
        if len(words) < 2 or words[1] not in self.nodes:
            return f"error: bad command {' '.join(words)!r}"
        node = self.nodes[words[1]]
        if words[0] == "status":
            return "ok running" if node.running else "ok stopped"
        if words[0] == "stop":
            await self.stop(node)
            node.events().write("stop", node.installed())
            return "ok stopped"
        if words[0] == "start" and len(words) >= 3:
            if node.running:
                return "ok already running"
            try:
                t0 = float(words[2])
            except ValueError:
                return f"error: bad t0 {words[2]!r}"
            node.events().write("start", node.installed(), t0)
            self.start(node, t0, instant="instant" in words[3:])
            return "ok started"
        return f"error: unknown command {words[0]!r}"

    def start(self, node: NodeProduct, t0: float, *, instant: bool = False) -> None:
        # The same origin rule as the per-node stand-in: an implausible t0 means "now".
        if abs(t0 - time.time()) > 60:
            t0 = time.time()
        node.boot = asyncio.create_task(self._boot(node, t0, instant))

    async def _boot(self, node: NodeProduct, t0: float, instant: bool) -> None:
        node.version = node.installed() or "unknown"
        boot, gap = (0.0, 0.0) if instant else _load_timing(node.home)
        await _sleep_until(t0 + boot - gap)
        node.faults = FaultModel(node.home / "etc" / "faults.json", node.version)
        try:
            node.server = await self._bind(node)
        except OSError as e:
            # Like a product that dies at start: the node reads as stopped, and says why.
            print(f"standin_host: {node.name} cannot listen: {e}", file=sys.stderr, flush=True)
            node.boot = None
            return
        node.events().write("port_open", node.version)
        await _sleep_until(t0 + boot)
        node.ready = True
        node.events().write("ready", node.version)

    async def _bind(self, node: NodeProduct) -> asyncio.base_events.Server:
        # A listener closed a moment ago may still hold the port while the kernel tears it down.
        deadline = time.monotonic() + 3.0
        while True:
            try:
                return await asyncio.start_server(
                    lambda r, w: self._serve(node, r, w),
                    node.addr,
                    node.port,
                    reuse_address=True,
                    backlog=1024,
                )
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stop(self, node: NodeProduct) -> None:
        if node.boot is not None:
            node.boot.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await node.boot
        node.boot = None
        node.ready = False
        if node.server is not None:
            node.server.close()
            node.server = None
        # Like SIGKILL to a JVM: every open connection is reset, requests in flight are cut.
        for w in list(node.writers):
            w.transport.abort()
        node.writers.clear()

    # ------------------------------------------------------------------ HTTP

    async def _serve(
        self, node: NodeProduct, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        node.writers.add(writer)
        try:
            while await self._one_request(node, reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            node.writers.discard(writer)
            writer.close()

    async def _one_request(
        self, node: NodeProduct, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answers one request; False when the connection is to close."""
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return False
        method, target, proto = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if length := int(headers.get("content-length") or 0):
            await reader.readexactly(length)
        code, text = await self._answer(node, urlsplit(target))
        keep = proto == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        body = text.encode()
        head_out = (
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Node: {node.name}\r\nX-Version: {node.version}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        )
        writer.write(head_out.encode() + (b"" if method == "HEAD" else body))
        await writer.drain()
        return keep

    async def _answer(self, node: NodeProduct, url: SplitResult) -> tuple[int, str]:
        path, query = url.path, url.query
        if not node.ready:
            return 503, f"{node.name} {node.version} starting\n"
        if path == "/health":
            return 200, "ok\n"
        if path in ("/version", "/services/Version"):
            return 200, node.version + "\n"
        status, delay = node.faults.next_request() if node.faults else (None, 0.0)
        if delay:
            await asyncio.sleep(delay)
        if status is not None:
            return status, f"{node.name} {node.version} failed (simulated fault)\n"
        if path == "/slow":
            try:
                ms = int(parse_qs(query).get("ms", ["1000"])[0])
            except ValueError:
                ms = 1000
            ms = max(0, min(ms, MAX_SLOW_MS))
            await asyncio.sleep(ms / 1000)
            return 200, f"{node.name} {node.version} slow {ms}ms\n"
        return 200, f"{node.name} {node.version}\n"


_REASONS = {200: "OK", 503: "Service Unavailable", 500: "Internal Server Error"}


async def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def parse_node(spec: str, port: int) -> NodeProduct:
    name, addr, home = spec.split("=", 2)
    return NodeProduct(name=name, addr=addr, home=Path(home), port=port)


async def _main(args: argparse.Namespace) -> None:
    host = StandinHost([parse_node(s, args.port) for s in args.node], secrets.token_hex(16))
    control = await asyncio.start_server(host.control, "127.0.0.1", 0, backlog=256)
    port = control.sockets[0].getsockname()[1]
    write_endpoint(args.endpoint, port, host.token)
    # The fleet's first start skips the simulated boot: nobody watches it.
    now = time.time()
    for node in host.nodes.values():
        host.start(node, now, instant=True)
    print(json.dumps({"nodes": len(host.nodes), "control_port": port}), flush=True)
    async with control:
        await control.serve_forever()


def write_endpoint(path: str, port: int, token: str) -> None:
    """`<port> <token>` for wso2ctl, readable by the fleet's user only, replaced atomically so a
    wso2ctl never reads half of it."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{port} {token}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True, help="file to write the control port to")
    ap.add_argument("--node", action="append", default=[], help="NAME=ADDR=HOME")
    ap.add_argument("--port", type=int, default=8243)
    args = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

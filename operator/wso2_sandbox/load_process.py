"""A LoadGenerator in its own OS process, for benches whose own process is busy.

    with LoadProcess(targets, LoadConfig(rate=500)) as load:  # python -m wso2_sandbox.load_process
        ...                                                    # load.counters.snapshot() any time
    records = load.records                                     # every request, from a file

Why a process: in a thread, the generator shares the GIL with everything else the caller does
(LB sweeps, API polls). When the caller is busy the generator sends late and, open loop, piles up
requests until it refuses them ("client-overload"): the client machine, not the system under
test. In its own process it has its own interpreter and event loop; the OS shares the cores.

Protocol with the child, all plain files and pipes so that nothing can block its event loop:
- the spec (targets, config, mode, file paths) is a JSON argument;
- the child prints "ready" on stdout once it is issuing requests;
- commands arrive on stdin, one per line: "stop", "vip NAME"; EOF (the parent died or closed it)
  means stop;
- every `snapshot_interval` s the child replaces `counters.json` with a counters snapshot;
- at the end it writes every record (JSON lines) and then `done.json` (how many requests it
  issued, its CPU seconds); the parent checks that every issued request has its record.
A crash (exception, signal) is raised by `stop()` with the child's stderr, never swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from wso2_sandbox.load import (
    LoadConfig,
    LoadGenerator,
    RequestRecord,
    Target,
    read_records,
    write_records,
)

READY = "ready"
START_TIMEOUT = 60.0  # spawning Python and importing aiohttp on a loaded 2-core machine


class CountersFile:
    """The child's latest counters snapshot, read on demand (the `counters` of LoadThread)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def snapshot(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):  # not written yet, or the parent's rare read mid-replace
            return {"sent": 0, "ok": 0, "failed": 0, "in_flight": 0}


class LoadProcess:
    """Runs a LoadGenerator in a child Python process; same use as LoadThread."""

    def __init__(
        self,
        targets: list[Target],
        config: LoadConfig | None = None,
        *,
        mode: str = "split",
        snapshot_interval: float = 1.0,
        nice: int = 0,
    ) -> None:
        """``nice`` < 0 runs the child ahead of the system under test (needs root or
        CAP_SYS_NICE; without it the child runs at the default priority, and ``priority``
        says so): a client on a machine of its own, whose schedule does not slip when the
        machine under test saturates its cores."""
        LoadGenerator(targets, config, mode=mode)  # validates the arguments here, not in the child
        self.nice = nice
        self.priority: int | None = None  # the child's nice value once it started
        self.config = config or LoadConfig()
        self._dir = Path(tempfile.mkdtemp(prefix="load-process-"))
        self._spec = {
            "targets": [asdict(t) for t in targets],
            "config": asdict(self.config),
            "mode": mode,
            "snapshot_interval": snapshot_interval,
            "dir": str(self._dir),
        }
        self.counters = CountersFile(self._dir / "counters.json")
        self.records: list[RequestRecord] = []
        self.child_cpu_seconds: float | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> LoadProcess:
        """Start the child and return once it issues requests."""
        self._stderr = open(self._dir / "stderr.txt", "w+")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "wso2_sandbox.load_process", json.dumps(self._spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        if self.nice:
            with contextlib.suppress(PermissionError):
                os.setpriority(os.PRIO_PROCESS, self._proc.pid, self.nice)
        self.priority = os.getpriority(os.PRIO_PROCESS, self._proc.pid)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT)
        line = self._proc.stdout.readline().strip() if ready else ""
        if line != READY:
            late = self._proc.poll() is None
            self._proc.kill()
            self._proc.wait()
            why = f"not ready within {START_TIMEOUT:.0f}s" if late else self._failure()
            self.close()
            raise RuntimeError(f"load process did not start: {why}")
        return self

    def set_vip(self, name: str) -> None:
        self._command(f"vip {name}")

    def stop(self, timeout: float | None = None) -> list[RequestRecord]:
        """Stop issuing, wait for the in-flight requests (bounded) and return all records."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("load process was never started")
        self._command("stop")
        bound = self.config.request_timeout + 30 if timeout is None else timeout
        try:
            proc.wait(bound)
        except subprocess.TimeoutExpired:
            self.close()
            raise TimeoutError(f"load process did not finish within {bound:.0f}s") from None
        try:
            if proc.returncode != 0:
                raise RuntimeError(f"load process crashed: {self._failure()}")
            self.records = self._collect()
        finally:
            self.close()
        return self.records

    def close(self) -> None:
        """Kill the child if it still runs (its caller failed before stop()); idempotent."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe:
                    pipe.close()
        if self._stderr:
            self._stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LoadProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _command(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
            if line == "stop":
                self._proc.stdin.close()
        except (BrokenPipeError, ValueError):  # exited already (or closed): stop() reports why
            pass

    def _failure(self) -> str:
        assert self._proc is not None
        rc = self._proc.returncode
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
        err = ""
        if self._stderr:
            self._stderr.seek(0)
            err = self._stderr.read()[-3000:].strip()
        return f"{how}; stderr: {err or '(empty)'}"

    def _collect(self) -> list[RequestRecord]:
        done = json.loads((self._dir / "done.json").read_text())
        records = read_records(self._dir / "records.jsonl")
        self.child_cpu_seconds = done["cpu_seconds"]
        # Every scheduled request has exactly one record, or the figures would lie.
        if sorted(r.seq for r in records) != list(range(done["issued"])):
            raise RuntimeError(
                f"load process returned {len(records)} records for {done['issued']} requests"
            )
        return records


# --------------------------------------------------------------------- the child


async def _child(spec: dict[str, Any]) -> LoadGenerator:
    cfg = spec["config"]
    config = LoadConfig(**{**cfg, "long_ms": tuple(cfg["long_ms"])})
    gen = LoadGenerator([Target(**t) for t in spec["targets"]], config, mode=spec["mode"])
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()
    pending = b""

    def on_command() -> None:
        nonlocal pending
        data = os.read(stdin, 4096)
        if not data:  # EOF: the parent is gone or done
            loop.remove_reader(stdin)
            gen.stop()
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            cmd, _, arg = raw.decode().strip().partition(" ")
            if cmd == "stop":
                gen.stop()
            elif cmd == "vip":
                gen.set_vip(arg)

    loop.add_reader(stdin, on_command)
    counters = Path(spec["dir"]) / "counters.json"

    async def publish() -> None:
        while True:
            tmp = counters.with_suffix(".tmp")
            tmp.write_text(json.dumps(gen.counters.snapshot()))
            os.replace(tmp, counters)  # the parent never reads half a file
            await asyncio.sleep(spec["snapshot_interval"])

    publisher = asyncio.create_task(publish())
    run = asyncio.create_task(gen.run())
    await asyncio.sleep(0)  # the generator has taken its t0 and the session is opening
    print(READY, flush=True)
    try:
        await asyncio.wait({run, publisher}, return_when=asyncio.FIRST_COMPLETED)
        if publisher.done():  # it only ends by failing: finish the requests, then crash
            gen.stop()
            await run
            publisher.result()
        await run
    finally:
        publisher.cancel()
        loop.remove_reader(stdin)
    return gen


def child_main(spec: dict[str, Any]) -> int:
    gen = asyncio.run(_child(spec))
    out = Path(spec["dir"])
    write_records(out / "records.jsonl", gen.records)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    done = {"issued": gen.issued, "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)}
    (out / "done.json").write_text(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(json.loads(sys.argv[1])))

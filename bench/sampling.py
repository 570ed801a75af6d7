"""The LB sampler: `show stat` on every LB's admin socket, the ground truth for rotation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wso2_sandbox.fleet_handles import LBHandle

SAMPLE_INTERVAL = 0.1


@dataclass
class Sample:
    t: float
    # lb -> server -> (status, check_status, scur); an LB that did not answer is absent
    lbs: dict[str, dict[str, tuple[str, str, int]]]


def out_of_rotation(sample: Sample) -> set[str]:
    """Nodes not UP on at least one LB ("UP 1/2", still taking traffic, counts as UP)."""
    return {
        server
        for servers in sample.lbs.values()
        for server, (status, _check, _scur) in servers.items()
        if not status.startswith("UP")
    }


def admin_out(sample: Sample) -> set[str]:
    """Nodes that a tool took out (DRAIN or MAINT) on at least one LB."""
    return {
        server
        for servers in sample.lbs.values()
        for server, (status, _check, _scur) in servers.items()
        if status.startswith(("DRAIN", "MAINT"))
    }


def all_serving(sample: Sample, lb_count: int) -> bool:
    """Every LB answered and has every server plainly UP after a passed check."""
    return len(sample.lbs) == lb_count and all(
        status == "UP" and check.lstrip("* ") == "L7OK"
        for servers in sample.lbs.values()
        for status, check, _scur in servers.values()
    )


class LBSampler:
    """`show stat` on every LB's local admin socket every `interval` seconds, in a thread."""

    def __init__(self, lbs: Sequence[LBHandle], interval: float = SAMPLE_INTERVAL) -> None:
        self.lbs = list(lbs)
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lb-sampler", daemon=True)

    def __enter__(self) -> LBSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            t = time.time()
            snap: dict[str, dict[str, tuple[str, str, int]]] = {}
            for lb in self.lbs:
                try:
                    rows = lb.servers()
                except Exception:  # an LB that does not answer is absent from this sample
                    self.errors += 1
                    continue
                snap[lb.name] = {
                    name: (r.get("status", ""), r.get("check_status", ""), _int(r.get("scur")))
                    for name, r in rows.items()
                }
            self.samples.append(Sample(t, snap))
            # A fixed schedule, so a slow sample does not stretch the grid.
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def wait(self, pred: Callable[[Sample], bool], timeout: float, after: float = 0.0) -> Sample:
        """The first sample taken at or after `after` (Unix time) that satisfies `pred`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for s in self.samples[seen:]:
                if s.t >= after and pred(s):
                    return s
            seen = len(self.samples)
            time.sleep(self.interval / 2)
        raise TimeoutError(f"LB state not reached within {timeout:.0f}s: {self.latest()}")


def _int(v: object) -> int:
    try:
        return int(str(v))
    except ValueError:
        return 0

"""From a run's LB samples, request records and node events to its result (and back from disk).

Physical limit. What no tool can beat with this fleet and this load, node by node:
  drain    the requests the node held when it first left rotation (first sample not UP) must
           finish: max(end) - drain_begin over the requests that node answered and that were in
           flight at drain_begin (0 if none). Requests that were cut carry no X-Node and so count
           for no node; for the seed (which cuts them) the drain term is therefore an underestimate.
  install  install_end - install_start          (the node's own events.jsonl)
  boot     ready - start                        (the node's own events.jsonl)
  see it   one HAProxy check interval (inter 500ms) for the LB to notice the node is ready
The limit is the sum over nodes (maxUnavailable 1: nothing may overlap). overhead = rollout wall
time / physical limit.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.profiles import PROFILES, RUN_KINDS, TO_VERSION, RunOptions, RunResult
from bench.sampling import LBSampler, Sample, admin_out, out_of_rotation
from wso2_sandbox.fleet import Fleet
from wso2_sandbox.load import RequestRecord, summarize

# HAProxy's `inter 500ms` on every server line (wso2_sandbox.fleet_files.haproxy_config): the
# least time an LB needs to see that a node answers its check.
CHECK_INTERVAL = 0.5


def first_event(
    events: list[dict[str, Any]], kind: str, after: float, version: str | None = None
) -> float | None:
    for e in events:
        if (
            e.get("event") == kind
            and e["t"] >= after
            and (version is None or e["version"] == version)
        ):
            return e["t"]
    return None


def analyze(
    *,
    t0: float,
    samples: Sequence[Sample],
    records: Sequence[RequestRecord],
    events: dict[str, list[dict[str, Any]]],
    version: str = TO_VERSION,
) -> dict[str, Any]:
    """Rollout wall time, rotation facts, physical limit and a per-node timeline (module doc).

    A node's own update is the window from its first DRAIN/MAINT after t0 (drain_begin) to the
    first sample, once it is ready at `version`, where it is UP on every LB (back_up). A node
    that goes DOWN on its health check outside that window is a "flap": the run did not cause
    it (on this machine: CPU starvation makes /health miss HAProxy's 500 ms check timeout), but
    it still counts as out of rotation.
    """
    post = [s for s in samples if s.t >= t0]
    lb_count = max((len(s.lbs) for s in post), default=0)
    drain_begin: dict[str, float] = {}
    for s in post:
        for n in admin_out(s):
            drain_begin.setdefault(n, s.t)
    first_out = min(drain_begin.values(), default=None)
    back_up: dict[str, float] = {}
    for name, ev in events.items():
        rd = first_event(ev, "ready", t0, version)
        db = drain_begin.get(name)
        if rd is None or db is None:
            continue
        back_up_t = next(
            (
                s.t
                for s in post
                if s.t >= max(rd, db) and len(s.lbs) == lb_count and name not in out_of_rotation(s)
            ),
            None,
        )
        if back_up_t is not None:
            back_up[name] = back_up_t
    end = max(back_up.values()) if events and len(back_up) == len(events) else None
    window = [s for s in post if end is None or s.t <= end]
    max_out = max((len(out_of_rotation(s)) for s in window), default=0)
    max_admin_out = max((len(admin_out(s)) for s in window), default=0)
    flaps: dict[str, int] = {}
    prev: set[str] = set()
    for s in post:
        down = out_of_rotation(s) - admin_out(s)
        for n in down - prev:
            own = drain_begin.get(n, float("inf")) <= s.t <= back_up.get(n, float("inf"))
            if not own:
                flaps[n] = flaps.get(n, 0) + 1
        prev = down

    by_node: dict[str, list[RequestRecord]] = {}
    for r in records:
        if r.ok and r.node:
            by_node.setdefault(r.node, []).append(r)

    nodes: list[dict[str, Any]] = []
    limit = 0.0
    cursor = t0
    for name in sorted(events, key=lambda n: drain_begin.get(n, float("inf"))):
        ev = events[name]
        db = drain_begin.get(name)
        stop = first_event(ev, "stop", t0)
        i0 = first_event(ev, "install_start", t0, version)
        i1 = first_event(ev, "install_end", t0, version)
        st = first_event(ev, "start", t0, version)
        po = first_event(ev, "port_open", t0, version)
        rd = first_event(ev, "ready", t0, version)
        up = back_up.get(name)
        served = by_node.get(name, [])
        row: dict[str, Any] = {"node": name}
        if db is None or None in (stop, i0, i1, st, rd):
            row["incomplete"] = True
            nodes.append(row)
            continue
        assert stop is not None and i0 is not None and i1 is not None
        assert st is not None and rd is not None
        in_flight = [r.end for r in served if r.start <= db < r.end]
        drain = max(0.0, max(in_flight, default=db) - db)
        # The old process's last answer (the new one answers under the same name).
        last_served = max((r.end for r in served if r.end <= stop), default=db)
        phys = drain + (i1 - i0) + (rd - st) + CHECK_INTERVAL
        limit += phys
        drained_at = max(db, last_served)
        row.update(
            physical={
                "drain": round(drain, 3),
                "install": round(i1 - i0, 3),
                "boot": round(rd - st, 3),
                "see_it": CHECK_INTERVAL,
                "total": round(phys, 3),
            },
            # Where the wall time went, from the previous node's return (or t0) to this one's.
            timeline={
                "lead": round(db - cursor, 3),  # decision / previous soak until first out
                "drain": round(drained_at - db, 3),  # until its last answered request ended
                "to_stop": round(stop - drained_at, 3),
                "stop_to_install": round(i0 - stop, 3),
                "install": round(i1 - i0, 3),
                "install_to_start": round(st - i1, 3),
                "boot": round(rd - st, 3),
                "ready_to_up": round(up - rd, 3) if up is not None else None,
            },
            times={
                "drain_begin": db,
                "last_served": last_served,
                "stop": stop,
                "install_start": i0,
                "install_end": i1,
                "start": st,
                "port_open": po,
                "ready": rd,
                "back_up": up,
            },
            in_flight_at_drain=len(in_flight),
        )
        nodes.append(row)
        if up is not None:
            cursor = up
    rollout = None if end is None else end - t0
    return {
        "rollout_seconds": None if rollout is None else round(rollout, 3),
        "decision_latency_seconds": None if first_out is None else round(first_out - t0, 3),
        "max_nodes_out": max_out,
        "max_nodes_admin_out": max_admin_out,
        "health_flaps": flaps,
        "physical_limit_seconds": round(limit, 3) if limit else None,
        "overhead": round(rollout / limit, 3) if rollout and limit else None,
        "nodes": nodes,
    }


def _taken_out(sample: Sample, node: str, lb_count: int) -> bool:
    """A tool took `node` out on every LB (DRAIN or MAINT): no new request reaches it."""
    return len(sample.lbs) == lb_count and all(
        servers.get(node, ("",))[0].startswith(("DRAIN", "MAINT"))
        for servers in sample.lbs.values()
    )


def bad_release_figures(
    *,
    t0: float,
    samples: Sequence[Sample],
    records: Sequence[RequestRecord],
    events: dict[str, list[dict[str, Any]]],
    version: str = TO_VERSION,
    window: float | None = None,
) -> dict[str, Any]:
    """What a bad build cost: failed requests, who served it, and for how long.

    `window` (seconds after t0): also count the requests sent up to t0 + window, the same span
    for every run of a bench whatever its own length (the profile's observe_seconds).

    A node served `version` when an answer carried its X-Node and X-Version `version` (errors of
    the bad build carry both). Its exposure runs from its first such answer to its removal: the
    first LB sample after that where it is DRAIN or MAINT on every LB. A node never taken out
    has no removal; its exposure is then up to its last answer at `version`, i.e. the end of the
    observed window, and `removed` is false. Times are seconds after t0.
    """
    lb_count = max((len(s.lbs) for s in samples), default=0)
    failed = [r for r in records if not r.ok]
    answers: dict[str, list[RequestRecord]] = {}
    for r in records:
        if r.version == version and r.node:
            answers.setdefault(r.node, []).append(r)
    nodes: dict[str, dict[str, Any]] = {}
    for node, rs in sorted(answers.items()):
        first = min(r.end for r in rs)
        last = max(r.end for r in rs)
        removed = next(
            (s.t for s in samples if s.t >= first and _taken_out(s, node, lb_count)), None
        )
        nodes[node] = {
            "first_answer": round(first - t0, 3),
            "removed": None if removed is None else round(removed - t0, 3),
            "last_answer": round(last - t0, 3),
            "exposure_seconds": round((removed if removed is not None else last) - first, 3),
            "answers": len(rs),
            "failed": sum(not r.ok for r in rs),
        }
    first_node = min(nodes, key=lambda n: nodes[n]["first_answer"], default=None)
    starts = [r.start for r in records]
    span = max(starts) - min(starts) if starts else 0.0
    return {
        "version": version,
        "requests": len(records),
        "rate": round(len(records) / span, 1) if span else None,  # measured, for the bound
        "failed": len(failed),
        "failed_at_version": sum(r.version == version for r in failed),
        # HAProxy's own 502/503, cut connections: no build answered them.
        "failed_no_version": sum(r.version is None for r in failed),
        "window": window,
        "requests_in_window": None
        if window is None
        else sum(r.start <= t0 + window for r in records),
        "failed_in_window": None if window is None else sum(r.start <= t0 + window for r in failed),
        "nodes_served": sorted(nodes),
        # From the nodes' own event logs: every node that came up ready at `version`.
        "nodes_ran": sorted(n for n, ev in events.items() if first_event(ev, "ready", t0, version)),
        "first_node": first_node,
        "first_node_exposure_seconds": nodes[first_node]["exposure_seconds"]
        if first_node
        else None,
        "first_node_removed": first_node is not None and nodes[first_node]["removed"] is not None,
        "nodes": nodes,
    }


def finish_run(
    result: RunResult,
    *,
    t0: float,
    fleet: Fleet,
    sampler: LBSampler,
    records: list[RequestRecord],
    opts: RunOptions,
    bad_version: str | None = None,
    window: float | None = None,
) -> RunResult:
    """The run's figures from its samples, records and node events; artifacts to disk.

    `bad_version`: the build the profile made faulty; its figures go to extra["bad_release"],
    with failures also counted up to t0 + `window`.
    """
    events = {n.name: n.events() for n in fleet.nodes}
    a = analyze(t0=t0, samples=sampler.samples, records=records, events=events)
    load = summarize(records)
    result = replace(
        result,
        rollout_seconds=a["rollout_seconds"],
        decision_latency_seconds=a["decision_latency_seconds"],
        max_nodes_out=a["max_nodes_out"],
        max_nodes_admin_out=a["max_nodes_admin_out"],
        health_flaps=a["health_flaps"],
        physical_limit_seconds=a["physical_limit_seconds"],
        overhead=a["overhead"],
        nodes=a["nodes"],
        requests_total=load["total"],
        requests_failed=load["failed"],
        long_cut=load["long_cut"],
        load=load,
        versions={n.name: n.installed_version() for n in fleet.nodes},
    )
    result.extra["t0"] = t0
    result.extra["sampler_errors"] = sampler.errors
    if bad_version is not None:
        result.extra["bad_release"] = bad_release_figures(
            t0=t0,
            samples=sampler.samples,
            records=records,
            events=events,
            version=bad_version,
            window=window,
        )
    if opts.artifacts is not None:
        d = opts.artifacts
        d.mkdir(parents=True, exist_ok=True)
        with gzip.open(d / "records.jsonl.gz", "wt") as f:
            for r in records:
                f.write(json.dumps(r.as_dict()) + "\n")
        with gzip.open(d / "lb-samples.jsonl.gz", "wt") as f:
            for s in sampler.samples:
                f.write(json.dumps({"t": s.t, "lbs": s.lbs}) + "\n")
        (d / "node-events.json").write_text(json.dumps(events, indent=1))
        (d / "result.json").write_text(json.dumps(result.as_json(), indent=1))
    return result


def reanalyze(root: Path) -> list[RunResult]:
    """Recompute every run's result from the artifacts a bench left in `root` (no new runs)."""
    out = []
    for d in sorted(p for p in root.iterdir() if (p / "result.json").exists()):
        saved = json.loads((d / "result.json").read_text())
        t0 = saved["extra"]["t0"]
        with gzip.open(d / "records.jsonl.gz", "rt") as f:
            records = [RequestRecord.from_dict(json.loads(ln)) for ln in f]
        with gzip.open(d / "lb-samples.jsonl.gz", "rt") as f:
            samples = [
                Sample(
                    x["t"],
                    {
                        lb: {n: (v[0], v[1], int(v[2])) for n, v in servers.items()}
                        for lb, servers in x["lbs"].items()
                    },
                )
                for x in map(json.loads, f)
            ]
        events = json.loads((d / "node-events.json").read_text())
        a = analyze(t0=t0, samples=samples, records=records, events=events)
        fields = set(RunResult.__dataclass_fields__)
        r = RunResult(**{k: v for k, v in saved.items() if k in fields})
        for k, v in a.items():
            setattr(r, k, v)
        if bad := saved["extra"].get("bad_release"):
            profile = PROFILES.get(r.profile)
            r.extra["bad_release"] = bad_release_figures(
                t0=t0,
                samples=samples,
                records=records,
                events=events,
                version=bad["version"],
                window=bad.get("window") or (profile.observe_seconds if profile else None),
            )
        out.append(r)
    order = {(p, k): i for i, (p, k) in enumerate((p, k) for p in PROFILES for k in RUN_KINDS)}
    return sorted(out, key=lambda r: order.get((r.profile, r.name), 99))

"""The markdown report: results table, per-node breakdown, operator steps, targets, machine."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.paths import ANSIBLE_PLAYBOOK, REPO
from bench.profiles import FROM_VERSION, PROFILES, RunResult


def machine_info() -> dict[str, Any]:
    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except OSError as e:
            return f"unavailable ({e})"
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr) else ""

    model = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else ""
    mem = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB" if m else ""
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(REPO), "status", "--porcelain", "operator/wso2_operator"])
    return {
        "git_commit": commit + (" (operator/ has local changes)" if dirty else ""),
        "nproc": os.cpu_count(),
        "model_name": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "haproxy": first_line(["haproxy", "-v"]),
        "openssh": first_line(["ssh", "-V"]),
        "ansible": first_line([ANSIBLE_PLAYBOOK, "--version"]),
        "loadavg_at_start": os.getloadavg(),
    }


def fmt_seconds(v: float | None, unit: str = " s", digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}{unit}"


def table(results: Sequence[RunResult]) -> str:
    head = (
        "| run | profile | rollout wall time | requests total/failed | long requests cut "
        "| max nodes out of rotation | decision → first drain | overhead vs physical limit "
        "| peak RSS | LB check flaps |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in results:
        if r.error and r.rollout_seconds is None:
            lines.append(f"| {r.name} | {r.profile} | FAILED: {r.error[:60]} ||||||||")
            continue
        over = (
            f"{r.overhead:.2f}x of {r.physical_limit_seconds:.1f} s"
            if r.overhead and r.physical_limit_seconds
            else "—"
        )
        rss = "—"
        if r.peak_rss_kib:
            rss = f"{r.peak_rss_kib / 1024:.0f} MiB" + (
                "" if r.name.startswith("operator") else " (ansible)"
            )
        lines.append(
            f"| {r.name} | {r.profile} | {fmt_seconds(r.rollout_seconds)} "
            f"| {r.requests_total}/{r.requests_failed} "
            f"| {r.long_cut} of {r.load.get('long_total', 0)} | {r.max_nodes_out} "
            f"| {fmt_seconds(r.decision_latency_seconds)} | {over} | {rss} | {_flaps(r)} |"
        )
    return "\n".join(lines)


def _flaps(r: RunResult) -> str:
    """Health-check DOWNs of nodes outside their own update (not the tool's doing)."""
    total = sum(r.health_flaps.values())
    if not total:
        return "0"
    return f"{total} ({', '.join(f'{n} x{c}' for n, c in sorted(r.health_flaps.items()))})"


def breakdown(results: Sequence[RunResult]) -> str:
    """Per node: where the wall time went (seconds), next to the physical terms."""
    cols = [
        "lead", "drain", "to_stop", "stop_to_install", "install", "install_to_start", "boot",
        "ready_to_up",
    ]  # fmt: skip
    lines = [
        "| run | profile | node | " + " | ".join(cols) + " | physical (drain+install+boot+0.5) |",
        "|" + "---|" * (len(cols) + 4),
    ]
    for r in results:
        for n in r.nodes:
            if n.get("incomplete"):
                lines.append(f"| {r.name} | {r.profile} | {n['node']} | (incomplete) |")
                continue
            tl, ph = n["timeline"], n["physical"]
            cells = " | ".join("—" if tl[c] is None else f"{tl[c]:.2f}" for c in cols)
            lines.append(
                f"| {r.name} | {r.profile} | {n['node']} | {cells} | {ph['drain']:.2f}+"
                f"{ph['install']:.2f}+{ph['boot']:.2f}+0.5 = {ph['total']:.2f} |"
            )
    return "\n".join(lines)


def operator_steps(results: Sequence[RunResult]) -> str:
    """The operator's own step timings (its Prometheus histograms): total seconds / count."""
    runs = [r for r in results if r.extra.get("operator_metrics")]
    if not runs:
        return ""
    keys = sorted({k for r in runs for k in r.extra["operator_metrics"] if k.endswith(":ok")})
    lines = [
        "| run | profile | " + " | ".join(k.rsplit(":", 1)[0] for k in keys) + " |",
        "|" + "---|" * (len(keys) + 2),
    ]
    for r in runs:
        m = r.extra["operator_metrics"]
        cells = []
        for k in keys:
            v = m.get(k, {})
            cells.append(f"{v.get('sum', 0):.2f} s / {v.get('count', 0):.0f}" if v else "—")
        lines.append(f"| {r.name} | {r.profile} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bad_release_table(results: Sequence[RunResult]) -> str:
    """Per run of a faulty profile: what the bad build cost (analysis.bad_release_figures)."""
    runs = [r for r in results if r.extra.get("bad_release")]
    if not runs:
        return ""
    lines = [
        "| run | profile | outcome | requests total/failed | sent in the first W s after t0: "
        "total/failed | failed: by the bad build / no answer "
        "| nodes that served it (records / own events) | first bad node: first bad answer → "
        "out of rotation on every LB | its last bad answer | load avg before→after |",
        "|" + "---|" * 10,
    ]
    for r in runs:
        b = r.extra["bad_release"]
        first = b["nodes"].get(b["first_node"] or "", {})
        if not first:
            exposure = "—"
        elif first["removed"] is not None:
            exposure = f"{b['first_node']}: {first['exposure_seconds']:.1f} s"
        else:
            exposure = (
                f"{b['first_node']}: never ({first['exposure_seconds']:.1f} s, until the end)"
            )
        outcome = r.extra.get("outcome") or (
            "play ended" if r.extra.get("ansible_rc") == 0 else r.error or "?"
        )
        win = "—"
        if b.get("window") is not None:
            win = f"W={b['window']:g}: {b['requests_in_window']}/{b['failed_in_window']}"
        lines.append(
            f"| {r.name} | {r.profile} | {outcome} | {b['requests']}/{b['failed']} | {win} "
            f"| {b['failed_at_version']} / {b['failed_no_version']} "
            f"| {len(b['nodes_served'])} / {len(b['nodes_ran'])} | {exposure} "
            f"| {fmt_seconds(first.get('last_answer'))} after t0 "
            f"| {r.extra.get('loadavg_1m_before', '?')}→{r.extra.get('loadavg_1m_after', '?')} |"
        )
    return "\n".join(lines)


def provision_per_node(r: RunResult) -> float | None:
    """Seconds a node spent provisioning: the operator's Provision step (its histogram), or for
    the seed its fact gathering and the role's tasks (profile_tasks, summed over the serial
    batches), as operator-ansible's Provision step also gathers facts; / nodes."""
    n = len(r.nodes) or None
    if not n:
        return None
    if m := r.extra.get("operator_metrics"):
        v = m.get("node_step:Provision:ok")
        return v["sum"] / n if v else None
    tasks = [
        s
        for name, s in r.extra.get("ansible_tasks") or []
        if name == "Gathering Facts" or name.startswith("wso2ei : ")
    ]
    return sum(tasks) / n if tasks else None


def _load(r: RunResult) -> str:
    return f"{r.extra.get('loadavg_1m_before', '?')}→{r.extra.get('loadavg_1m_after', '?')}"


def ansible_table(results: Sequence[RunResult]) -> str:
    """Per profile with an operator-ansible run: it next to operator and seed (same bench)."""
    profiles = [r.profile for r in results if r.name == "operator-ansible"]
    if not profiles:
        return ""
    lines = [
        "| profile | run | rollout wall time | requests total/failed | provision per node "
        "| operator-ansible rollout ÷ this | load avg before→after |",
        "|" + "---|" * 7,
    ]
    for p in profiles:
        runs = {r.name: r for r in results if r.profile == p}
        ans = runs["operator-ansible"]
        for name in ("operator", "operator-ansible", "seed"):
            r = runs.get(name)
            if r is None:
                continue
            ratio = "—"
            if r is not ans and r.rollout_seconds and ans.rollout_seconds:
                ratio = f"{ans.rollout_seconds / r.rollout_seconds:.2f}x"
            lines.append(
                f"| {p} | {name} | {fmt_seconds(r.rollout_seconds)} "
                f"| {r.requests_total}/{r.requests_failed} "
                f"| {fmt_seconds(provision_per_node(r), unit=' s', digits=2)} | {ratio} "
                f"| {_load(r)} |"
            )
    return "\n".join(lines)


def _ansible_targets(results: Sequence[RunResult]) -> list[str]:
    """Issue 10's bench check: the seed's role through provision.ansible, same fleet and load."""
    out = []
    for r in results:
        if r.name != "operator-ansible" or r.extra.get("bad_release"):
            continue
        ok = r.requests_failed == 0 and r.error is None
        out.append(
            f"[{'met' if ok else 'MISSED'}] operator-ansible, {r.profile}: "
            f"{r.requests_failed} failed requests (target 0)"
        )
        same = {o.name: o for o in results if o.profile == r.profile}
        op, seed = same.get("operator"), same.get("seed")
        mine, theirs = provision_per_node(r), op and provision_per_node(op)
        if mine is not None and theirs is not None:
            out.append(
                f"[info] operator-ansible, {r.profile}: the runner costs "
                f"{mine - theirs:+.2f} s a node (Provision step {mine:.2f} s through "
                f"ansible-runner vs {theirs:.2f} s as provision.commands)"
            )
        for o in (op, seed):
            if o and o.rollout_seconds and r.rollout_seconds:
                out.append(
                    f"[info] operator-ansible, {r.profile}: rollout {r.rollout_seconds:.1f} s = "
                    f"{r.rollout_seconds / o.rollout_seconds:.2f}x {o.name}'s "
                    f"{o.rollout_seconds:.1f} s (load {_load(r)} vs {_load(o)})"
                )
    return out


def _bad_release_targets(results: Sequence[RunResult]) -> list[str]:
    """Issue 17's check, for each operator-analysis run, against the other runs of its bench."""
    out = []
    for r in results:
        b = r.extra.get("bad_release")
        if r.name != "operator-analysis" or not b:
            continue
        interval = float(((r.extra.get("update") or {}).get("analysis") or {})["intervalSeconds"])
        served = max(len(b["nodes_served"]), len(b["nodes_ran"]))
        out.append(
            f"[{'met' if served == 1 else 'MISSED'}] operator-analysis: {served} node(s) ever "
            "ran the bad version (target 1)"
        )
        first = b["nodes"].get(b["first_node"] or "", {})
        exp = first.get("exposure_seconds") if first.get("removed") is not None else None
        out.append(
            f"[{'met' if exp is not None and exp <= 3 * interval else 'MISSED'}] "
            f"operator-analysis: bad node out of rotation {fmt_seconds(exp)} after its first "
            f"bad answer (target ≤ 3 analysis intervals = {3 * interval:g} s)"
        )
        # One node of n takes 1/n of the load; the build fails errorPercent of it, for at most
        # 3 intervals before it is out (no ramp: the node gets its full share at once).
        profile = PROFILES.get(r.profile)
        if profile and b.get("rate"):
            pct = float(profile.faults.get(b["version"], {}).get("errorPercent", 0))
            bound = b["rate"] / profile.nodes * pct / 100 * 3 * interval
            out.append(
                f"[{'met' if b['failed_at_version'] <= bound else 'MISSED'}] operator-analysis: "
                f"{b['failed_at_version']} requests failed by the bad build (bound "
                f"{b['rate']:.0f} req/s / {profile.nodes} nodes x {pct:g} % x {3 * interval:g} s "
                f"= {bound:.0f}); {b['failed_no_version']} failed with no answer (target 0)"
            )
        ok = set(r.versions.values()) == {FROM_VERSION}
        out.append(
            f"[{'met' if ok else 'MISSED'}] operator-analysis: every node back on {FROM_VERSION} "
            f"({r.extra.get('outcome', r.error)})"
        )
        for other in results:
            ob = other.extra.get("bad_release")
            if other is r or not ob or other.profile != r.profile:
                continue
            # Over the same window when there is one: runs end at different times.
            key = "failed_in_window" if b.get("window") is not None else "failed"
            mine, theirs = b[key], ob[key]
            ratio = f"{theirs / mine:.1f}x" if mine else "—"
            span = f"in the first {b['window']:g} s" if key == "failed_in_window" else "in all"
            out.append(
                f"[info] {other.name}, same fleet and load in the same bench: {theirs} failed "
                f"{span}, {len(ob['nodes_served'])} nodes served the bad version; {ratio} the "
                f"failures of operator-analysis ({mine})"
            )
    return out


def targets(results: Sequence[RunResult]) -> list[str]:
    """The issue's targets, checked honestly (reported, never asserted)."""
    out = _bad_release_targets(results) + _ansible_targets(results)
    # A faulty profile fails requests by design: the zero-downtime targets are not its question.
    ops = [r for r in results if r.name == "operator" and not r.extra.get("bad_release")]
    for r in ops:
        ok = r.requests_failed == 0 and r.error is None
        out.append(
            f"[{'met' if ok else 'MISSED'}] operator, {r.profile}: "
            f"{r.requests_failed} failed requests (target 0)"
        )
        if r.overhead is not None:
            out.append(
                f"[{'met' if r.overhead <= 1.05 else 'MISSED'}] operator, {r.profile}: overhead "
                f"{r.overhead:.3f}x physical limit (target ≤ 1.05x)"
            )
        seed = next((s for s in results if s.name == "seed" and s.profile == r.profile), None)
        if seed and seed.rollout_seconds and r.rollout_seconds:
            speedup = seed.rollout_seconds / r.rollout_seconds
            out.append(
                f"[{'met' if speedup >= 2 else 'MISSED'}] operator, {r.profile}: "
                f"{speedup:.2f}x faster than the seed as written (target ≥ 2x)"
            )
    return out


def print_report(results: Sequence[RunResult], machine: dict[str, Any]) -> None:
    print(table(results))
    print()
    print(breakdown(results))
    print()
    bad = bad_release_table(results)
    if bad:
        print("bad release (t0 = the version change; first bad answer → the node is DRAIN/MAINT):")
        print(bad)
        print()
    ans = ansible_table(results)
    if ans:
        print(
            "provision.ansible (the seed's role through ansible-runner) next to commands and "
            "the seed's play\n(provision per node: the operator's Provision step; the seed's "
            "role tasks):"
        )
        print(ans)
        print()
    steps = operator_steps(results)
    if steps:
        print("operator step time (its own histograms, total / count):")
        print(steps)
        print()
    for line in targets(results):
        print(line)
    seeds = [r for r in results if r.name.startswith("seed")]
    if seeds:
        facts = ", ".join(
            f"{r.name}/{r.profile} {r.extra.get('gather_facts_seconds', 0):.1f}s" for r in seeds
        )
        print(f"gather_facts cost (sum over the 3 serial batches): {facts}")
    loads = ", ".join(f"{r.name}/{r.profile} {_load(r)}" for r in results)
    print(f"1-min load average before→after each run (nproc {machine.get('nproc')}): {loads}")
    print(
        f"\nmachine: {machine.get('nproc')} x {machine.get('model_name')}, "
        f"{machine.get('memory')}; python {machine.get('python')}; {machine.get('haproxy')}; "
        f"{machine.get('openssh')}; {machine.get('ansible')}"
    )

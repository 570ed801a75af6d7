"""Zero-downtime proof and speed benchmark: the operator against the seed's own Ansible play.

    python -m bench.run                     # 3 profiles x (operator, seed, seed-delay0)
    python -m bench.run --profiles default --runs operator,seed
    python -m bench.run --profiles bad-release   # seed, operator, operator-analysis
    python -m bench.run --profiles ansible       # operator, operator-ansible, seed

Every run gets a fresh local fleet (3 sshd "VM" nodes, 2 HAProxy LBs; wso2_sandbox.fleet) under the
same constant load (wso2_sandbox.load) and makes the same change, 1.0.0 -> 2.0.0:

- operator: a WSO2Cluster in a fresh namespace of one local control plane, the operator as a
  process (`python -m wso2_operator --standalone -n NS`), then a patch of spec.version;
- seed: bench/seed/rolling-update.yml, the blog's play step for step (serial: 1,
  community.general.haproxy disabled/enabled with wait, wait_for port 8243 with delay 20);
- seed-delay0: the same play with the wait_for delay set to 0;
- operator-analysis: the operator with canary steps, analysis and failurePolicy Rollback
  (profiles.ANALYSIS_UPDATE), for the bad-release profile, whose 2.0.0 fails 10 % of requests;
- operator-ansible: the operator with spec.provision.ansible running the seed's own role
  (bench/seed/roles) from a ConfigMap through ansible-runner (profiles.ANSIBLE_PROVISION), for
  the ansible profile.

A sampler reads `show stat` on both LBs' admin sockets every 100 ms for the whole run; it is the
ground truth for "out of rotation" (a node not UP on at least one LB), for when the rollout ended
(the last node back UP on both LBs) and for the decision latency (first node out after t0). t0 is
the moment the version patch is sent, or the moment ansible-playbook is started.

The physical limit and the overhead against it are defined in bench/analysis.py.

Results: a markdown table on stdout, bench/results/latest.json (git-ignored), and per-run
artifacts (request records, LB samples, node events, operator / Ansible logs) under
bench/results/last/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

from bench.analysis import reanalyze
from bench.kube import Kube
from bench.paths import ANSIBLE_PLAYBOOK, RESULTS_DIR
from bench.profiles import (
    ANALYSIS_UPDATE,
    ANSIBLE_PROVISION,
    DEFAULT_PROFILES,
    PROFILES,
    RUN_KINDS,
    RunOptions,
    RunResult,
)
from bench.report import fmt_seconds, machine_info, print_report, targets
from bench.runs import run_operator, run_seed
from wso2_sandbox.fleet import Fleet


def _parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def _settle(max_load: float, timeout: float) -> float:
    """Wait (bounded) for the 1-min load average to drop to `max_load`; returns the last value.

    The fleet's health checks time out at 500 ms: on a starved machine in-service nodes flap
    DOWN, which says nothing about the tool under test.
    """
    deadline = time.monotonic() + timeout
    while (load := os.getloadavg()[0]) > max_load and time.monotonic() < deadline:
        time.sleep(2)
    return load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--profiles",
        default=",".join(DEFAULT_PROFILES),
        help=f"comma-separated, from {', '.join(PROFILES)}",
    )
    ap.add_argument(
        "--runs", help="comma-separated (default: each profile's own run kinds, bench/README.md)"
    )
    ap.add_argument("--rate", type=float, help="requests per second (default per profile: 200)")
    ap.add_argument("--warmup", type=float, default=RunOptions.warmup)
    ap.add_argument("--tail", type=float, default=RunOptions.tail)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json")
    ap.add_argument(
        "--pyinstrument", action="store_true", help="profile the operator (report in artifacts)"
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="before each run, wait up to this many seconds for the load average to fall to "
        "--max-load (0: do not wait)",
    )
    ap.add_argument("--max-load", type=float, default=float(os.cpu_count() or 1))
    ap.add_argument(
        "--reanalyze", type=Path, help="recompute the report from a bench's artifacts directory"
    )
    a = ap.parse_args(argv)
    if a.reanalyze:
        saved = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads((a.reanalyze / "latest.json").read_text())
        print_report(reanalyze(a.reanalyze), saved.get("machine") or machine_info())
        return 0
    profiles = _parse_list(a.profiles, PROFILES, "profile")
    chosen = _parse_list(a.runs, RUN_KINDS, "run") if a.runs else None
    plan = [(p, r) for p in profiles for r in (chosen or PROFILES[p].runs)]
    runs = {r for _, r in plan}
    needs_ansible = any(r.startswith("seed") or r == "operator-ansible" for r in runs)
    if needs_ansible and not Path(ANSIBLE_PLAYBOOK).exists():
        raise SystemExit(f"{ANSIBLE_PLAYBOOK} missing: pip install -e '.[bench]'")

    started = time.time()
    machine = machine_info()
    print("machine:", json.dumps(machine, indent=1), flush=True)
    artifacts_root = RESULTS_DIR / "last"
    shutil.rmtree(artifacts_root, ignore_errors=True)
    results: list[RunResult] = []
    with contextlib.ExitStack() as stack:
        kube: Kube | None = None
        if any(r.startswith("operator") for r in runs):
            from wso2_sandbox.controlplane import ControlPlane

            cp_dir = Path(tempfile.mkdtemp(prefix="bench-cp-"))
            stack.callback(shutil.rmtree, cp_dir, True)
            t = time.monotonic()
            cp = stack.enter_context(ControlPlane(workdir=cp_dir))
            assert cp.kubeconfig is not None
            kube = Kube(cp.kubeconfig)
            stack.callback(kube.close)
            kube.install_crd()
            print(f"control plane up in {time.monotonic() - t:.1f}s", flush=True)
        for pname, run in plan:
            profile = PROFILES[pname]
            if a.rate:
                profile = replace(profile, rate=a.rate)
            opts = RunOptions(
                warmup=a.warmup,
                tail=a.tail,
                artifacts=artifacts_root / f"{pname}-{run}",
                pyinstrument=a.pyinstrument and run == "operator",
            )
            # Other work on this 2-core machine skews every number: let it settle (bounded)
            # and record how busy it was.
            load_before = _settle(a.max_load, a.settle) if a.settle else os.getloadavg()[0]
            t = time.monotonic()
            print(f"--- {run} / {pname} (load average {load_before:.1f}) ...", flush=True)
            try:
                with Fleet(profile.fleet_config()) as fleet:
                    if run.startswith("operator"):
                        assert kube is not None
                        r = run_operator(
                            kube,
                            fleet,
                            profile,
                            opts,
                            name=run,
                            update=ANALYSIS_UPDATE if run == "operator-analysis" else None,
                            provision=ANSIBLE_PROVISION if run == "operator-ansible" else None,
                        )
                    else:
                        delay = 0 if run == "seed-delay0" else 20
                        r = run_seed(fleet, profile, opts, delay=delay, name=run)
            except Exception as e:  # one broken run must not lose the others
                r = RunResult(name=run, profile=pname, error=f"{type(e).__name__}: {e}")
                print(f"    run failed: {r.error}", flush=True)
            r.extra["loadavg_1m_before"] = round(load_before, 2)
            r.extra["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            results.append(r)
            print(
                f"    {run}/{pname}: rollout {fmt_seconds(r.rollout_seconds)}, "
                f"{r.requests_failed}/{r.requests_total} failed, max out {r.max_nodes_out}, "
                f"overhead {r.overhead}, run took {time.monotonic() - t:.0f}s",
                flush=True,
            )
            if b := r.extra.get("bad_release"):
                print(
                    f"    bad {b['version']}: served by {', '.join(b['nodes_served']) or '-'}, "
                    f"{b['failed_at_version']} failed by it, first bad node out after "
                    f"{b['first_node_exposure_seconds']} s (removed: {b['first_node_removed']})",
                    flush=True,
                )
    report = {
        "runs": [r.as_json() for r in results],
        "machine": machine,
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "duration_seconds": round(time.time() - started, 1),
        "argv": sys.argv[1:] if argv is None else argv,
        "profiles": {p: asdict(PROFILES[p]) for p in profiles},
        "targets": targets(results),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    # The artifacts carry their own summary, so --reanalyze can rebuild this report later.
    with contextlib.suppress(OSError):
        (artifacts_root / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    print()
    print_report(results, machine)
    print(f"wrote {a.out} in {report['duration_seconds']:.0f}s total")
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make demo SCENARIO=gitops` end to end, as CI runs it (a pipe, not a terminal): the bump is a
commit that a real Argo CD syncs; the Application goes Progressing, then Healthy; nothing is left
running afterwards, Argo CD's processes included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.test_demo import assert_nothing_left, demo_dir, recorded_pids, run_demo

pytestmark = pytest.mark.e2e
__all__ = ["demo_dir"]  # the fixture, shared with test_demo.py


@pytest.mark.timeout(400)
def test_gitops_demo_commits_argocd_syncs_and_tears_down(demo_dir: Path) -> None:
    proc = run_demo(demo_dir, "--scenario", "gitops", timeout=360)
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:]
    # Argo CD synced the CRDs' wave before the WSO2Cluster's on the fresh cluster.
    m = re.search(
        r"Application wso2ei synced \w+: CRD wso2clusters.vmops.dev created (\S+) \(wave -10\),"
        r" then WSO2Cluster wso2ei (\S+) \(wave 0\)",
        out,
    )
    assert m and m.group(1) < m.group(2), out[-4000:]
    # The live lines: the Application at the commit, Progressing, then Healthy.
    assert re.search(r"Application sync Synced \(\w+ = the commit\)  health Progressing", out), out
    assert re.search(r"Application sync Synced \(\w+ = the commit\)  health Healthy", out), out
    assert re.search(
        r"Argo CD: commit to Synced \d+\.\d s, commit to Healthy \d+\.\d s;"
        r" Progressing while the nodes rolled$",
        out,
        re.M,
    ), out[-4000:]
    assert re.search(r"^\s+requests: \d+ sent, \d+ served, 0 failed$", out, re.M), out[-3000:]
    assert "$ argocd app get wso2ei" in out and re.search(r"Health Status:\s+Healthy", out), out
    assert "torn down: operator, argocd, fleet, control plane" in out
    assert {"argocd.redis", "argocd.application-controller"} <= set(recorded_pids(demo_dir))
    assert_nothing_left(demo_dir, out)

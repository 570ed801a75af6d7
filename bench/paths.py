"""Where the bench finds the repository, its seed play, its results and the tools it runs."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_DIR = REPO / "bench" / "seed"
RESULTS_DIR = REPO / "bench" / "results"
CRD = REPO / "crds" / "wso2clusters.yaml"
BIN = Path(sys.executable).parent
KUBECTL = str(BIN / "kubectl")
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook")

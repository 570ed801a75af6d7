# Every target does its own set-up: apt packages, the Go build (cached outside the repo), the venv.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
SANDBOX := .sandbox
export KUBECONFIG_SANDBOX := $(CURDIR)/$(SANDBOX)/kubeconfig

# make operator serves /healthz here; empty: 8080, or a free port if 8080 is taken.
LIVENESS_PORT ?=

.PHONY: help setup venv apt kube argocd test unit lint cluster cluster-down fleet fleet-down operator operator-down down reset demo bench image-check clean

help:
	@echo "make demo     - run a rollout under load on a local sandbox (control plane, 2 HAProxy, 3 SSH nodes)"
	@echo "make test     - lint and run every test against real kube-apiserver, HAProxy, sshd and Argo CD"
	@echo "make cluster / cluster-down, make fleet [CLUSTERS=50 NODES=4] / fleet-down, make operator [LIVENESS_PORT=N]"
	@echo "make bench [PROFILE=...] - speed and zero-downtime bench; make bench SCALE=1 - the scale bench"
	@echo "make demo SCENARIO=gitops - the same rollout committed to Git and synced by a real Argo CD"
	@echo "make down     - stop the operator, fleet and control plane; make reset also deletes .sandbox"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

apt:
	@bash hack/apt-deps.sh

kube:
	@bash hack/build-kube.sh >/dev/null

# Argo CD for the GitOps tests and `make demo SCENARIO=gitops` (which builds it on demand too):
# ~12 min cold on 2 cores, then cached in ~/.cache/wso2-operator/argocd-<version>.
argocd: apt
	@bash hack/build-argocd.sh >/dev/null

setup: venv apt kube

lint: venv
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench

unit: venv
	$(BIN)/pytest -q tests/unit

test: setup argocd lint
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile

cluster: setup
	@$(BIN)/python -m wso2_sandbox.controlplane up --dir $(SANDBOX)/cluster --kubeconfig $(SANDBOX)/kubeconfig

# The operator goes first, while its apiserver still answers, so it stops cleanly.
cluster-down: operator-down
	@$(BIN)/python -m wso2_sandbox.controlplane down --dir $(SANDBOX)/cluster

# CLUSTERS=N [NODES=M] [LB_MODE=per-cluster]: the scale fleet instead (N clusters of M nodes behind
# one shared LB pair, or a pair each), in $(SANDBOX)/fleet-scale.
fleet: setup
ifdef CLUSTERS
	@$(BIN)/python -m wso2_sandbox.fleet_scale up --dir $(SANDBOX)/fleet-scale --clusters $(CLUSTERS) \
		$(if $(NODES),--nodes $(NODES),) $(if $(LB_MODE),--lb-mode $(LB_MODE),)
else
	@$(BIN)/python -m wso2_sandbox.fleet up --dir $(SANDBOX)/fleet
endif

fleet-down: venv
	@$(BIN)/python -m wso2_sandbox.fleet down --dir $(SANDBOX)/fleet
	@if [ -d $(SANDBOX)/fleet-scale ]; then \
		$(BIN)/python -m wso2_sandbox.fleet_scale down --dir $(SANDBOX)/fleet-scale; fi

# In the foreground (Ctrl-C stops it); its pid is recorded so that cluster-down stops it too.
operator: setup
	@exec $(BIN)/python -m wso2_sandbox.sandbox_operator run --kubeconfig $(SANDBOX)/kubeconfig \
		--pid-file $(SANDBOX)/operator.pid $(if $(LIVENESS_PORT),--liveness-port $(LIVENESS_PORT),)

operator-down: venv
	@$(BIN)/python -m wso2_sandbox.sandbox_operator stop --pid-file $(SANDBOX)/operator.pid

down: operator-down fleet-down cluster-down

# Everything of the sandbox, state included (etcd's data, keys, logs); the venv and the Go build
# stay.
reset: down
	rm -rf $(SANDBOX)

demo: setup
	@$(BIN)/python -m wso2_sandbox.demo $(if $(KEEP),--keep,) $(if $(SCENARIO),--scenario $(SCENARIO),)

# SCALE=1: the scale bench (bench/scale.py: 50 clusters x 4 nodes, a 40-node cluster, idle cost).
bench: setup
ifdef SCALE
	@$(BIN)/python -m bench.scale
else
	@$(BIN)/python -m bench.run $(if $(PROFILE),--profiles $(PROFILE),)
endif

image-check: setup
	$(BIN)/pytest -q tests/integration/test_manifests.py tests/e2e/test_image.py -k "dockerfile or test_image"

# The OCI image wso2-operator:dev, built from the Dockerfile with buildah (hack/image.sh does its
# own apt set-up and makes a stand-in base image when python:3.11-slim is missing).
.PHONY: image
image:
	@bash hack/image.sh

clean:
	rm -rf $(VENV) $(SANDBOX)

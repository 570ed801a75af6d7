# Every target does its own set-up: apt packages, the Go build (cached outside the repo), the venv.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
SANDBOX := .sandbox
export KUBECONFIG_SANDBOX := $(CURDIR)/$(SANDBOX)/kubeconfig

.PHONY: help setup venv apt kube test unit lint cluster cluster-down fleet fleet-down operator demo bench image-check clean

help:
	@echo "make demo     - run a rollout under load on a local sandbox (control plane, 2 HAProxy, 3 SSH nodes)"
	@echo "make test     - lint and run every test against real kube-apiserver, HAProxy and sshd"
	@echo "make cluster / cluster-down, make fleet / fleet-down, make operator, make bench"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

apt:
	@bash hack/apt-deps.sh

kube:
	@bash hack/build-kube.sh >/dev/null

setup: venv apt kube

lint: venv
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench

unit: venv
	$(BIN)/pytest -q tests/unit

test: setup lint
	$(BIN)/pytest -q -p no:cacheprovider

cluster: setup
	@$(BIN)/python -m wso2_sandbox.controlplane up --dir $(SANDBOX)/cluster --kubeconfig $(SANDBOX)/kubeconfig

cluster-down: venv
	@$(BIN)/python -m wso2_sandbox.controlplane down --dir $(SANDBOX)/cluster

fleet: setup
	@$(BIN)/python -m wso2_sandbox.fleet up --dir $(SANDBOX)/fleet

fleet-down: venv
	@$(BIN)/python -m wso2_sandbox.fleet down --dir $(SANDBOX)/fleet

operator: setup
	KUBECONFIG=$(SANDBOX)/kubeconfig $(BIN)/python -m wso2_operator --standalone -A --liveness=http://127.0.0.1:8080/healthz

demo: setup
	@$(BIN)/python -m wso2_sandbox.demo $(if $(KEEP),--keep,) $(if $(SCENARIO),--scenario $(SCENARIO),)

bench: setup
	@$(BIN)/python -m bench.run $(if $(PROFILE),--profiles $(PROFILE),)

image-check: setup
	$(BIN)/pytest -q tests/integration/test_manifests.py tests/e2e/test_image.py -k "dockerfile or test_image"

# The OCI image wso2-operator:dev, built from the Dockerfile with buildah (hack/image.sh does its
# own apt set-up and makes a stand-in base image when python:3.11-slim is missing).
.PHONY: image
image:
	@bash hack/image.sh

clean:
	rm -rf $(VENV) $(SANDBOX)

# syntax=docker/dockerfile:1
# wso2-operator image: `docker build -t ghcr.io/vmops/wso2-operator:0.1.0 .`
#
# builder: a venv with the package and its pinned dependencies (pyproject.toml), installed
#          non-editable and byte-compiled (the root filesystem is read-only at run time); pip's
#          cache is a BuildKit cache mount, never a layer; pip itself is removed afterwards.
#          Only operator/wso2_operator is copied: the sandbox package next to it is for
#          development and is not shipped.
# final:   the same slim Python plus that venv only: no pip cache, no compilers, no source tree,
#          running as uid 10001.
#
# WITH_ANSIBLE=1 (the default) also carries what spec.provision.ansible and Ansible hooks need:
# ansible-core and ansible-runner at the versions pyproject.toml pins, and the OpenSSH client and
# git from the base's Debian release. `--build-arg WITH_ANSIBLE=0` builds the slim variant for
# clusters that only use provision.commands (README, "Migrating from an Ansible play", for the
# sizes); it reports a play as ProvisionFailed naming the missing runner.
FROM python:3.11-slim AS builder
ARG WITH_ANSIBLE=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# The pinned dependencies first, in a layer that only pyproject.toml invalidates: a change to the
# operator's code then reuses it and rebuilds in seconds instead of reinstalling everything.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' >requirements.txt \
 && if [ "$WITH_ANSIBLE" = 0 ]; then sed -i '/^ansible-/d' requirements.txt; fi \
 && /opt/venv/bin/pip install -r requirements.txt
COPY operator/wso2_operator ./operator/wso2_operator
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --no-deps /src \
 && if [ "$WITH_ANSIBLE" = 0 ]; then \
      ! /opt/venv/bin/pip check | grep -v '^wso2-operator [^ ]* requires ansible-'; \
    else /opt/venv/bin/pip check; fi \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

# The same base as the builder: the venv's python is a symlink to its /usr/local/bin/python.
FROM python:3.11-slim
ARG WITH_ANSIBLE=1
# ansible-playbook reaches nodes with the OpenSSH client; Git content is cloned with git. Lists
# and caches are removed in the same layer.
RUN if [ "$WITH_ANSIBLE" != 0 ]; then \
      apt-get update -qq \
   && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-client git \
   && rm -rf /var/lib/apt/lists/* /var/cache/apt/*; \
    fi
LABEL org.opencontainers.image.title="wso2-operator" \
      org.opencontainers.image.description="Zero-downtime rolling updates of WSO2 VM nodes behind HAProxy, driven by a WSO2Cluster custom resource"
RUN groupadd --gid 10001 wso2op \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin wso2op
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
# 8080: kopf's liveness endpoint; 9090: Prometheus metrics.
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "wso2_operator"]
CMD ["--all-namespaces", "--peering=wso2-operator", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=9090", "--random-priority"]

#!/usr/bin/env bash
# Builds the Dockerfile, as it is, into the OCI image wso2-operator:dev with buildah (no Docker
# daemon), and prints its size. Used by `make image` and by tests/e2e/test_image.py.
#
#   hack/image.sh                    build (warm: every unchanged layer is reused)
#   IMAGE=name:tag hack/image.sh     another tag
#   WITH_ANSIBLE=0 hack/image.sh     the slim variant (no ansible-core/-runner, ssh, git)
#   IIDFILE=path hack/image.sh       also write the image ID there (a tag can be moved by a
#                                    concurrent build from another checkout; the ID cannot)
#
# Set-up it does itself, each step only when needed: apt packages (buildah, podman, runc,
# debootstrap), and the base image (hack/sandbox-base.sh, when python:3.11-slim is missing).
# Layers and the base live in podman's storage (/var/lib/containers), outside the repo.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
IMAGE="${IMAGE:-wso2-operator:dev}"

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
  echo "image: apt-get install ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi

bash "$here/hack/sandbox-base.sh"

# Limits this sandbox accepts (podman's defaults for root get EPERM here); harmless elsewhere.
flags=(--layers --isolation chroot --network host
  --ulimit nofile=8192:8192 --ulimit nproc=4096:4096)
# A machine that intercepts TLS with its own CA (anything in /usr/local/share/ca-certificates)
# must let pip in the build trust it. Mounted for the build's RUN steps only: no layer keeps it,
# and the Dockerfile does not know about it.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  printf '[global]\ncert = /run/build-ca.crt\n' >"$tmp/pip.conf"
  flags+=(-v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.crt:ro -v "$tmp/pip.conf:/etc/pip.conf:ro")
fi

[[ -z "${WITH_ANSIBLE:-}" ]] || flags+=(--build-arg "WITH_ANSIBLE=$WITH_ANSIBLE")

start=$SECONDS
buildah bud "${flags[@]}" --iidfile "$tmp/iid" -t "$IMAGE" "$here" >&2
iid="$(cat "$tmp/iid")"
[[ -z "${IIDFILE:-}" ]] || cp "$tmp/iid" "$IIDFILE"
bytes="$(podman image inspect --format '{{.Size}}' "$iid")"
echo "image: $IMAGE built in $((SECONDS - start)) s, $((bytes / 1000000)) MB (${iid#sha256:})"

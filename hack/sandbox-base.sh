#!/usr/bin/env bash
# Makes a stand-in for docker.io/library/python:3.11-slim in podman's storage, for machines that
# cannot reach a container registry (this sandbox). It is Debian 12's own Python 3.11 (3.11.2 from
# bookworm) on a debootstrap minbase, with python/python3/python3.11 in /usr/local/bin as in the
# upstream image; it is NOT upstream's build of Python. A real build uses the upstream base: with
# registry access, `podman pull docker.io/library/python:3.11-slim` and this script leaves it alone.
#
# Idempotent: it does nothing while the image exists, unless the image is a stand-in made by an
# older version of this script (its label vmops.dev/sandbox-base differs from this file's hash).
set -euo pipefail
BASE="docker.io/library/python:3.11-slim"
LABEL="vmops.dev/sandbox-base"
key="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"

if podman image exists "$BASE"; then
  have="$(podman image inspect --format "{{ index .Labels \"$LABEL\" }}" "$BASE")"
  # No label: an upstream image someone pulled, which is better than ours; keep it.
  if [[ -z "$have" || "$have" == "<no value>" || "$have" == "$key" ]]; then
    exit 0
  fi
  echo "sandbox base: $BASE was made by another version of $(basename "$0"); remaking it" >&2
fi

# The mirror apt already uses on this machine (deb822 or one-line sources).
mirror="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
  grep -oE 'https?://[^ ]+' | head -1 || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
mirror="${mirror%/}"
security="${mirror%/debian}/debian-security"

rootfs="$(mktemp -d /var/tmp/wso2-sandbox-base.XXXXXX)"
log="$rootfs.log"
trap 'rm -rf "$rootfs" "$log"' EXIT
# apt in a chroot warns about its sandbox user and /dev/pts; shown only if a step fails.
trap 'echo "sandbox base: failed; its log:" >&2; tail -30 "$log" >&2' ERR
echo "sandbox base: debootstrap bookworm from $mirror (1-2 minutes)..." >&2
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$log" 2>&1
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
# debootstrap --include does not resolve dependencies, so Python comes from apt in the chroot.
chroot "$rootfs" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends python3.11 python3.11-venv ca-certificates \
  && apt-get clean && rm -rf /var/lib/apt/lists/*' >>"$log" 2>&1
for name in python python3 python3.11; do
  ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/$name"
done
tar -C "$rootfs" -c . | podman import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL $LABEL=$key" \
  --change 'CMD ["python3"]' --quiet - "$BASE" >/dev/null
echo "sandbox base: made $BASE (Debian's Python $(chroot "$rootfs" python3.11 -c \
  'import platform; print(platform.python_version())'))" >&2

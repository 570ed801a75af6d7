#!/usr/bin/env bash
# Installs the Debian packages the sandbox needs (HAProxy 2.6, OpenSSH, and redis-server and git
# for the sandbox's Argo CD), only when missing, so a warm machine skips apt entirely.
set -euo pipefail
need=()
[[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v setsid >/dev/null || need+=(util-linux)
# Argo CD's cache. The sandbox runs its own redis-server on a free port; a service the package
# may start on 6379 (where systemd runs) is not used.
command -v redis-server >/dev/null || need+=(redis-server)
command -v git >/dev/null || need+=(git)
if ((${#need[@]})); then
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p /run/sshd 2>/dev/null || true

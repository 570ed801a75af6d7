"""Established TCP connections of a process, by peer, read from /proc (Linux).

The ground truth for "one connection per LB host": what the kernel holds, not what the
operator's own counters say.
"""

from __future__ import annotations

import os
import socket
import struct
from collections import Counter

_ESTABLISHED = "01"


def _peer(hex_addr: str) -> tuple[str, int]:
    addr, port = hex_addr.split(":")
    # /proc/net/tcp prints the IPv4 address as a host-order 32-bit number.
    return socket.inet_ntoa(struct.pack("<I", int(addr, 16))), int(port, 16)


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_peers(pid: int) -> Counter[tuple[str, int]]:
    """(peer address, peer port) -> established IPv4 TCP connections of process ``pid``."""
    mine = socket_inodes(pid)
    peers: Counter[tuple[str, int]] = Counter()
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)  # header
        for line in f:
            fields = line.split()
            if fields[3] == _ESTABLISHED and fields[9] in mine:
                peers[_peer(fields[2])] += 1
    return peers

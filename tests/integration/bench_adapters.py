"""Micro-benchmark of the HAProxy adapter on a real fleet (not a test).

    .venv/bin/python -m tests.integration.bench_adapters [--reps 5] [--poll 0.1]

Times drain (idle node) and safe re-enable of one node on both LBs, each LB reached over SSH
(SshUnixTransport), and splits re-enable into the HAProxy-inherent part (from `state drain` +
`health down` until fresh passing checks are visible on every LB: about `rise` check
intervals) and our overhead (CLI round trips, polling, read-backs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from wso2_operator.haproxy_pool import build_lb_pool
from wso2_operator.ssh import SSHCredentials, SSHExecutor
from wso2_sandbox.fleet import Fleet, FleetConfig

BACKEND = "PRD_wso2ei"
SERVER = "node2"


def _ms(x: float) -> str:
    return f"{x * 1000:8.1f}"


async def bench(fleet: Fleet, reps: int, poll: float) -> None:
    creds = SSHCredentials(
        username=fleet.description["ssh"]["user"],
        private_key=fleet.client_private_key(),
        known_hosts=fleet.known_hosts(),
    )
    specs = [
        {"name": lb.name, "host": lb.host, "sshPort": lb.ssh_port, "socket": lb.socket}
        for lb in fleet.lbs
    ]
    async with SSHExecutor(creds) as ex:
        pool = build_lb_pool(ex, specs, poll_interval=poll)
        t0 = time.monotonic()
        await pool.preflight(BACKEND, [n.name for n in fleet.nodes])
        cold = time.monotonic() - t0
        client = pool.clients[0]
        t0 = time.monotonic()
        for _ in range(50):
            await client.command(f"show stat {BACKEND} 4 -1")
        rtt = (time.monotonic() - t0) / 50
        t0 = time.monotonic()
        for _ in range(20):
            await client.server(BACKEND, SERVER)
        view = (time.monotonic() - t0) / 20

        rows = []
        for i in range(reps):
            d = await pool.drain(BACKEND, SERVER, deadline=10)
            r = await pool.reenable(BACKEND, SERVER, deadline=15)
            rows.append((i + 1, d.duration, r.duration, r.check_wait_seconds))
        await pool.close()

    print(
        f"\nHAProxy adapter bench: {len(fleet.lbs)} LBs over SSH, server {SERVER}, "
        f"checks 'inter 500ms rise 2 fall 2', poll {poll * 1000:.0f} ms"
    )
    print(f"  cold start (2 SSH connects + CLI prompt + preflight): {cold * 1000:.1f} ms")
    print(f"  one CLI round trip over the kept SSH channel:          {rtt * 1000:.2f} ms")
    print(f"  one server read (show info + show stat + servers state): {view * 1000:.2f} ms\n")
    print(" rep | drain ms | reenable ms | HAProxy checks ms | our overhead ms")
    print("-----+----------+-------------+-------------------+----------------")
    for rep, drain, reen, check in rows:
        print(
            f" {rep:3d} | {_ms(drain)} | {_ms(reen):>11} | {_ms(check):>17} | "
            f"{_ms(reen - check):>14}"
        )
    print("-----+----------+-------------+-------------------+----------------")
    for label, fn in (("mean", statistics.mean), ("min", min), ("max", max)):
        drains = [r[1] for r in rows]
        reens = [r[2] for r in rows]
        checks = [r[3] for r in rows]
        over = [r[2] - r[3] for r in rows]
        print(
            f" {label:>4}| {_ms(fn(drains))} | {_ms(fn(reens)):>11} | {_ms(fn(checks)):>17} | "
            f"{_ms(fn(over)):>14}"
        )
    print(
        "\nHAProxy checks = from `state drain` + `health down` until every LB shows fresh passing "
        "checks\n(includes up to one poll interval of detection latency); drain of an idle node "
        "is all overhead."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--poll", type=float, default=0.1, help="LBPool poll interval, seconds")
    args = ap.parse_args()
    cfg = FleetConfig(nodes=3, lbs=2, boot_seconds=1.0, ready_gap_seconds=0.5)
    with Fleet(cfg) as fleet:
        asyncio.run(bench(fleet, args.reps, args.poll))


if __name__ == "__main__":
    main()

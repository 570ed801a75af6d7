"""Ansible plays never take the threads that every cluster's Kubernetes API calls run on.

Real ansible-runner plays against a real node's sshd, blocked in a task until the test lets
them go. The loop's default executor (where kube.py's API calls and kopf's sync handlers run)
is made as small as on a 2-core Pod, and there are more plays than it has threads: while every
play is still blocked, a call on the default executor must go through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from wso2_operator.ansible_provision import PlayProgress, Target, play_key, run_play
from wso2_operator.model import AnsibleSource, AnsibleSpec
from wso2_sandbox.fleet import Fleet, FleetConfig

pytestmark = pytest.mark.timeout(240)

DEFAULT_THREADS = 2
PLAYS = DEFAULT_THREADS + 1


@pytest.fixture(scope="module")
def node_fleet() -> Iterator[Fleet]:
    with Fleet(FleetConfig(nodes=1, lbs=0, boot_seconds=0.3, ready_gap_seconds=0.1)) as fleet:
        yield fleet


async def test_plays_in_progress_leave_the_default_executor_free(
    node_fleet: Fleet, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    content = tmp_path / "content"
    content.mkdir()
    wait = [
        {
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "hold",
                    "ansible.builtin.wait_for": {"path": str(release), "timeout": 180},
                }
            ],
        }
    ]
    (content / "hold.yml").write_text(json.dumps(wait))
    node = node_fleet.nodes[0]
    target = Target(
        alias=node.name,
        host=node.host,
        port=node.ssh_port,
        user=node_fleet.description["ssh"]["user"],
        private_key=node_fleet.client_private_key(),
        known_hosts=node_fleet.known_hosts(),
        connect_timeout=5.0,
    )
    spec = AnsibleSpec(
        source=AnsibleSource(config_map="unused"), playbook="hold.yml", gather_facts=False
    )
    loop = asyncio.get_running_loop()
    small = concurrent.futures.ThreadPoolExecutor(DEFAULT_THREADS)
    loop.set_default_executor(small)
    holding: set[int] = set()
    everyone_holds = asyncio.Event()

    def reporter(i: int):
        def report(p: PlayProgress) -> None:
            if p.task == "hold":
                holding.add(i)
                if len(holding) == PLAYS:
                    everyone_holds.set()

        return report

    plays = [
        asyncio.create_task(
            run_play(
                target, spec, content, {}, play_key("hold", str(i), str(tmp_path)), reporter(i)
            )
        )
        for i in range(PLAYS)
    ]
    try:
        await asyncio.wait_for(everyone_holds.wait(), 150)
        # Every play is inside its task, more plays than default threads: the API's lane is free.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 30) == "free"
        assert not any(p.done() for p in plays)
    finally:
        release.touch()
        results = await asyncio.gather(*plays, return_exceptions=True)
    assert all(isinstance(r, PlayProgress) for r in results), results

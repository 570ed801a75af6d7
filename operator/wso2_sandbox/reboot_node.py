"""A fleet node's "reboot", standard library only: started detached by `wso2ctl reboot`.

What matters of a reboot to the operator, for real: the node's sshd and every SSH session go
away (the connection drops), the product goes away, nothing answers for a while, then sshd comes
back with the same host key (its files are the VM's disk) and a new boot id, and the product
boots again. The boot id is `<home>/run/boot_id`, the stand-in of
/proc/sys/kernel/random/boot_id, printed by `wso2ctl boot-id`.

This process stays as the parent of the new sshd: it carries the fleet's marker in its
environment, so the fleet's stop (fleet_procs) still finds the node's processes after a reboot.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(data[data.rfind(")") + 2 :].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def _tree(root: int) -> list[int]:
    children, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _kill(pids: list[int]) -> None:
    for pid in pids:
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _event(home: Path, event: str, **extra: str) -> None:
    line = json.dumps({"t": time.time(), "event": event, "version": "", **extra}) + "\n"
    fd = os.open(home / "log" / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def go_down(home: Path) -> None:
    """Everything of the node dies at once, as at power-off: sessions, sshd, product."""
    sshd = _read_pid(home / "sshd" / "sshd.pid")
    standin = _read_pid(home / "run" / "standin.pid")
    doomed = _tree(sshd) if sshd else []  # taken before the listener dies (then they orphan)
    if standin:
        doomed += _tree(standin)
    _kill(doomed)
    for f in (home / "run" / "standin.pid", home / "sshd" / "sshd.pid"):
        f.unlink(missing_ok=True)


def come_up(home: Path) -> subprocess.Popen[bytes]:
    boot_id = str(uuid.uuid4())
    tmp = home / "run" / "boot_id.tmp"
    tmp.write_text(boot_id + "\n")
    os.replace(tmp, home / "run" / "boot_id")
    _event(home, "boot", boot_id=boot_id)
    with open(home / "sshd" / "sshd.log", "ab") as log:
        sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(home / "sshd" / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
    subprocess.run(
        [str(home / "bin" / "wso2ctl"), "start"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=home,
        check=False,
    )
    return sshd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--down-seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    home = Path(args.home)
    # Give the SSH session that asked a moment to read "rebooting" before it is cut.
    time.sleep(0.2)
    _event(home, "reboot")
    go_down(home)
    time.sleep(max(0.0, args.down_seconds))
    sshd = come_up(home)
    return sshd.wait()


if __name__ == "__main__":
    sys.exit(main())

"""`make operator`: the operator in the foreground against the sandbox, and its stop.

    python -m wso2_sandbox.sandbox_operator run [--liveness-port N]   # Ctrl-C stops it
    python -m wso2_sandbox.sandbox_operator stop                      # from make cluster-down

`run` records its pid in .sandbox/operator.pid and then becomes the operator (exec), so the pid
is the operator's and Ctrl-C reaches it. The operator stops by itself, with one line, once the
sandbox's apiserver has not answered for 30 s; `make cluster-down` stops it first anyway, so it
never outlives the control plane.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

DEFAULT_LIVENESS_PORT = 8080
APISERVER_GONE_SECONDS = 30
STOP_TIMEOUT = 20.0


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pick_liveness_port(requested: int | None) -> tuple[int, str | None]:
    """The port to serve /healthz on, and a note if it is not the one the user expects.

    An explicit port is used as is (refused in one line if it is taken); without one, 8080, or
    a free port when 8080 is taken (a second sandbox, another service).
    """
    if requested is not None:
        return requested, None
    if _port_free(DEFAULT_LIVENESS_PORT):
        return DEFAULT_LIVENESS_PORT, None
    port = _free_port()
    return port, f"port {DEFAULT_LIVENESS_PORT} is taken; liveness on {port} instead"


def running_operator(pid_file: Path) -> int | None:
    """The pid recorded in pid_file if that process is still an operator, else None."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A recycled pid belongs to some other program: never signal that.
    return pid if b"wso2_operator" in cmdline else None


def cmd_run(args: argparse.Namespace) -> int:
    kubeconfig = Path(args.kubeconfig).resolve()
    if not kubeconfig.exists():
        print(
            f"operator: no {args.kubeconfig}: start the control plane first (make cluster)",
            file=sys.stderr,
        )
        return 1
    pid_file = Path(args.pid_file)
    other = running_operator(pid_file)
    if other is not None:
        print(
            f"operator: already running (pid {other}, recorded in {pid_file}); stop it with "
            "Ctrl-C in its terminal or make operator-down",
            file=sys.stderr,
        )
        return 1
    port, note = pick_liveness_port(args.liveness_port)
    if args.liveness_port is not None and not _port_free(port):
        print(
            f"operator: LIVENESS_PORT={port} is in use (is another operator running?); "
            "choose another, or leave LIVENESS_PORT unset for 8080 or a free port",
            file=sys.stderr,
        )
        return 1
    if note:
        print(f"operator: {note}")
    print(
        f"operator: watching all namespaces of {kubeconfig}; liveness "
        f"http://127.0.0.1:{port}/healthz; Ctrl-C stops it",
        flush=True,
    )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")  # exec keeps the pid: this is the operator's
    argv = [
        sys.executable,
        "-m",
        "wso2_operator",
        "--standalone",
        "-A",
        f"--liveness=http://127.0.0.1:{port}/healthz",
        f"--exit-if-apiserver-gone={APISERVER_GONE_SECONDS}",
    ]
    if args.selector:
        argv.append(f"--selector={args.selector}")
    os.execve(sys.executable, argv, {**os.environ, "KUBECONFIG": str(kubeconfig)})
    return 1  # not reached


def cmd_stop(args: argparse.Namespace) -> int:
    pid_file = Path(args.pid_file)
    pid = running_operator(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while running_operator(pid_file) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_operator(pid_file) == pid:
        os.kill(pid, signal.SIGKILL)
        print(f"operator (pid {pid}): did not stop within {STOP_TIMEOUT:g}s; killed")
    else:
        print(f"operator (pid {pid}): stopped")
    pid_file.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wso2_sandbox.sandbox_operator")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the operator in the foreground (exec)")
    run.add_argument("--kubeconfig", default=".sandbox/kubeconfig")
    run.add_argument("--liveness-port", type=int, default=None)
    # A shard of the fleet (README, Sharding): run one per selector, each with its own pid file.
    run.add_argument("--selector", default="")
    stop = sub.add_parser("stop", help="stop the operator that run recorded")
    for s in (run, stop):
        s.add_argument("--pid-file", default=".sandbox/operator.pid")
    args = p.parse_args(argv)
    return cmd_run(args) if args.cmd == "run" else cmd_stop(args)


if __name__ == "__main__":
    sys.exit(main())

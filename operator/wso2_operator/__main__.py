"""`python -m wso2_operator [kopf run flags]`: run the operator.

It accepts kopf's usual flags (--namespace/-A, --standalone, --liveness, --priority, --peering)
plus a few of its own, which it consumes before handing the rest to kopf:

  --metrics-port N      serve Prometheus metrics on :N (0: off, the default; env
                        WSO2_METRICS_PORT). No authentication: see README, Security model
  --metrics-address A   the address the metrics endpoint binds (default 0.0.0.0, all
                        interfaces: in a Pod, Prometheus scrapes the Pod IP, and the
                        NetworkPolicy in manifests/ limits who reaches it; env
                        WSO2_METRICS_ADDRESS). Use 127.0.0.1 outside a cluster
  --observe-period S    re-observe every S seconds when idle (default 30)
  --selector SEL        handle only the WSO2Clusters whose labels match SEL, e.g. shard=a
                        (key=value, key!=value, key, !key, comma-separated; env
                        WSO2_SHARD_SELECTOR). For several operators splitting a fleet: see
                        README, Sharding. The shard's kopf peering object and finalizer are
                        named after the selector (shard=a: wso2-operator-shard-a)
  --max-ssh-handshakes N
                        SSH handshakes in flight at once, over all hosts (default 16; env
                        WSO2_MAX_SSH_HANDSHAKES). The rest wait their turn without it counting
                        against connectTimeoutSeconds, so starting with many clusters does not
                        storm the LB hosts' sshd (MaxStartups) or starve a small CPU
  --random-priority     pick a random peering priority, so that of two replicas exactly one acts
  --require-secret-label
                        use an SSH Secret only if it carries the label vmops.dev/ssh-access="true"
                        (and, if it has the annotation vmops.dev/allowed-clusters, only for the
                        WSO2Clusters it lists); the same as env WSO2_REQUIRE_SECRET_LABEL=1
  --exit-if-apiserver-gone S
                        stop (exit code 3, one line on stderr) once the Kubernetes API has not
                        answered for S seconds (0: never, the default; env
                        WSO2_EXIT_IF_APISERVER_GONE). For a local sandbox, not for a Pod

A --liveness port that is already in use is a one-line error (exit code 2) before kopf starts.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

from . import lifecycle, ssh
from .kube import PEERING_SCOPE_ENV
from .secret_policy import REQUIRE_LABEL_ENV
from .shard import SELECTOR_ENV, SelectorError, parse_selector


def peering_scope(kopf_args: list[str]) -> str:
    """Where kopf looks for its peering object: "cluster" with -A, else the -n namespaces."""
    scope = argparse.ArgumentParser(add_help=False)
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    scope.add_argument("-n", "--namespace", action="append", default=[])
    known, _ = scope.parse_known_args(kopf_args)
    return "cluster" if known.all_namespaces or not known.namespace else ",".join(known.namespace)


def own_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The operator's own flags (see the module doc), and the rest for kopf."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("WSO2_METRICS_PORT", 0))
    )
    own.add_argument(
        "--metrics-address", default=os.environ.get("WSO2_METRICS_ADDRESS") or "0.0.0.0"
    )
    own.add_argument("--observe-period", type=float, default=None)
    own.add_argument("--selector", default=os.environ.get(SELECTOR_ENV) or "")
    own.add_argument(
        "--max-ssh-handshakes",
        type=int,
        default=int(os.environ.get("WSO2_MAX_SSH_HANDSHAKES") or ssh.DEFAULT_HANDSHAKE_LIMIT),
    )
    own.add_argument("--random-priority", action="store_true")
    own.add_argument("--require-secret-label", action="store_true")
    own.add_argument(
        "--exit-if-apiserver-gone",
        type=float,
        default=float(os.environ.get(lifecycle.APISERVER_GONE_ENV) or 0),
    )
    return own.parse_known_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = own_args(argv)
    if "-h" in rest or "--help" in rest:
        print(__doc__)
    try:
        parse_selector(args.selector)
    except SelectorError as e:
        print(f"wso2-operator: --selector: {e}", file=sys.stderr)
        sys.exit(2)
    if args.max_ssh_handshakes < 1:
        print("wso2-operator: --max-ssh-handshakes must be at least 1", file=sys.stderr)
        sys.exit(2)
    ssh.set_handshake_limit(args.max_ssh_handshakes)
    os.environ[SELECTOR_ENV] = args.selector  # read by handlers at import
    if args.observe_period is not None:
        os.environ["WSO2_OBSERVE_PERIOD"] = str(args.observe_period)
    if args.require_secret_label:
        os.environ[REQUIRE_LABEL_ENV] = "1"  # read by KubeAdapter.read_ssh_secret
    if args.random_priority:
        rest.append(f"--priority={random.randint(1, 1_000_000)}")
    os.environ[PEERING_SCOPE_ENV] = peering_scope(rest)
    os.environ[lifecycle.APISERVER_GONE_ENV] = str(args.exit_if_apiserver_gone)  # for handlers
    problem = lifecycle.liveness_problem(rest)
    if problem is not None:
        print(f"wso2-operator: {problem}", file=sys.stderr)
        sys.exit(2)
    if args.metrics_port:
        from .metrics import serve

        serve(args.metrics_port, args.metrics_address)

    import kopf.cli

    code: object = 0
    try:
        kopf.cli.main(
            args=["run", "-m", "wso2_operator.handlers", *rest], prog_name="wso2-operator"
        )
    except SystemExit as e:  # click ends with sys.exit, also on success
        code = e.code
    if lifecycle.WATCH is not None and lifecycle.WATCH.message:
        # The last line of the output, where whoever started it looks first.
        print(f"wso2-operator: {lifecycle.WATCH.message}", file=sys.stderr, flush=True)
        sys.exit(lifecycle.GONE_EXIT_CODE)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()

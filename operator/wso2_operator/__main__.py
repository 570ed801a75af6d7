"""`python -m wso2_operator [kopf run flags]`: run the operator.

It accepts kopf's usual flags (--namespace/-A, --standalone, --liveness, --priority, --peering)
plus a few of its own, which it consumes before handing the rest to kopf:

  --metrics-port N      serve Prometheus metrics on :N (0: off, the default)
  --observe-period S    re-observe every S seconds when idle (default 30)
  --random-priority     pick a random peering priority, so that of two replicas exactly one acts
"""

from __future__ import annotations

import argparse
import os
import random
import sys

from .kube import PEERING_SCOPE_ENV


def peering_scope(kopf_args: list[str]) -> str:
    """Where kopf looks for its peering object: "cluster" with -A, else the -n namespaces."""
    scope = argparse.ArgumentParser(add_help=False)
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    scope.add_argument("-n", "--namespace", action="append", default=[])
    known, _ = scope.parse_known_args(kopf_args)
    return "cluster" if known.all_namespaces or not known.namespace else ",".join(known.namespace)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("WSO2_METRICS_PORT", 0))
    )
    own.add_argument("--observe-period", type=float, default=None)
    own.add_argument("--random-priority", action="store_true")
    args, rest = own.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print(__doc__)
    if args.observe_period is not None:
        os.environ["WSO2_OBSERVE_PERIOD"] = str(args.observe_period)
    if args.random_priority:
        rest.append(f"--priority={random.randint(1, 1_000_000)}")
    os.environ[PEERING_SCOPE_ENV] = peering_scope(rest)
    if args.metrics_port:
        from .metrics import serve

        serve(args.metrics_port)

    import kopf.cli

    kopf.cli.main(args=["run", "-m", "wso2_operator.handlers", *rest], prog_name="wso2-operator")


if __name__ == "__main__":
    main()

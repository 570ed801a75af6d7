"""`kubectl w2c`: watch and steer WSO2Cluster rollouts from a terminal.

Installed as the console script `kubectl-w2c` (so `kubectl w2c ...` finds it on PATH), and
runnable as `python -m wso2_operator.cli`. What it prints and decides is in cli_render (pure);
this module parses arguments, talks to the apiserver and turns its errors into one line.

    kubectl w2c get NAME [-w] [-o json|yaml]     the live view (-w: redraw on every change)
    kubectl w2c list [-A] [-o json|yaml]         every WSO2Cluster in scope
    kubectl w2c pause|resume NAME                spec.update.paused
    kubectl w2c retry|abort NAME                 vmops.dev/retry, vmops.dev/abort
    kubectl w2c promote NAME [--full]            vmops.dev/promote (-full)
    kubectl w2c history NAME [-o json|yaml]      status.history
    kubectl w2c undo NAME [--to-revision N]      spec.version back (refused under Argo CD)
    kubectl w2c wait NAME [--for ready|paused|degraded] [--timeout 10m]

Exit codes: 0 done, 1 an error, and for wait: 2 timed out, 3 the rollout failed (it will not
get there without a new version or a retry).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from . import cli_render as r

COMMON_HELP = {
    "kubeconfig": "path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
    "context": "the kubeconfig context to use",
    "namespace": "the namespace (default: the context's, else default)",
    "all_namespaces": "list: every namespace",
}
REQUEST_TIMEOUT = 30.0
WATCH_CHUNK = 300  # seconds the apiserver keeps one watch open before it is renewed


class CliError(Exception):
    """One line for stderr, and the exit code."""

    def __init__(self, message: str, code: int = r.EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see kubectl w2c {self._verb()}--help)")

    def _verb(self) -> str:
        parts = self.prog.split()
        return f"{parts[-1]} " if len(parts) > 1 else ""


def parse_duration(text: str) -> float:
    """A kubectl-style duration: 90, 90s, 5m, 1h30m, 1.5s."""
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
    if not text or not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 90s, 5m, 1h)")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a revision number >= 1, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the flags may come before or after the verb, as with kubectl.
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help=COMMON_HELP["kubeconfig"])
    common.add_argument("--context", default=argparse.SUPPRESS, help=COMMON_HELP["context"])
    common.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS, help=COMMON_HELP["namespace"]
    )
    common.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=argparse.SUPPRESS,
        help=COMMON_HELP["all_namespaces"],
    )
    p = _Parser(
        prog="kubectl w2c",
        parents=[common],
        description="Watch and steer WSO2Cluster rollouts.",
        epilog="Exit codes: 0 done; 1 an error; wait: 2 timed out, 3 the rollout failed.",
    )
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    def verb(name: str, help: str, named: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help)
        if named:
            sp.add_argument("name", metavar="NAME", help="the WSO2Cluster")
        return sp

    g = verb("get", "show one cluster: phase, versions, step, analysis and a row per node")
    g.add_argument("-w", "--watch", action="store_true", help="redraw on every change")
    g.add_argument("-o", "--output", choices=["json", "yaml"], help="print the object")
    ls = verb("list", "every WSO2Cluster in the namespace (-A: in every namespace)", named=False)
    ls.add_argument("-o", "--output", choices=["json", "yaml"])
    verb("pause", "set spec.update.paused: no new node starts (a node in flight finishes)")
    verb("resume", "clear spec.update.paused")
    verb("retry", "retry the failed version once (vmops.dev/retry)")
    pr = verb("promote", "end the current canary step (vmops.dev/promote)")
    pr.add_argument(
        "--full", action="store_true", help="skip every remaining pause (vmops.dev/promote-full)"
    )
    verb("abort", "fail the rollout now; failurePolicy applies (vmops.dev/abort)")
    verb("restart", "restart every node through the safe sequence (sets spec.restartedAt)")
    h = verb("history", "the rollouts in status.history, numbered as revisions")
    h.add_argument("-o", "--output", choices=["json", "yaml"])
    u = verb("undo", "set spec.version back (default: the last version that rolled out)")
    u.add_argument("--to-revision", type=_positive_int, metavar="N", help="a revision of history")
    w = verb("wait", "wait until the cluster is ready, paused or degraded")
    w.add_argument("--for", dest="want", choices=r.WAIT_FOR, default="ready")
    w.add_argument(
        "--timeout", type=parse_duration, default=600.0, help="e.g. 90s, 5m (default 10m)"
    )
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for key in ("kubeconfig", "context", "namespace"):
        setattr(args, key, getattr(args, key, None))
    args.all_namespaces = getattr(args, "all_namespaces", False)
    if args.all_namespaces and args.verb != "list":
        raise CliError(f"-A applies to list only, not to {args.verb}")
    return args


# --- the apiserver -----------------------------------------------------------------------------


def _one_line(text: object, limit: int = 300) -> str:
    return r.clip(" ".join(str(text).split()), limit)


class Api:
    """The few calls the plugin makes, with kubectl's way of finding the cluster."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None):
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        self.client = client
        try:
            if kubeconfig is not None and not Path(kubeconfig).expanduser().is_file():
                raise CliError(f"kubeconfig {kubeconfig} does not exist")
            env_paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
            default = Path("~/.kube/config").expanduser()
            have_file = kubeconfig is not None or (
                any(Path(p).expanduser().is_file() for p in env_paths)
                if env_paths
                else default.is_file()
            )
            if not have_file and os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
                config.load_incluster_config()
                ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                self.namespace = namespace or (
                    ns_file.read_text().strip() if ns_file.is_file() else "default"
                )
                api_client = client.ApiClient()
            else:
                if not have_file:
                    where = ", ".join(env_paths) if env_paths else str(default)
                    raise CliError(
                        f"no kubeconfig: {where} not found (set KUBECONFIG or pass --kubeconfig)"
                    )
                cfg = client.Configuration()
                config.load_kube_config(
                    config_file=kubeconfig, context=context, client_configuration=cfg
                )
                cfg.retries = 1
                api_client = client.ApiClient(cfg)
                contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
                chosen = next((c for c in contexts if c.get("name") == context), active)
                ctx_ns = ((chosen or {}).get("context") or {}).get("namespace")
                self.namespace = namespace or ctx_ns or "default"
        except ConfigException as e:
            raise CliError(f"kubeconfig: {_one_line(e)}") from None
        self.server = api_client.configuration.host
        self.co = client.CustomObjectsApi(api_client)

    # Every call goes through _call, which turns what can go wrong into one CliError line.
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except Exception as e:
            raise self.explain(e, what) from None

    def explain(self, e: Exception, name: str | None) -> CliError:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if isinstance(e, ApiException):
            try:
                body = json.loads(e.body or "{}")
            except ValueError:
                body = {}
            msg = _one_line(body.get("message") or e.reason or "")
            details = body.get("details") or {}
            if e.status == 404:
                if name and details.get("name") == name:
                    return CliError(
                        f'wso2cluster "{name}" not found in namespace "{self.namespace}"'
                    )
                return CliError(
                    f"the server at {self.server} has no WSO2Cluster resource "
                    "(is the CRD crds/wso2clusters.yaml installed?)"
                )
            if e.status == 403:
                return CliError(f"forbidden: {msg}")
            if e.status == 401:
                return CliError(
                    f"unauthorized: the server at {self.server} refused the "
                    "credentials of this kubeconfig"
                )
            if e.status == 409:
                return CliError(f"conflict: {msg} (someone changed it meanwhile; try again)")
            return CliError(f"the server refused ({e.status}): {msg}")
        if isinstance(e, HTTPError | OSError):
            reason = getattr(e, "reason", None) or e
            return CliError(f"cannot reach the server at {self.server}: {_one_line(reason, 200)}")
        return CliError(f"{type(e).__name__}: {_one_line(e)}")

    def get(self, name: str) -> dict[str, Any]:
        return self._call(
            name,
            self.co.get_namespaced_custom_object,
            r.GROUP,
            r.VERSION,
            self.namespace,
            r.PLURAL,
            name,
        )

    def list(self, all_namespaces: bool) -> list[dict[str, Any]]:
        if all_namespaces:
            out = self._call(None, self.co.list_cluster_custom_object, r.GROUP, r.VERSION, r.PLURAL)
        else:
            out = self._call(
                None,
                self.co.list_namespaced_custom_object,
                r.GROUP,
                r.VERSION,
                self.namespace,
                r.PLURAL,
            )
        return list(out.get("items") or [])

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(
            name,
            self.co.patch_namespaced_custom_object,
            r.GROUP,
            r.VERSION,
            self.namespace,
            r.PLURAL,
            name,
            body,
            _content_type="application/merge-patch+json",
        )

    def changes(self, obj: dict[str, Any], deadline: float | None) -> Iterator[dict[str, Any]]:
        """Each new version of the object, from a watch (renewed when the apiserver ends it,
        re-read when its resourceVersion expired). Ends at the deadline; a deletion is an
        error."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        name = obj["metadata"]["name"]
        rv = obj["metadata"].get("resourceVersion")
        while True:
            chunk = WATCH_CHUNK
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                chunk = max(1, min(chunk, int(left + 0.999)))
            w = watch.Watch()
            try:
                for ev in w.stream(
                    self.co.list_namespaced_custom_object,
                    r.GROUP,
                    r.VERSION,
                    self.namespace,
                    r.PLURAL,
                    field_selector=f"metadata.name={name}",
                    resource_version=rv,
                    timeout_seconds=chunk,
                    deserialize=False,
                    _request_timeout=chunk + REQUEST_TIMEOUT,
                ):
                    typ, new = ev.get("type"), ev.get("object") or {}
                    if typ == "DELETED":
                        raise CliError(f'wso2cluster "{name}" was deleted')
                    if typ in ("ADDED", "MODIFIED"):
                        rv = new.get("metadata", {}).get("resourceVersion", rv)
                        yield new
                    if deadline is not None and time.monotonic() >= deadline:
                        w.stop()
            except ApiException as e:
                if e.status != 410:
                    raise self.explain(e, name) from None
                new = self.get(name)  # expired: read it anew, then watch from there
                if new["metadata"].get("resourceVersion") != rv:
                    rv = new["metadata"].get("resourceVersion")
                    yield new
            except CliError:
                raise
            except Exception as e:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                raise self.explain(e, name) from None


# --- verbs -------------------------------------------------------------------------------------


def _dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=True)
    import yaml

    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False).rstrip("\n")


def _ref(api: Api, name: str) -> str:
    return f"wso2cluster/{name} (namespace {api.namespace})"


def cmd_get(api: Api, args: argparse.Namespace, out: Any) -> int:
    obj = api.get(args.name)
    if not args.watch:
        text = (
            _dump(obj, args.output) if args.output else r.render_get(obj, time.time(), _style(out))
        )
        print(text, file=out)
        return r.EXIT_OK
    tty = out.isatty()
    last = None
    for current in _with_changes(api, obj, None):
        now = time.time()
        if args.output:
            text = (
                json.dumps(current, sort_keys=True)
                if args.output == "json"
                else _dump(current, "yaml") + "\n---"
            )
        elif tty:
            text = r.render_get(current, now, _style(out))
        else:
            text = r.render_line(current, now)
        if text == last:
            continue
        last = text
        if tty and not args.output:
            stamp = time.strftime("%H:%M:%S")
            out.write(
                f"\x1b[H\x1b[2J{text}\n\n(watching since the last change at {stamp}; "
                "Ctrl-C to stop)\n"
            )
        elif args.output:
            out.write(text + "\n")
        else:
            out.write(f"{r._iso(now)} {text}\n")
        out.flush()
    return r.EXIT_OK


def _with_changes(api: Api, obj: dict[str, Any], deadline: float | None) -> Iterator[dict]:
    yield obj
    yield from api.changes(obj, deadline)


def _style(out: Any) -> r.Style:
    return r.Style(r.use_colour(out.isatty(), os.environ))


def cmd_list(api: Api, args: argparse.Namespace, out: Any) -> int:
    items = api.list(args.all_namespaces)
    if args.output:
        print(_dump({"apiVersion": "v1", "kind": "List", "items": items}, args.output), file=out)
    elif not items:
        where = "any namespace" if args.all_namespaces else f'namespace "{api.namespace}"'
        print(f"No WSO2Clusters found in {where}.", file=sys.stderr)
    else:
        print(r.render_list(items, args.all_namespaces, time.time()), file=out)
    return r.EXIT_OK


def cmd_pause_resume(api: Api, args: argparse.Namespace, out: Any) -> int:
    obj = api.get(args.name)
    want = args.verb == "pause"
    ref = _ref(api, args.name)
    if r.spec_paused(obj) == want:
        print(
            f"{ref}: spec.update.paused is already {str(want).lower()}; nothing changed", file=out
        )
        if not want and r.phase_of(obj) == "Paused":
            print(
                f"  it holds at a canary step ({r.headline(obj)[0]}): "
                f"kubectl w2c promote {args.name}",
                file=out,
            )
        return r.EXIT_OK
    before = "true" if r.spec_paused(obj) else "false"
    api.patch(args.name, {"spec": {"update": {"paused": want}}})
    what = "no new node starts; a node in flight is finished first" if want else "rollout resumes"
    print(f"{ref}: spec.update.paused {before} -> {str(want).lower()} ({what})", file=out)
    tracking = r.argocd_tracking(obj)
    if tracking:
        print(
            f"  note: Argo CD manages it ({tracking}); if Git sets spec.update.paused, "
            "self-heal reverts this",
            file=out,
        )
    return r.EXIT_OK


def cmd_annotate(api: Api, args: argparse.Namespace, out: Any) -> int:
    key = {
        "retry": r.RETRY_ANNOTATION,
        "abort": r.ABORT_ANNOTATION,
        "promote": r.PROMOTE_FULL_ANNOTATION
        if getattr(args, "full", False)
        else r.PROMOTE_ANNOTATION,
    }[args.verb]
    obj = api.get(args.name)
    current = r.meta_annotations(obj).get(key)
    last = r.rollout_of(obj).get(r.TOKEN_FIELDS[key])
    token = r.new_token(time.time(), current, last)
    api.patch(args.name, {"metadata": {"annotations": {key: token}}})
    was = f" (was {r.txt(current, 80)})" if current else ""
    print(f"{_ref(api, args.name)}: annotation {key}={token}{was}", file=out)
    note = r.steering_note(obj, key)
    if note:
        print(f"  note: {note}", file=out)
    return r.EXIT_OK


def cmd_restart(api: Api, args: argparse.Namespace, out: Any) -> int:
    """A rolling restart, as `kubectl rollout restart` does: a new spec.restartedAt."""
    obj = api.get(args.name)
    current = (obj.get("spec") or {}).get("restartedAt")
    token = r.new_token(time.time(), current, None)
    api.patch(args.name, {"spec": {"restartedAt": token}})
    was = f" (was {r.txt(current, 64)})" if current else ""
    print(
        f"{_ref(api, args.name)}: spec.restartedAt={token}{was}; every node is restarted "
        "one at a time (maxUnavailable), the version unchanged",
        file=out,
    )
    tracking = r.argocd_tracking(obj)
    if tracking:
        print(
            f"  note: Argo CD manages it ({tracking}); if Git sets spec.restartedAt, self-heal "
            "reverts this (use the Argo CD action restart, or set it in Git)",
            file=out,
        )
    return r.EXIT_OK


def cmd_history(api: Api, args: argparse.Namespace, out: Any) -> int:
    obj = api.get(args.name)
    if args.output:
        print(_dump(list(r.history_rows(obj)), args.output), file=out)
    else:
        print(r.render_history(obj, time.time(), _style(out)), file=out)
    return r.EXIT_OK


def cmd_undo(api: Api, args: argparse.Namespace, out: Any) -> int:
    obj = api.get(args.name)
    tracking = r.argocd_tracking(obj)
    if tracking:
        raise CliError(
            f"{_ref(api, args.name)} is managed by Argo CD ({tracking}): undo would only make "
            "the Application OutOfSync (or self-heal would revert it); revert spec.version in Git "
            "instead"
        )
    try:
        version, why = r.undo_target(obj, args.to_revision)
    except r.UndoError as e:
        raise CliError(str(e)) from None
    before = obj["spec"].get("version")
    # The resourceVersion makes the patch conditional: a change since the read is a conflict.
    rv = obj["metadata"].get("resourceVersion")
    api.patch(args.name, {"metadata": {"resourceVersion": rv}, "spec": {"version": version}})
    print(
        f"{_ref(api, args.name)}: spec.version {r.txt(before, 64)} -> {version} ({why})", file=out
    )
    return r.EXIT_OK


def cmd_wait(api: Api, args: argparse.Namespace, out: Any) -> int:
    deadline = time.monotonic() + args.timeout
    first = api.get(args.name)
    verdict = r.wait_verdict(first, args.want)
    for obj in _with_changes(api, first, deadline):
        verdict = r.wait_verdict(obj, args.want)
        if verdict.state == "met":
            print(f"{_ref(api, args.name)} is {args.want}: {verdict.why}", file=out)
            return r.EXIT_OK
        if verdict.state == "failed":
            raise CliError(
                f"{_ref(api, args.name)} will not be {args.want}: {verdict.why}", r.EXIT_FAILED
            )
    raise CliError(
        f"timed out after {args.timeout:g}s waiting for {_ref(api, args.name)} to be "
        f"{args.want}: {verdict.why}",
        r.EXIT_TIMEOUT,
    )


VERBS = {
    "get": cmd_get,
    "list": cmd_list,
    "pause": cmd_pause_resume,
    "resume": cmd_pause_resume,
    "retry": cmd_annotate,
    "promote": cmd_annotate,
    "abort": cmd_annotate,
    "restart": cmd_restart,
    "history": cmd_history,
    "undo": cmd_undo,
    "wait": cmd_wait,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        api = Api(args.kubeconfig, args.context, args.namespace)
        return VERBS[args.verb](api, args, sys.stdout)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `kubectl w2c get -w | head`: the reader left; nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return r.EXIT_OK
    except Exception as e:
        if os.environ.get("W2C_DEBUG"):
            raise
        print(
            f"error: unexpected {type(e).__name__}: {_one_line(e)} (W2C_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        return r.EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

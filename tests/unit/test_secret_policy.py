"""The opt-in SSH Secret policy (secret_policy.py), and KubeAdapter.read_ssh_secret applying it
before it looks at any Secret data."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wso2_operator.kube import KubeAdapter, SecretProblem
from wso2_operator.secret_policy import (
    ACCESS_LABEL,
    ALLOWED_CLUSTERS_ANNOTATION,
    REQUIRE_LABEL_ENV,
    allowed_clusters,
    check_secret_use,
    required_by_env,
)

ON = {ACCESS_LABEL: "true"}

# Kubernetes object names (DNS-1123 subdomains, shortened) and arbitrary metadata around them.
names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
texts = st.text(max_size=30)
metadata = st.dictionaries(st.sampled_from([ACCESS_LABEL, ALLOWED_CLUSTERS_ANNOTATION, "x"]), texts)


def test_off_by_default_and_every_secret_is_usable() -> None:
    assert not required_by_env({})
    assert check_secret_use({}, {}, "wso2ei", False) is None


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " 1 "])
def test_env_turns_it_on(value: str) -> None:
    assert required_by_env({REQUIRE_LABEL_ENV: value})


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "2"])
def test_env_leaves_it_off(value: str) -> None:
    assert not required_by_env({REQUIRE_LABEL_ENV: value})


def test_unlabelled_secret_is_refused_with_the_label_to_add() -> None:
    refusal = check_secret_use(
        {}, {}, "wso2ei", True, secret_namespace="team-a", secret_name="wso2ei-ssh"
    )
    assert refusal is not None
    reason, message = refusal
    assert reason == "SecretNotAllowed"
    assert "team-a/wso2ei-ssh" in message and "'wso2ei'" in message
    assert 'vmops.dev/ssh-access="true"' in message
    assert "kubectl label secret -n team-a wso2ei-ssh vmops.dev/ssh-access=true" in message


@pytest.mark.parametrize("value", ["True", "TRUE", "yes", "1", "", " true"])
def test_label_must_be_exactly_true(value: str) -> None:
    refusal = check_secret_use({ACCESS_LABEL: value}, {}, "c", True)
    assert refusal is not None and refusal.reason == "SecretNotAllowed"


def test_label_alone_lets_every_cluster_of_the_namespace_use_it() -> None:
    assert check_secret_use(ON, {}, "any", True) is None
    assert check_secret_use(ON, None, "any", True) is None


def test_annotation_limits_the_clusters_and_names_the_one_to_add() -> None:
    ann = {ALLOWED_CLUSTERS_ANNOTATION: "wso2ei, wso2am"}
    assert check_secret_use(ON, ann, "wso2ei", True) is None
    assert check_secret_use(ON, ann, "wso2am", True) is None
    refusal = check_secret_use(
        ON, ann, "intruder", True, secret_namespace="team-a", secret_name="wso2ei-ssh"
    )
    assert refusal is not None and refusal.reason == "SecretNotAllowed"
    assert "vmops.dev/allowed-clusters" in refusal.message
    assert "add intruder" in refusal.message
    # The list itself is not disclosed to whoever reads the WSO2Cluster's status.
    assert "wso2am" not in refusal.message and "wso2ei," not in refusal.message


@pytest.mark.parametrize("value", ["*", "a,*", " * "])
def test_star_allows_every_cluster(value: str) -> None:
    assert check_secret_use(ON, {ALLOWED_CLUSTERS_ANNOTATION: value}, "zzz", True) is None


@pytest.mark.parametrize("value", ["", " ", ",", " , "])
def test_an_empty_allow_list_allows_nobody(value: str) -> None:
    refusal = check_secret_use(ON, {ALLOWED_CLUSTERS_ANNOTATION: value}, "c", True)
    assert refusal is not None and refusal.reason == "SecretNotAllowed"


def test_no_cluster_name_never_matches_a_list() -> None:
    ann = {ALLOWED_CLUSTERS_ANNOTATION: "a,,b"}
    assert check_secret_use(ON, ann, "", True) is not None


def test_names_match_whole_not_as_prefix_or_case_insensitively() -> None:
    ann = {ALLOWED_CLUSTERS_ANNOTATION: "wso2ei"}
    for other in ("wso2", "wso2ei2", "WSO2EI", "wso2ei,x"):
        assert check_secret_use(ON, ann, other, True) is not None, other


# ------------------------------------------------------------------------------ properties


@given(metadata, metadata, names)
def test_disabled_never_refuses(labels: dict, annotations: dict, cluster: str) -> None:
    assert check_secret_use(labels, annotations, cluster, False) is None


@given(metadata, metadata, names)
def test_enabled_decision_is_exactly_the_rule(
    labels: dict, annotations: dict, cluster: str
) -> None:
    refusal = check_secret_use(labels, annotations, cluster, True)
    labelled = labels.get(ACCESS_LABEL) == "true"
    listed = ALLOWED_CLUSTERS_ANNOTATION not in annotations or bool(
        {"*", cluster} & {n.strip() for n in annotations[ALLOWED_CLUSTERS_ANNOTATION].split(",")}
    )
    assert (refusal is None) == (labelled and listed)
    if refusal is not None:
        assert refusal.reason == "SecretNotAllowed"
        # It always says which label or annotation to set.
        key = ACCESS_LABEL if not labelled else ALLOWED_CLUSTERS_ANNOTATION
        assert key in refusal.message


@given(st.lists(names, max_size=6), names)
def test_a_listed_cluster_is_allowed_and_an_unlisted_one_is_not(
    listed: list[str], cluster: str
) -> None:
    ann = {ALLOWED_CLUSTERS_ANNOTATION: " , ".join(listed)}
    assert (check_secret_use(ON, ann, cluster, True) is None) == (cluster in listed)
    assert allowed_clusters(ann[ALLOWED_CLUSTERS_ANNOTATION]) == frozenset(listed)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=24))
def test_refusals_never_echo_label_or_annotation_values(marker: str) -> None:
    for labels, ann in (
        ({ACCESS_LABEL: marker}, {}),
        (ON, {ALLOWED_CLUSTERS_ANNOTATION: f"{marker},other"}),
    ):
        refusal = check_secret_use(labels, ann, "c", True, secret_namespace="n", secret_name="s")
        assert refusal is not None and marker not in refusal.message


# ------------------------------------------------------------- KubeAdapter.read_ssh_secret


class FakeCore:
    def __init__(self, secret: object) -> None:
        self.secret = secret

    def read_namespaced_secret(self, name: str, namespace: str, **_: object) -> object:
        return self.secret


def _secret(labels: dict | None, annotations: dict | None, data: dict | None) -> object:
    meta = SimpleNamespace(labels=labels, annotations=annotations)
    return SimpleNamespace(metadata=meta, data=data)


def _adapter(secret: object) -> KubeAdapter:
    adapter = KubeAdapter()
    adapter._core = FakeCore(secret)  # type: ignore[assignment]
    return adapter


KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETKEYBYTES\n"
HOSTS = "node1 ssh-ed25519 AAAAHOSTKEY\n"
DATA = {
    "ssh-privatekey": base64.b64encode(KEY).decode(),
    "known_hosts": base64.b64encode(HOSTS.encode()).decode(),
}


async def test_policy_runs_before_any_data_is_decoded() -> None:
    """Undecodable data and missing keys: with the policy on, the refusal comes first."""
    garbage = {"ssh-privatekey": "%%% not base64 %%%", "known_hosts": "@@@"}
    for data in (garbage, {}, None):
        adapter = _adapter(_secret({}, {}, data))
        with pytest.raises(SecretProblem) as info:
            await adapter.read_ssh_secret(
                "ns", "s", "ssh-privatekey", "known_hosts", cluster="c", require_label=True
            )
        assert info.value.reason == "SecretNotAllowed"
        assert "%%%" not in info.value.message and "@@@" not in info.value.message


async def test_refusal_carries_no_secret_bytes() -> None:
    adapter = _adapter(_secret({ACCESS_LABEL: "true"}, {ALLOWED_CLUSTERS_ANNOTATION: "a"}, DATA))
    with pytest.raises(SecretProblem) as info:
        await adapter.read_ssh_secret(
            "ns", "s", "ssh-privatekey", "known_hosts", cluster="b", require_label=True
        )
    text = f"{info.value.reason} {info.value.message} {info.value}"
    for leak in ("SECRETKEYBYTES", "AAAAHOSTKEY", DATA["ssh-privatekey"], DATA["known_hosts"]):
        assert leak not in text


async def test_env_var_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = _adapter(_secret(None, None, DATA))
    monkeypatch.delenv(REQUIRE_LABEL_ENV, raising=False)
    assert await adapter.read_ssh_secret("ns", "s", "ssh-privatekey", "known_hosts") == (
        KEY,
        HOSTS,
    )
    monkeypatch.setenv(REQUIRE_LABEL_ENV, "1")
    with pytest.raises(SecretProblem) as info:
        await adapter.read_ssh_secret("ns", "s", "ssh-privatekey", "known_hosts", cluster="c")
    assert info.value.reason == "SecretNotAllowed"
    # An explicit argument wins over the environment.
    got = await adapter.read_ssh_secret(
        "ns", "s", "ssh-privatekey", "known_hosts", require_label=False
    )
    assert got == (KEY, HOSTS)


def test_main_flag_sets_the_env_var_and_is_not_passed_to_kopf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--require-secret-label is one of the operator's own flags, like --observe-period."""
    import kopf.cli

    from wso2_operator import __main__ as entry
    from wso2_operator.kube import PEERING_SCOPE_ENV

    calls: list[list[str]] = []
    monkeypatch.setattr(kopf.cli, "main", lambda args, prog_name: calls.append(args))
    # setenv, not delenv: monkeypatch then restores the variables to what they were before the
    # test (main() sets both), so nothing leaks into operators that later tests start.
    monkeypatch.setenv(REQUIRE_LABEL_ENV, "")
    monkeypatch.setenv(PEERING_SCOPE_ENV, "")
    monkeypatch.setenv(entry.lifecycle.APISERVER_GONE_ENV, "")
    entry.main(["-n", "team-a", "--require-secret-label"])
    assert required_by_env(entry.os.environ)
    assert calls == [["run", "-m", "wso2_operator.handlers", "-n", "team-a"]]

    monkeypatch.setenv(REQUIRE_LABEL_ENV, "")
    entry.main(["-n", "team-a"])
    assert not required_by_env(entry.os.environ)


async def test_undecodable_values_are_a_problem_without_their_bytes() -> None:
    """Not a crash of the cluster's loop, and nothing of the value in the message."""
    bad_utf8 = base64.b64encode(b"node1 ssh-ed25519 AAAA\xff\xfeSECRETBYTES\n").decode()
    cases = [
        {**DATA, "known_hosts": bad_utf8},
        {**DATA, "ssh-privatekey": "%%%SECRETBYTES%%%"},
    ]
    for data in cases:
        adapter = _adapter(_secret({}, {}, data))
        with pytest.raises(SecretProblem) as info:
            await adapter.read_ssh_secret(
                "ns", "s", "ssh-privatekey", "known_hosts", cluster="c", require_label=False
            )
        assert info.value.reason == "InvalidSSHCredentials"
        assert "SECRETBYTES" not in f"{info.value.message} {info.value}"

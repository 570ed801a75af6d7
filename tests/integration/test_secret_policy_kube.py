"""KubeAdapter.read_ssh_secret against the real kube-apiserver, with the opt-in Secret policy:
the label vmops.dev/ssh-access="true" and the annotation vmops.dev/allowed-clusters."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import kubernetes
import pytest

from tests.conftest import Kube
from wso2_operator.kube import KubeAdapter, SecretProblem
from wso2_operator.secret_policy import ACCESS_LABEL, ALLOWED_CLUSTERS_ANNOTATION

KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw-PRIVATE\n"
HOSTS = "wso2ei01 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHOSTKEYMATERIAL\n"
KEYS = ("ssh-privatekey", "known_hosts")


@pytest.fixture
def adapter(kube: Kube) -> Iterator[KubeAdapter]:
    """A KubeAdapter on the test control plane's kubeconfig (the client's default config is
    process-wide, so it is put back afterwards)."""
    before = kubernetes.client.Configuration.get_default_copy()
    kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig))
    try:
        yield KubeAdapter()
    finally:
        kubernetes.client.Configuration.set_default(before)


def make_secret(
    kube: Kube,
    namespace: str,
    name: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/ssh-auth",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels or {},
                "annotations": annotations or {},
            },
            "data": {
                "ssh-privatekey": base64.b64encode(KEY).decode(),
                "known_hosts": base64.b64encode(HOSTS.encode()).decode(),
            },
        }
    )


async def read(
    adapter: KubeAdapter, namespace: str, name: str, cluster: str, enabled: bool | None
) -> tuple[bytes, str]:
    """enabled None: the default, from WSO2_REQUIRE_SECRET_LABEL."""
    kwargs = {} if enabled is None else {"require_label": enabled}
    return await adapter.read_ssh_secret(namespace, name, *KEYS, cluster=cluster, **kwargs)


def assert_refused(info: pytest.ExceptionInfo[SecretProblem], *must: str) -> None:
    problem = info.value
    assert problem.reason == "SecretNotAllowed", (problem.reason, problem.message)
    for text in must:
        assert text in problem.message, (text, problem.message)
    for leak in ("PRIVATE", "HOSTKEYMATERIAL", base64.b64encode(KEY).decode()[:20]):
        assert leak not in problem.message


async def test_unlabelled_secret_refused_when_enabled_and_used_when_disabled(
    kube: Kube, namespace: str, adapter: KubeAdapter
) -> None:
    make_secret(kube, namespace, "plain")
    with pytest.raises(SecretProblem) as info:
        await read(adapter, namespace, "plain", "wso2ei", True)
    assert_refused(
        info, f"{namespace}/plain", ACCESS_LABEL, f"kubectl label secret -n {namespace} plain"
    )
    # Off (the default): used as before.
    assert await read(adapter, namespace, "plain", "wso2ei", False) == (KEY, HOSTS)


async def test_env_var_switches_it_on(
    kube: Kube, namespace: str, adapter: KubeAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_secret(kube, namespace, "plain")
    monkeypatch.delenv("WSO2_REQUIRE_SECRET_LABEL", raising=False)
    assert await read(adapter, namespace, "plain", "wso2ei", None) == (KEY, HOSTS)
    monkeypatch.setenv("WSO2_REQUIRE_SECRET_LABEL", "1")
    with pytest.raises(SecretProblem) as info:
        await read(adapter, namespace, "plain", "wso2ei", None)
    assert_refused(info, ACCESS_LABEL)


async def test_labelled_secret_is_used_by_any_cluster_of_its_namespace(
    kube: Kube, namespace: str, adapter: KubeAdapter
) -> None:
    make_secret(kube, namespace, "labelled", labels={ACCESS_LABEL: "true"})
    for cluster in ("wso2ei", "wso2am"):
        assert await read(adapter, namespace, "labelled", cluster, True) == (KEY, HOSTS)


async def test_label_with_another_value_is_refused(
    kube: Kube, namespace: str, adapter: KubeAdapter
) -> None:
    make_secret(kube, namespace, "false-label", labels={ACCESS_LABEL: "false"})
    with pytest.raises(SecretProblem) as info:
        await read(adapter, namespace, "false-label", "wso2ei", True)
    assert_refused(info, ACCESS_LABEL)


async def test_allowed_clusters_annotation_limits_who_uses_it(
    kube: Kube, namespace: str, adapter: KubeAdapter
) -> None:
    make_secret(
        kube,
        namespace,
        "scoped",
        labels={ACCESS_LABEL: "true"},
        annotations={ALLOWED_CLUSTERS_ANNOTATION: "wso2ei,wso2am"},
    )
    with pytest.raises(SecretProblem) as info:
        await read(adapter, namespace, "scoped", "intruder", True)
    assert_refused(info, ALLOWED_CLUSTERS_ANNOTATION, "intruder")
    assert "wso2am" not in info.value.message  # the list is not disclosed
    # Label and annotation both allow it: used.
    assert await read(adapter, namespace, "scoped", "wso2ei", True) == (KEY, HOSTS)
    assert await read(adapter, namespace, "scoped", "wso2am", True) == (KEY, HOSTS)
    # Adding the name as the message says lets the refused cluster in.
    kube.run(
        "annotate", "secret", "scoped", "-n", namespace, "--overwrite",
        f"{ALLOWED_CLUSTERS_ANNOTATION}=wso2ei,wso2am,intruder",
    )  # fmt: skip
    assert await read(adapter, namespace, "scoped", "intruder", True) == (KEY, HOSTS)


async def test_star_annotation_allows_every_cluster(
    kube: Kube, namespace: str, adapter: KubeAdapter
) -> None:
    make_secret(
        kube,
        namespace,
        "star",
        labels={ACCESS_LABEL: "true"},
        annotations={ALLOWED_CLUSTERS_ANNOTATION: "*"},
    )
    assert await read(adapter, namespace, "star", "anything", True) == (KEY, HOSTS)


async def test_refusal_comes_before_a_missing_key(
    kube: Kube, namespace: str, adapter: KubeAdapter
) -> None:
    """The policy is checked before the data: an unlabelled Secret without the keys is
    SecretNotAllowed, not SecretKeyMissing (nothing about its data is revealed)."""
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "other", "namespace": namespace},
            "stringData": {"password": "hunter2-db-password"},
        }
    )
    with pytest.raises(SecretProblem) as info:
        await read(adapter, namespace, "other", "wso2ei", True)
    assert_refused(info, ACCESS_LABEL)
    assert "password" not in info.value.message and "hunter2" not in info.value.message
    # Disabled, the same Secret is reported as lacking the keys, as before.
    with pytest.raises(SecretProblem) as info2:
        await read(adapter, namespace, "other", "wso2ei", False)
    assert info2.value.reason == "SecretKeyMissing"


async def test_missing_secret_is_still_not_found(namespace: str, adapter: KubeAdapter) -> None:
    with pytest.raises(SecretProblem) as info:
        await read(adapter, namespace, "nope", "wso2ei", True)
    assert info.value.reason == "SecretNotFound"

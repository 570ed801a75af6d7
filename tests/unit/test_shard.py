"""Shard selectors (pure): Kubernetes' equality-based label selector semantics, and names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wso2_operator.shard import FINALIZER, PEERING, SelectorError, parse_selector

KEYS = st.sampled_from(["shard", "Shard", "env", "vmops.dev/shard", "team_x", "a"])
VALUES = st.sampled_from(["a", "A", "b", "prod", "a-b", "x.y", ""])
LABELS = st.dictionaries(KEYS, VALUES, max_size=4)


@st.composite
def selectors(draw: st.DrawFn) -> str:
    terms = []
    for _ in range(draw(st.integers(1, 3))):
        key, value = draw(KEYS), draw(VALUES)
        terms.append(draw(st.sampled_from([f"{key}={value}", f"{key}!={value}", key, f"!{key}"])))
    return ",".join(terms)


def test_equality_terms_match_as_in_kubernetes() -> None:
    labels = {"shard": "a", "env": "prod"}
    assert parse_selector("shard=a").matches(labels)
    assert parse_selector("shard==a, env=prod").matches(labels)
    assert not parse_selector("shard=a,env!=prod").matches(labels)
    assert parse_selector("team!=x").matches(labels)  # absent counts as "not x"
    assert parse_selector("shard").matches(labels) and not parse_selector("!shard").matches(labels)
    assert parse_selector("").matches({}) and parse_selector(None).matches(None)
    assert not parse_selector("shard=a").matches(None)


@pytest.mark.parametrize("bad", ["shard in (a,b)", "!shard=a", "=a", "shard=a,", "a b=c"])
def test_what_is_not_an_equality_selector_is_refused_by_name(bad: str) -> None:
    with pytest.raises(SelectorError, match="cannot read the selector term"):
        parse_selector(bad)


@given(value=VALUES, other=VALUES, labels=LABELS)
def test_complementary_and_distinct_value_shards_are_disjoint(
    value: str, other: str, labels: dict[str, str]
) -> None:
    mine, rest = parse_selector(f"shard={value}"), parse_selector(f"shard!={value}")
    assert mine.matches(labels) != rest.matches(labels)  # every cluster in exactly one
    if other != value:
        assert not (mine.matches(labels) and parse_selector(f"shard={other}").matches(labels))


@given(sel=selectors(), labels=LABELS)
def test_the_canonical_text_means_the_same(sel: str, labels: dict[str, str]) -> None:
    shard = parse_selector(sel)
    again = parse_selector(shard.selector)
    assert again == shard and again.matches(labels) == shard.matches(labels)
    reordered = parse_selector(",".join(reversed(shard.selector.split(","))))
    assert reordered.name == shard.name


@given(a=selectors(), b=selectors())
def test_different_selectors_never_share_a_finalizer_or_peering(a: str, b: str) -> None:
    sa, sb = parse_selector(a), parse_selector(b)
    if set(sa.terms) != set(sb.terms):
        assert sa.finalizer != sb.finalizer and sa.peering != sb.peering
    for s in (sa, sb):
        prefix, name = s.finalizer.split("/")
        assert prefix == "vmops.dev" and len(name) <= 63
        assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", name)
        # An object name (DNS subdomain): lowercase.
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", s.peering)


def test_names_read_well_for_the_usual_selector_and_unsharded_keeps_the_old_ones() -> None:
    assert parse_selector("shard=a").peering == "wso2-operator-shard-a"
    assert parse_selector("shard=a").finalizer == "vmops.dev/wso2-operator-shard-a"
    assert parse_selector("").finalizer == FINALIZER == "vmops.dev/wso2-operator"
    assert parse_selector("").peering == PEERING == "wso2-operator"

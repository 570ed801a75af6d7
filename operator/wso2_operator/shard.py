"""Sharding: which WSO2Clusters this operator process handles (pure, no I/O).

Several operator Deployments can split the WSO2Clusters between them by label, each started
with ``--selector`` (env ``WSO2_SHARD_SELECTOR``). The selector uses the equality-based
Kubernetes syntax, comma-separated terms that must all hold:

    shard=a        the label shard is "a"          (also shard==a)
    shard!=a       the label is absent or not "a"
    shard          the label is present
    !shard         the label is absent

Shards must be disjoint (``shard=a`` and ``shard=b``, or ``shard=a`` and ``shard!=a``):
two shards matching one cluster would both act on it. Each shard has its own name, derived
from its selector (``shard=a`` -> ``shard-a``), which names its kopf peering object and its
finalizer: kopf removes a finalizer of its own name from an object none of its handlers match,
so shards sharing one finalizer name would strip each other's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

SELECTOR_ENV = "WSO2_SHARD_SELECTOR"
FINALIZER = "vmops.dev/wso2-operator"
PEERING = "wso2-operator"

# A label key: an optional DNS-subdomain prefix and a name (Kubernetes' rules, length aside).
_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_TERM = re.compile(
    rf"\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*(?:(?P<op>==|=|!=)\s*(?P<value>{_VALUE}))?\s*"
)
# Finalizer names are "<prefix>/<name>", the name at most 63 characters.
_NAME_CHARS = 63 - len("wso2-operator-")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Term:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value

    def text(self) -> str:
        return {"exists": self.key, "!exists": f"!{self.key}"}.get(
            self.op, f"{self.key}{self.op}{self.value}"
        )


@dataclass(frozen=True)
class Shard:
    """The clusters one operator process handles: all of them without a selector."""

    terms: tuple[Term, ...] = ()

    @property
    def selector(self) -> str:
        return ",".join(t.text() for t in self.terms)

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(t.holds(labels or {}) for t in self.terms)

    @property
    def name(self) -> str:
        """ "" for the whole fleet; ``key-value`` for a single ``key=value`` of letters and
        digits; else a readable part and a digest of the terms (whatever their order or
        spacing), so that different selectors never share a name."""
        if not self.terms:
            return ""
        if len(self.terms) == 1 and self.terms[0].op == "=":
            t = self.terms[0]
            plain = re.compile(r"[a-z0-9]+")  # object names are lowercase
            if plain.fullmatch(t.key) and plain.fullmatch(t.value) and len(t.key + t.value) < 48:
                return f"{t.key}-{t.value}"
        canonical = ",".join(sorted(t.text() for t in self.terms))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
        readable = re.sub(
            r"[^a-z0-9]+", "-", canonical.lower().replace("!=", "-not-").replace("!", "not-")
        ).strip("-")
        return f"{readable[: _NAME_CHARS - 11].rstrip('-')}-{digest}"

    @property
    def finalizer(self) -> str:
        return f"{FINALIZER}-{self.name}" if self.terms else FINALIZER

    @property
    def peering(self) -> str:
        return f"{PEERING}-{self.name}" if self.terms else PEERING


def parse_selector(text: str | None) -> Shard:
    """A Shard from ``--selector`` text; empty or None: every cluster."""
    if not text or not text.strip():
        return Shard()
    terms = []
    for raw in text.split(","):
        m = _TERM.fullmatch(raw)
        if not m or (m["neg"] and m["op"]):
            raise SelectorError(
                f"cannot read the selector term {raw.strip()!r}: use key=value, key!=value, key "
                "or !key, comma-separated (set-based terms such as 'key in (a,b)' are not "
                "supported)"
            )
        neg, key, op, value = m["neg"], m["key"], m["op"], m["value"] or ""
        if op is None:
            terms.append(Term(key, "!exists" if neg else "exists"))
        else:
            terms.append(Term(key, "!=" if op == "!=" else "=", value))
    return Shard(tuple(terms))

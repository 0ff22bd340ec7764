"""Model references, traffic splits and weighted routing (sdk/deploy.py, sdk/serve_local.py): pure
functions, no cloud, no model."""

from __future__ import annotations

from collections import Counter

import pytest

from stackwise.deploy import ModelRef, parse_traffic_items, resolve_traffic, validate_traffic
from stackwise.errors import SpecError


@pytest.mark.parametrize("text, name, version, alias", [
    ("chat:3", "chat", "3", None),
    ("chat@champion", "chat", None, "champion"),
    ("models:/chat/12", "chat", "12", None),
    ("models:/chat@previous-champion", "chat", None, "previous-champion"),
    ("support.bot_v2:1", "support.bot_v2", "1", None),
])
def test_refs_parse(text, name, version, alias):
    ref = ModelRef.parse(text)
    assert (ref.name, ref.version, ref.alias) == (name, version, alias)


@pytest.mark.parametrize("text", ["chat", "chat:", "chat:x", "chat/3", "models:/chat:3", "@champion", ":3",
                                  "chat@", "chat:3:4", "", "chat@champ ion"])
def test_bad_refs_say_which_forms_work(text):
    with pytest.raises(SpecError, match="is not a model reference") as info:
        ModelRef.parse(text)
    assert "chat@champion" in info.value.fix


def test_cli_traffic_items():
    assert parse_traffic_items(["chat:2=90", "chat@champion=10"]) == {"chat:2": 90, "chat@champion": 10}
    assert parse_traffic_items(None) is None
    with pytest.raises(SpecError, match="not REF=PERCENT"):
        parse_traffic_items(["chat:2"])
    with pytest.raises(SpecError, match="not an integer percent"):
        parse_traffic_items(["chat:2=ninety"])
    with pytest.raises(SpecError, match="twice"):
        parse_traffic_items(["chat:2=50", "chat:2=50"])


def test_valid_split():
    assert validate_traffic({"chat:2": 90, "chat:3": "10"}, {"chat:2", "chat:3"}) == {"chat:2": 90, "chat:3": 10}
    assert validate_traffic({"chat:3": 100}, {"chat:2", "chat:3"}) == {"chat:3": 100}


@pytest.mark.parametrize("traffic, message", [
    ({"chat:2": 90, "chat:3": 20}, "sum to 110, not 100"),
    ({"chat:2": 50}, "sum to 50"),
    ({"chat:4": 100}, "chat:4, which is neither on the endpoint nor being deployed"),
    ({"chat:2": 101, "chat:3": -1}, "integer percent from 0 to 100"),
    ({"chat:2": 99.5, "chat:3": 0.5}, "integer percent"),
    ({"chat:2": True, "chat:3": 99}, "integer percent"),
    ({}, "empty"),
])
def test_bad_splits_are_refused_with_the_fix(traffic, message):
    with pytest.raises(SpecError, match=message) as info:
        validate_traffic(traffic, {"chat:2", "chat:3"})
    assert info.value.fix


class _Registry:
    """The two registry calls resolve_traffic makes, answering from a dict (aliases -> version)."""

    def __init__(self, aliases):
        self.aliases = aliases

    def version_by_alias(self, name, alias):
        from types import SimpleNamespace

        return SimpleNamespace(version=self.aliases[(name, alias)])


def test_traffic_keys_resolve_aliases_to_versions():
    registry = _Registry({("chat", "champion"): "2"})
    assert resolve_traffic(registry, {"chat@champion": 90, "models:/chat/3": 10}) == {"chat:2": 90, "chat:3": 10}
    with pytest.raises(SpecError, match="chat:2 twice"):
        resolve_traffic(registry, {"chat@champion": 50, "chat:2": 50})


def test_weighted_round_robin_is_exact_and_interleaved():
    from stackwise.serving import Router

    router = Router({"chat:2": 90, "chat:3": 10, "chat:1": 0})
    picks = [router.pick() for _ in range(100)]
    assert Counter(picks) == {"chat:2": 90, "chat:3": 10}
    assert all(Counter(picks[i:i + 10])["chat:3"] == 1 for i in range(0, 100, 10))  # spread, not bunched
    third = Router({"a:1": 34, "b:1": 33, "c:1": 33})
    assert Counter(third.pick() for _ in range(300)) == {"a:1": 102, "b:1": 99, "c:1": 99}


def test_user_routing_is_sticky_and_follows_the_weights():
    from stackwise.serving import Router

    router = Router({"chat:2": 80, "chat:3": 20})
    assert len({router.pick("alice") for _ in range(20)}) == 1
    shares = Counter(router.pick(f"user-{i}") for i in range(5000))
    assert 0.18 < shares["chat:3"] / 5000 < 0.22
    with pytest.raises(SpecError, match="no version on the endpoint carries traffic"):
        Router({"chat:2": 0}).pick()

"""API key format: random, parseable, stored as a SHA-256 of the whole key."""

from __future__ import annotations

import hashlib
import re

import pytest

from api.auth import KeyCache, Principal, key_sha256, new_key, parse_key_id


def test_a_new_key_has_the_documented_shape() -> None:
    fresh = new_key()
    assert re.fullmatch(r"sk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", fresh.key)
    assert fresh.key.startswith(f"sk_{fresh.key_id}_")
    assert fresh.key_sha256 == hashlib.sha256(fresh.key.encode()).hexdigest()
    assert fresh.key_sha256 == key_sha256(fresh.key)
    assert fresh.key not in fresh.key_sha256


def test_keys_do_not_repeat() -> None:
    keys = {new_key().key for _ in range(1000)}
    ids = {k.split("_")[1] for k in keys}
    assert len(keys) == 1000
    assert len(ids) == 1000


def test_parse_key_id_reads_well_formed_keys_only() -> None:
    fresh = new_key()
    assert parse_key_id(fresh.key) == fresh.key_id
    for bad in ["", "sk_", fresh.key + "x", fresh.key[:-1], fresh.key.upper(),
                "pk" + fresh.key[2:], " " + fresh.key, fresh.key.replace("_", "-", 1),
                f"sk_{'g' * 12}_{'a' * 43}", f"sk_{'a' * 12}_{'!' * 43}"]:
        assert parse_key_id(bad) is None, bad


def test_a_secret_with_underscores_still_parses() -> None:
    key = f"sk_{'ab' * 6}_{'_' * 43}"
    assert parse_key_id(key) == "ab" * 6


def test_the_cache_forgets_after_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("api.auth.time.monotonic", lambda: now[0])
    cache = KeyCache(5)
    who = Principal("a" * 12, "analyst", None)
    cache.put("d", who)
    now[0] = 104.9
    assert cache.get("d") == who
    now[0] = 105.0
    assert cache.get("d") is None


def test_a_zero_ttl_caches_nothing() -> None:
    cache = KeyCache(0)
    cache.put("d", Principal("a" * 12, "analyst", None))
    assert cache.get("d") is None

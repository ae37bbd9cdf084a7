"""The etcd adapter's last-seen copies: newest answer wins, bounded, LRU."""

from __future__ import annotations

import pytest

from plugin.store.etcd_cache import Seen, SeenCache


def test_an_older_answer_never_replaces_a_newer_one() -> None:
    cache = SeenCache(4)
    cache.remember("k", Seen(b"new", 7, 9))
    cache.remember("k", Seen(b"old", 5, 8))  # a slower thread's answer, given earlier
    assert cache.get("k") == Seen(b"new", 7, 9)
    cache.remember("k", Seen(None, 0, 9))  # as new: deleted at the same revision
    assert cache.get("k") == Seen(None, 0, 9)


def test_refresh_only_touches_keys_already_there() -> None:
    cache = SeenCache(4)
    cache.remember("peer", Seen(b"p", 3, 3), add=False)
    assert cache.get("peer") is None
    cache.remember("pool", Seen(b"1", 3, 3))
    cache.remember("pool", Seen(b"2", 4, 4), add=False)
    assert cache.get("pool") == Seen(b"2", 4, 4)


def test_the_least_recently_used_key_goes_first() -> None:
    cache = SeenCache(2)
    cache.remember("a", Seen(b"a", 1, 1))
    cache.remember("b", Seen(b"b", 2, 2))
    assert cache.get("a") is not None
    cache.remember("c", Seen(b"c", 3, 3))
    assert cache.get("b") is None and len(cache) == 2
    cache.forget("a")
    assert cache.get("a") is None and cache.get("c") is not None


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SeenCache(0)

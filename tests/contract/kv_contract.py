"""The KV port's contract (``ipam.store_port.KV``), as a reusable test class.

Run it against an adapter by subclassing and providing a ``kv`` fixture::

    from tests.contract.kv_contract import KVContract

    class TestSqliteKV(KVContract):
        @pytest.fixture
        def kv(self, tmp_path):
            store = SqliteKV(tmp_path / "kv.db")
            yield store
            store.close()

Every test writes only under its own random prefix (the ``ns`` fixture), so the
suite can run against a shared store such as a real etcd.

A subclass may also provide ``peer``: a second client of the same store, as
another process (a second manager, a second plugin process) would hold. The
tests with two clients check that whatever a client remembers between calls
(the etcd adapter's last-seen copy of a key) never outlives a change the other
made. An in-memory store has no second client: ``peer`` is then ``kv`` itself.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from ipam.store_port import KV


class Boom(Exception):
    pass


class KVContract:
    THREADS = 8
    INCREMENTS = 50

    @pytest.fixture
    def kv(self) -> Iterator[KV]:
        raise NotImplementedError("a KVContract subclass must provide a `kv` fixture")

    @pytest.fixture
    def peer(self, kv: KV) -> Iterator[KV]:
        yield kv

    @pytest.fixture
    def ns(self) -> str:
        return f"/contract-test/{uuid.uuid4().hex}/"

    # -- get / put / delete ----------------------------------------------------------

    def test_get_missing_is_none(self, kv: KV, ns: str) -> None:
        assert kv.get(ns + "missing") is None

    @pytest.mark.parametrize(
        "value",
        [b"x", b"", bytes(range(256)), b"\xff\xfe not utf-8 \x00", b"{" + b"7" * 200_000 + b"}"],
        ids=["short", "empty", "all-bytes", "not-utf8", "200k"],
    )
    def test_put_then_get_returns_the_same_bytes(self, kv: KV, ns: str, value: bytes) -> None:
        kv.put(ns + "k", value)
        got = kv.get(ns + "k")
        assert isinstance(got, bytes)
        assert got == value

    def test_put_overwrites(self, kv: KV, ns: str) -> None:
        kv.put(ns + "k", b"one")
        kv.put(ns + "k", b"two")
        assert kv.get(ns + "k") == b"two"

    def test_keys_are_independent_and_may_hold_any_text(self, kv: KV, ns: str) -> None:
        keys = [ns + "pools/10.1.2.0_24", ns + "pools/fd00::_64", ns + "a b", ns + "é/ü"]
        for i, key in enumerate(keys):
            kv.put(key, str(i).encode())
        assert [kv.get(k) for k in keys] == [b"0", b"1", b"2", b"3"]

    def test_delete_removes_and_missing_key_is_fine(self, kv: KV, ns: str) -> None:
        kv.put(ns + "k", b"v")
        kv.put(ns + "other", b"w")
        kv.delete(ns + "k")
        kv.delete(ns + "k")
        kv.delete(ns + "never")
        assert kv.get(ns + "k") is None
        assert kv.get(ns + "other") == b"w"

    # -- list --------------------------------------------------------------------------

    def test_list_returns_exactly_the_keys_with_the_prefix(self, kv: KV, ns: str) -> None:
        for name in ["a/1", "a/2", "a", "ab", "a_x", "a%y", "b/1", "A/1"]:
            kv.put(ns + name, name.encode())
        assert kv.list(ns + "a/") == {ns + "a/1": b"a/1", ns + "a/2": b"a/2"}
        assert set(kv.list(ns + "a")) == {ns + n for n in ["a/1", "a/2", "a", "ab", "a_x", "a%y"]}
        assert len(kv.list(ns)) == 8
        assert kv.list(ns + "zzz") == {}

    def test_list_prefix_has_no_wildcards(self, kv: KV, ns: str) -> None:
        # SQL LIKE would read _ and % as wildcards; a prefix must match literally.
        for name in ["a_x", "abx", "a%y", "aZy"]:
            kv.put(ns + name, b"v")
        assert set(kv.list(ns + "a_")) == {ns + "a_x"}
        assert set(kv.list(ns + "a%")) == {ns + "a%y"}

    def test_list_result_is_a_copy(self, kv: KV, ns: str) -> None:
        kv.put(ns + "k", b"v")
        listed = kv.list(ns)
        listed[ns + "k"] = b"changed"
        listed[ns + "new"] = b"added"
        assert kv.get(ns + "k") == b"v"
        assert kv.get(ns + "new") is None

    # -- update ------------------------------------------------------------------------

    def test_update_of_missing_key_gets_none_and_creates(self, kv: KV, ns: str) -> None:
        seen: list[bytes | None] = []

        def fn(current: bytes | None) -> bytes | None:
            seen.append(current)
            return b"created"

        assert kv.update(ns + "k", fn) == b"created"
        assert seen and all(s is None for s in seen)
        assert kv.get(ns + "k") == b"created"

    def test_update_gets_the_current_value_and_returns_what_it_wrote(self, kv: KV, ns: str) -> None:
        kv.put(ns + "k", b"1")
        assert kv.update(ns + "k", lambda cur: (cur or b"") + b"+1") == b"1+1"
        assert kv.get(ns + "k") == b"1+1"

    def test_update_returning_none_deletes(self, kv: KV, ns: str) -> None:
        kv.put(ns + "k", b"v")
        assert kv.update(ns + "k", lambda cur: None) is None
        assert kv.get(ns + "k") is None
        assert ns + "k" not in kv.list(ns)

    def test_update_returning_none_on_missing_key_leaves_it_missing(self, kv: KV, ns: str) -> None:
        assert kv.update(ns + "k", lambda cur: None) is None
        assert kv.get(ns + "k") is None
        assert kv.list(ns) == {}

    def test_update_returning_the_same_value_keeps_it(self, kv: KV, ns: str) -> None:
        kv.put(ns + "k", b"same")
        assert kv.update(ns + "k", lambda cur: cur) == b"same"
        assert kv.get(ns + "k") == b"same"

    def test_update_whose_fn_raises_writes_nothing(self, kv: KV, ns: str) -> None:
        kv.put(ns + "k", b"before")

        def fn(current: bytes | None) -> bytes | None:
            raise Boom("no")

        with pytest.raises(Boom):
            kv.update(ns + "k", fn)
        with pytest.raises(Boom):
            kv.update(ns + "missing", fn)
        assert kv.get(ns + "k") == b"before"
        assert kv.get(ns + "missing") is None
        # The store is still usable afterwards (no lock or transaction left behind).
        assert kv.update(ns + "k", lambda cur: b"after") == b"after"
        assert kv.get(ns + "k") == b"after"

    def test_update_touches_only_its_key(self, kv: KV, ns: str) -> None:
        kv.put(ns + "a", b"1")
        kv.put(ns + "b", b"2")
        kv.update(ns + "a", lambda cur: b"3")
        assert kv.get(ns + "b") == b"2"

    def test_concurrent_updates_never_lose_one(self, kv: KV, ns: str) -> None:
        self._count_concurrently([kv], ns + "counter", read=kv)

    def _count_concurrently(self, clients: list[KV], key: str, read: KV) -> None:
        """THREADS threads, taking the clients in turn, each add INCREMENTS to ``key``."""
        barrier = threading.Barrier(self.THREADS)
        errors: list[BaseException] = []

        def worker(client: KV) -> None:
            try:
                barrier.wait()
                for _ in range(self.INCREMENTS):
                    client.update(key, _increment)
            except BaseException as e:  # reported below, in the test thread
                errors.append(e)

        threads = [
            threading.Thread(target=worker, args=(clients[i % len(clients)],))
            for i in range(self.THREADS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "an update hung"
        assert errors == []
        assert read.get(key) == str(self.THREADS * self.INCREMENTS).encode()

    def test_concurrent_create_if_absent_has_one_winner(self, kv: KV, ns: str) -> None:
        key = ns + "claim"
        barrier = threading.Barrier(self.THREADS)
        winners: list[int] = []
        lock = threading.Lock()

        def claim(me: int) -> None:
            def fn(current: bytes | None) -> bytes | None:
                if current is not None:
                    raise Boom("taken")
                return str(me).encode()

            barrier.wait()
            try:
                kv.update(key, fn)
            except Boom:
                return
            with lock:
                winners.append(me)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(self.THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(winners) == 1
        assert kv.get(key) == str(winners[0]).encode()

    # -- two clients of one store ------------------------------------------------------

    def test_two_clients_taking_turns_never_lose_an_update(self, kv: KV, peer: KV, ns: str) -> None:
        key = ns + "counter"
        for i in range(20):
            (kv if i % 2 else peer).update(key, _increment)
        assert kv.get(key) == peer.get(key) == b"20"

    def test_two_clients_concurrently_never_lose_an_update(self, kv: KV, peer: KV, ns: str) -> None:
        self._count_concurrently([peer, kv], ns + "counter", read=kv)

    def test_update_after_the_other_client_deleted_the_key_sees_none(
        self, kv: KV, peer: KV, ns: str
    ) -> None:
        key = ns + "k"
        kv.update(key, lambda cur: b"1")
        peer.delete(key)
        assert kv.update(key, lambda cur: b"new" if cur is None else cur + b"+") == b"new"
        assert peer.get(key) == b"new"
        # And deleted through update, recreated with put.
        peer.update(key, lambda cur: None)
        kv.update(key, lambda cur: b"again" if cur is None else cur + b"+")
        peer.put(key, b"put")
        assert kv.update(key, lambda cur: (cur or b"none") + b"+") == b"put+"
        assert peer.get(key) == b"put+"

    def test_update_after_the_other_client_changed_the_key_sees_the_change(
        self, kv: KV, peer: KV, ns: str
    ) -> None:
        key = ns + "k"
        kv.update(key, lambda cur: b"a")
        peer.update(key, lambda cur: (cur or b"") + b"b")
        assert kv.update(key, lambda cur: (cur or b"") + b"c") == b"abc"
        peer.put(key, b"x")
        assert kv.update(key, lambda cur: (cur or b"") + b"y") == b"xy"
        assert peer.get(key) == b"xy"

    def test_a_no_op_is_decided_on_the_current_value(self, kv: KV, peer: KV, ns: str) -> None:
        # "Is the address allocated? Then there is nothing to do": deciding that
        # on a copy from before the other client freed it would lose the allocation.
        key = ns + "address"
        seen: list[bytes | None] = []

        def allocate(current: bytes | None) -> bytes | None:
            seen.append(current)
            return current if current == b"allocated" else b"allocated"

        kv.update(key, allocate)
        peer.update(key, lambda cur: b"free")
        assert kv.update(key, allocate) == b"allocated"
        assert seen[-1] == b"free"
        assert peer.get(key) == b"allocated"

    def test_a_no_op_on_a_missing_key_is_decided_on_the_current_value(
        self, kv: KV, peer: KV, ns: str
    ) -> None:
        key = ns + "k"
        assert kv.update(key, lambda cur: None) is None
        peer.put(key, b"there")
        # Leaves the value as it is; returns what the key now holds.
        assert kv.update(key, lambda cur: cur) == b"there"
        assert kv.update(key, lambda cur: None if cur is None else cur + b"!") == b"there!"
        assert peer.get(key) == b"there!"

    def test_a_refusal_is_decided_on_the_current_value(self, kv: KV, peer: KV, ns: str) -> None:
        # fn raising is a decision too ("the pool is not held"): not on an old copy.
        key = ns + "pool"
        kv.update(key, lambda cur: b"taken")
        peer.update(key, lambda cur: b"free")

        def claim(current: bytes | None) -> bytes | None:
            if current == b"taken":
                raise Boom("taken")
            return b"mine"

        assert kv.update(key, claim) == b"mine"
        assert peer.get(key) == b"mine"
        with pytest.raises(Boom):
            peer.update(key, lambda cur: claim(b"taken" if cur == b"mine" else cur))
        assert kv.get(key) == b"mine"


def _increment(current: bytes | None) -> bytes:
    return str(int(current or b"0") + 1).encode()

"""The watch relay's feed (its copy of the prefix, history and streams), its settings, and
``swarmnet relay``'s refusals. The relay in its own process, against etcd, is in
tests/integration/test_relay.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from plugin.cli import main
from plugin.relay.feed import Feed, frame
from plugin.settings import SettingsError, from_env

PREFIX = "/swarmnet/v1/peers/"


class Sub:
    def __init__(self, start: int, room: int = 1 << 30) -> None:
        self.start = start
        self.room = room
        self.got: list[bytes] = []
        self.ended = False

    def send(self, chunk: bytes) -> bool:
        if len(self.got) >= self.room:
            return False
        self.got.append(chunk)
        return True

    def end(self) -> None:
        self.ended = True

    def events(self) -> list[tuple[str, int]]:
        out = []
        for chunk in self.got:
            line = chunk.split(b"\r\n")[1]
            for e in json.loads(line)["result"].get("events", []):
                out.append((e["kv"]["key"], int(e["kv"]["mod_revision"])))
        return out


def put(key: str, rev: int) -> dict[str, Any]:
    return {"kv": {"key": key, "mod_revision": str(rev), "value": "e30="}}


def response(*events: dict[str, Any], rev: int | None = None) -> tuple[dict[str, Any], bytes]:
    last = rev or max(int(e["kv"]["mod_revision"]) for e in events)
    result = {"header": {"revision": str(last)}, "events": list(events)}
    return result, json.dumps({"result": result}).encode()


def listed(rev: int, *keys: str) -> Feed:
    feed = Feed(PREFIX, history=4)
    feed.reset({"header": {"revision": str(rev)}, "kvs": [{"key": k} for k in keys]})
    return feed


def test_a_response_goes_out_as_the_line_etcd_sent_framed_once() -> None:
    feed = listed(10)
    subs = [Sub(11), Sub(11)]
    for s in subs:
        feed.subscribe(s)
    result, line = response(put("a", 11))
    feed.apply(result, line)
    assert subs[0].got == subs[1].got == [frame(line)]
    assert subs[0].got[0] is subs[1].got[0]  # the same bytes, not an encoding per stream
    assert feed.revision == 11


def test_a_stream_ahead_of_a_response_gets_only_the_events_it_lacks() -> None:
    feed = listed(10)
    ahead = Sub(13)
    feed.subscribe(ahead)
    feed.apply(*response(put("a", 11), put("b", 12), put("c", 13)))
    feed.apply(*response(put("d", 12)))  # wholly before its start: nothing
    assert ahead.events() == [("c", 13)]


def test_a_late_watch_replays_the_history_and_an_old_one_is_compacted() -> None:
    feed = listed(10)
    for rev in range(11, 17):  # six responses, history keeps four
        feed.apply(*response(put(f"k{rev}", rev)))
    assert feed.base == 12
    assert not feed.covers(12) and feed.covers(13) and feed.covers(17)
    late = Sub(14)
    feed.subscribe(late)
    assert late.events() == [("k14", 14), ("k15", 15), ("k16", 16)]
    assert b'"compact_revision":"13"' in feed.compacted()


def test_the_range_answer_is_the_copy_at_its_revision() -> None:
    feed = listed(10, "b", "a")
    feed.apply(*response(put("c", 11)))
    feed.apply(*response({"type": "DELETE", "kv": {"key": "a", "mod_revision": "12"}}))
    body = json.loads(feed.range_body())
    assert [kv["key"] for kv in body["kvs"]] == ["b", "c"]
    assert body["header"]["revision"] == "12" and body["count"] == "2"
    assert feed.range_body() is feed.range_body()  # made once per revision


def test_a_stream_that_cannot_take_more_is_dropped() -> None:
    feed = listed(10)
    slow, fine = Sub(11, room=1), Sub(11)
    feed.subscribe(slow)
    feed.subscribe(fine)
    feed.apply(*response(put("a", 11)))
    feed.apply(*response(put("b", 12)))
    assert slow not in feed.subscribers and fine in feed.subscribers
    assert len(fine.got) == 2


def test_a_new_listing_or_a_lost_etcd_ends_every_stream() -> None:
    feed = listed(10)
    first = Sub(11)
    feed.subscribe(first)
    feed.reset({"header": {"revision": "20"}, "kvs": []})
    assert first.ended and not feed.subscribers and feed.base == 20
    second = Sub(21)
    feed.subscribe(second)
    feed.lost()
    assert second.ended and not feed.ready


def test_empty_responses_change_nothing() -> None:
    feed = listed(10)
    sub = Sub(11)
    feed.subscribe(sub)
    feed.apply({"header": {"revision": "15"}, "created": True}, b"{}")
    assert sub.got == [] and feed.revision == 10


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"PEER_RELAYS": "http://r:2381"}, "ETCD_ENDPOINTS is empty"),
        ({"ETCD_ENDPOINTS": "http://e:2379", "PEER_RELAYS": "r:2381"}, "PEER_RELAYS: 'r:2381'"),
        (
            {"ETCD_ENDPOINTS": "https://e:2379", "PEER_RELAYS": "http://r:2381",
             "ETCD_CA": "/etc/hostname"},
            "PEER_RELAYS: 'http://r:2381' is plain http://",
        ),
    ],
)  # fmt: skip
def test_relay_settings_that_cannot_work_are_refused(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        from_env(env)


def test_relay_settings() -> None:
    s = from_env({"ETCD_ENDPOINTS": "http://e:2379", "PEER_RELAYS": "http://a:1, http://b:2"})
    assert s.peer_relays == ("http://a:1", "http://b:2")
    assert from_env({}).peer_relays == ()


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--listen", "nowhere"], {"ETCD_ENDPOINTS": "http://e:2379"}, "--listen"),
        (["--listen", "0.0.0.0:99999"], {"ETCD_ENDPOINTS": "http://e:2379"}, "--listen"),
        ([], {}, "ETCD_ENDPOINTS: the relay needs"),
        (["--cert", "/x.pem"], {"ETCD_ENDPOINTS": "http://e:2379"}, "--cert, --key"),
        (["--cert", "/no/x.pem", "--key", "/no/k.pem"], {"ETCD_ENDPOINTS": "http://e:2379"},
         "--cert, --key, --client-ca"),
    ],
)  # fmt: skip
def test_swarmnet_relay_refuses_bad_settings(
    args: list[str],
    env: dict[str, str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ETCD_ENDPOINTS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["relay", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_the_plugin_follows_peers_through_its_relays_and_writes_to_etcd() -> None:
    from core.layout import StoreLayout
    from plugin.app import STORE_ROOT, _etcd
    from plugin.store.memory import MemoryKV

    settings = from_env(
        {"ETCD_ENDPOINTS": "http://192.0.2.1:2379", "PEER_RELAYS": "http://192.0.2.2:2381"}
    )
    kv, control = _etcd(settings, MemoryKV(), StoreLayout(STORE_ROOT))
    assert kv.endpoints == ("http://192.0.2.1:2379",)
    assert control.kv is kv and control.watch_kv.endpoints == ("http://192.0.2.2:2381",)
    assert "peers through relays http://192.0.2.2:2381" in control.describe()
    direct = _etcd(from_env({"ETCD_ENDPOINTS": "http://192.0.2.1:2379"}), MemoryKV(),
                   StoreLayout(STORE_ROOT))[1]
    assert direct.watch_kv is direct.kv

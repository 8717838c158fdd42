"""Open and Click events (relay/events/model.py), their history entries and statistics
(relay/history/entries.py), and the public routes' pure helpers: the client address
behind trusted proxies and the Location header (relay/admin/api/tracking.py)."""

from __future__ import annotations

import ipaddress

import msgspec

from relay.admin.api.tracking import client_ip, location
from relay.events.destinations import event_type_key
from relay.events.model import EVENT_TYPE_NAMES, EVENT_TYPES, click_event, open_event
from relay.history.entries import entries_from_event, stat_deltas
from relay.history.keys import DIMENSIONS, METRICS
from relay.history.model import HistoryMessage, RecipientHistory
from relay.queue.records import MessageRecord

MSG = MessageRecord(id="0192a1b2c3d4e5f60718", sender="news@example.com",
                    recipients=["a@gmail.test", "b@ok.test"], received_at=1_800_000_000.0,
                    size=10, configuration_set="news", tenant="acme")
AT = 1_800_000_100.0
HIST = HistoryMessage(id=MSG.id, tenant="acme", identity="example.com",
                      configuration_set="news",
                      recipients=[RecipientHistory("a@gmail.test", "delivered", provider="gmail"),
                                  RecipientHistory("b@ok.test", "delivered", provider="other")])


def test_open_and_click_events_are_shaped_as_ses_publishes_them() -> None:
    assert "Open" in EVENT_TYPES and "Click" in EVENT_TYPES
    assert "open" in EVENT_TYPE_NAMES and "click" in EVENT_TYPE_NAMES
    ev = open_event(MSG, "b@ok.test", AT, ip="198.51.100.9", user_agent="UA",
                    automated=False, reason="")
    assert event_type_key(ev) == "open"
    data = msgspec.to_builtins(ev)
    assert data["mail"]["destination"] == ["b@ok.test"]
    assert data["open"] == {"ipAddress": "198.51.100.9", "timestamp": "2027-01-15T08:01:40.000Z",
                            "userAgent": "UA", "automated": False, "automatedReason": ""}
    ev = click_event(MSG, "a@gmail.test", AT, ip="203.0.113.5", user_agent="Scanner",
                     link="https://shop.example/", tags=(("c", "spring"), ("c", "may"),
                                                         ("k", "v")),
                     automated=True, reason="user agent: scanner")
    assert event_type_key(ev) == "click"
    c = msgspec.to_builtins(ev)["click"]
    assert c["link"] == "https://shop.example/"
    assert c["linkTags"] == {"c": ["spring", "may"], "k": ["v"]}
    assert c["automated"] is True and c["automatedReason"] == "user agent: scanner"


def test_a_persons_hits_count_by_provider_and_tenant_a_machines_do_not() -> None:
    human = open_event(MSG, "a@gmail.test", AT, ip="198.51.100.9", user_agent="UA",
                       automated=False, reason="")
    ((qid, entry),) = entries_from_event(human, msgspec.json.encode(human))
    assert qid == MSG.id and entry.kind == "open" and entry.recipient == "a@gmail.test"
    assert entry.remote_ip == "198.51.100.9" and entry.ts == AT
    deltas = stat_deltas(entry, HIST)
    assert (int(AT) // 900 * 900, DIMENSIONS["provider"], "gmail", METRICS["opened"], 1) \
        in deltas
    assert (int(AT) // 900 * 900, DIMENSIONS["tenant"], "acme", METRICS["opened"], 1) in deltas
    bot = click_event(MSG, "a@gmail.test", AT, ip="203.0.113.5", user_agent="curl/8",
                      link="https://shop.example/", tags=(), automated=True,
                      reason="user agent: HTTP library")
    ((_, entry),) = entries_from_event(bot, msgspec.json.encode(bot))
    assert entry.kind == "click" and entry.response == "https://shop.example/"
    assert entry.detail == "automated: user agent: HTTP library"
    assert stat_deltas(entry, HIST) == []
    clicked = click_event(MSG, "b@ok.test", AT, ip="x", user_agent="UA", link="l", tags=(),
                          automated=False, reason="")
    ((_, entry),) = entries_from_event(clicked, msgspec.json.encode(clicked))
    assert (int(AT) // 900 * 900, DIMENSIONS["provider"], "other", METRICS["clicked"], 1) \
        in stat_deltas(entry, HIST)


def test_existing_metric_codes_are_kept() -> None:
    assert list(METRICS)[:8] == ["sent", "delivered", "deferred", "bounced", "complained",
                                 "rejected", "attempts", "suppressed"]
    assert METRICS["suppressed"] == b"u" and len(set(METRICS.values())) == len(METRICS)


PROXIES = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))


def test_client_address_believes_forwarded_for_only_from_trusted_proxies() -> None:
    # A stranger's X-Forwarded-For is a lie it tells about itself.
    assert client_ip("203.0.113.5", "198.51.100.9", PROXIES) == "203.0.113.5"
    assert client_ip("203.0.113.5", "198.51.100.9", ()) == "203.0.113.5"
    # Through the proxies: the rightmost address no trusted proxy is.
    assert client_ip("127.0.0.1", "198.51.100.9", PROXIES) == "198.51.100.9"
    assert client_ip("127.0.0.1", "1.2.3.4, 198.51.100.9, 10.1.1.1", PROXIES) == \
        "198.51.100.9"
    assert client_ip("127.0.0.1", "10.2.2.2, 10.1.1.1", PROXIES) == "10.2.2.2"
    assert client_ip("127.0.0.1", "", PROXIES) == "127.0.0.1"
    # Garbage stops the walk: nothing to its left is believed.
    assert client_ip("127.0.0.1", "198.51.100.9, not-an-ip", PROXIES) == "127.0.0.1"
    assert client_ip("::ffff:127.0.0.1", "198.51.100.9", PROXIES) == "198.51.100.9"
    # A header of any size is read on its last 2 KB only.
    huge = "1.1.1.1, " * 100_000 + "198.51.100.9"
    assert client_ip("127.0.0.1", huge, PROXIES) == "198.51.100.9"


def test_location_cannot_inject_a_header() -> None:
    assert location("https://shop.example/sale?a=1&b=2#x") == \
        "https://shop.example/sale?a=1&b=2#x"
    assert location("https://a.example/x\r\nSet-Cookie: y") == \
        "https://a.example/x%0D%0ASet-Cookie:%20y"
    assert location("https://例え.jp/ü") == "https://%E4%BE%8B%E3%81%88.jp/%C3%BC"

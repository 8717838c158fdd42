"""Every event about a message carries its tenant: top-level `tenant` and
mail.tags["ses:tenant"]; a record written before tenants belongs to `default`."""

from __future__ import annotations

from pathlib import Path

import msgspec

from relay.events import model as M
from relay.queue.records import MessageRecord


def _record(**kw: object) -> MessageRecord:
    return MessageRecord(id="q1", sender="a@example.com", recipients=["b@example.net"],
                         received_at=1_700_000_000.0, size=10, **kw)  # type: ignore[arg-type]


def _all_events(msg: MessageRecord) -> list[M.Event]:
    now = msg.received_at + 5
    return [
        M.send_event(msg),
        M.delivery_event(msg, ["b@example.net"], "250 ok", now, "relay.test"),
        M.bounce_event(msg, ["b@example.net"], "550 5.1.1 no", now, "relay.test"),
        M.delay_event(msg, ["b@example.net"], "451 4.4.1 later", now, now + 60, "relay.test"),
        M.complaint_event(msg, ["b@example.net"], now),
        M.feedback_bounce_event(msg, [("b@example.net", "failed", "5.1.1", "x")], now,
                                "dns; mx", bounce_type="Permanent", subtype="General"),
        M.subscription_event(msg, "b@example.net", now),
        M.reject_event(msg, "no"),
    ]


def test_every_message_event_names_the_tenant() -> None:
    msg = _record(tenant="acme", configuration_set="news")
    for ev in _all_events(msg):
        doc = msgspec.json.decode(msgspec.json.encode(ev))
        assert doc["tenant"] == "acme", ev.eventType
        assert doc["mail"]["tags"]["ses:tenant"] == ["acme"], ev.eventType
        assert doc["mail"]["tags"]["ses:configuration-set"] == ["news"], ev.eventType


def test_record_from_before_tenants_is_the_default_tenant() -> None:
    # A record encoded without the tenant field (array-like, shorter) still decodes.
    fields = msgspec.msgpack.decode(msgspec.msgpack.encode(_record()))
    assert fields[-1] == ""  # the tenant, last
    old = msgspec.msgpack.encode(fields[:-1])
    decoded = msgspec.msgpack.decode(old, type=MessageRecord)
    assert decoded.tenant == ""
    for ev in _all_events(decoded):
        assert ev.tenant == "default"
        assert ev.mail.tags["ses:tenant"] == ["default"]


def test_tags_of_keeps_the_message_tags() -> None:
    msg = _record(tags={"campaign": ["spring"]})
    assert M.tags_of(msg) == {"campaign": ["spring"], "ses:tenant": ["default"],
                              "ses:operation": ["SendSmtpEmail"]}


def test_reputation_status_change_routes_by_tenant_and_set() -> None:
    from relay.tenants.model import StatusRecord

    new = StatusRecord(status="Paused", reason="complaint rate 0.6 % is at or above 0.5 %",
                       automatic=True, changed_at=1_700_000_000.0, complaint_rate=0.006,
                       volume=1000)
    ev = M.reputation_event(scope="configurationSet", name="news", tenant="acme",
                            old="UnderReview", new=new, now=1_700_000_000.0)
    doc = msgspec.json.decode(msgspec.json.encode(ev))
    assert doc["eventType"] == "ReputationStatusChange" and doc["tenant"] == "acme"
    assert doc["mail"]["tags"] == {"ses:tenant": ["acme"], "ses:configuration-set": ["news"]}
    change = doc["reputationStatusChange"]
    assert (change["oldStatus"], change["newStatus"], change["automatic"]) == (
        "UnderReview", "Paused", True)
    assert change["lastFreshStart"] == ""
    tenant_ev = M.reputation_event(scope="tenant", name="acme", tenant="acme",
                                   old="Healthy", new=new, now=1_700_000_000.0)
    assert "ses:configuration-set" not in tenant_ev.mail.tags


def test_a_tenant_owned_destination_gets_only_its_tenants_events(tmp_path: Path) -> None:
    from relay.clock import FakeClock
    from relay.config import from_dict
    from relay.events.destinations import EventRouter

    cfg = from_dict({"server": {"state_dir": str(tmp_path)}, "event_destination": [
        {"name": "all", "type": "file"},
        {"name": "acme-only", "type": "file", "tenant": "acme"}]})
    router = EventRouter(lambda: cfg, None, FakeClock(), tmp_path)  # type: ignore[arg-type]
    names = [[d.name for d in router.destinations(M.send_event(_record(tenant=t)))]
             for t in ("acme", "other", "")]
    assert names == [["all", "acme-only"], ["all"], ["all"]]

"""The MAIL FROM of an identity: the one set through the SES API on its record wins over
the [[identity]] config's; the most specific identity covering the address decides;
identities.json files written before the fields existed still read."""

from __future__ import annotations

import json
from pathlib import Path

from relay.config import Identity
from relay.identity.outbound import mail_from_settings
from relay.identity.store import IdentityRecord, IdentityStore

CONFIG = [Identity(domain="a.test", mail_from="cfg.a.test", on_mx_failure="reject"),
          Identity(domain="b.test", mail_from="cfg.b.test")]


def test_the_record_wins_over_the_config_and_the_config_stays_otherwise() -> None:
    records = {"a.test": IdentityRecord("a.test", mail_from="api.a.test")}
    assert mail_from_settings("x@a.test", CONFIG, records) == ("api.a.test", "use_default")
    assert mail_from_settings("x@b.test", CONFIG, records) == ("cfg.b.test", "use_default")
    assert mail_from_settings("x@c.test", CONFIG, records) == ("", "use_default")
    # A record without a MAIL FROM leaves the config's.
    assert mail_from_settings("x@a.test", CONFIG, {"a.test": IdentityRecord("a.test")}) == \
        ("cfg.a.test", "reject")
    # An address record is more specific than its domain's config.
    records = {"x@b.test": IdentityRecord("x@b.test", mail_from="mf.b.test",
                                          on_mx_failure="reject")}
    assert mail_from_settings("X@b.test", CONFIG, records) == ("mf.b.test", "reject")
    assert mail_from_settings("y@b.test", CONFIG, records) == ("cfg.b.test", "use_default")


def test_set_and_clear_and_an_old_file_reads(tmp_path: Path) -> None:
    path = tmp_path / "identities.json"
    path.write_text(json.dumps({"version": 1, "identities": {
        "old.test": {"name": "old.test", "verified": True}}}))
    store = IdentityStore(path)
    assert store.get("old.test") == IdentityRecord("old.test", verified=True)
    rec = store.set_mail_from("old.test", "Bounce.Old.Test", "reject")
    assert (rec.mail_from, rec.on_mx_failure, rec.verified) == ("bounce.old.test", "reject",
                                                                True)
    assert IdentityStore(path).get("old.test") == rec
    cleared = store.set_mail_from("old.test", "", "reject")
    assert (cleared.mail_from, cleared.on_mx_failure) == ("", "use_default")

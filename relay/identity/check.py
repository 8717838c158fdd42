"""DNS checks of an identity, record by record, and the DKIM rotation tick.

`check_identity()` looks up what an identity needs (DKIM TXT per selector, the MAIL FROM
subdomain's MX and SPF TXT, `_dmarc` TXT) and says for each what is published, what is
missing and the exact record to add, and whether SPF and DKIM align with the From domain
(DMARC relaxed alignment, RFC 7489 §3.1). The judgement (`judge_*`) is pure; only
`check_identity()` and `rotation_tick()` do DNS, through the Resolver protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from relay.config import Identity
from relay.dkim import rotation
from relay.dkim.keys import DkimKey, DomainKeys, KeyStore
from relay.dns.answers import Lookup, MxRecord, Resolver
from relay.identity import spf
from relay.identity.model import domain_of, is_address

log = logging.getLogger(__name__)

OK, MISSING, MISMATCH, PENDING, REMOVE, WARN, TEMPFAIL = (
    "ok", "missing", "mismatch", "pending", "remove", "warning", "tempfail")


@dataclass(frozen=True)
class Row:
    check: str      # dkim | mail_from_mx | mail_from_spf | dmarc | dkim_alignment | spf_alignment
    name: str       # the DNS name looked up ("" for alignment rows)
    rtype: str      # TXT | MX | ""
    status: str     # ok | missing | mismatch | pending | remove | warning | tempfail
    expected: str = ""   # the exact record to publish (or keep)
    found: list[str] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Report:
    identity: str
    domain: str
    rows: list[Row]
    verified: bool
    switched_to: str = ""  # a pending DKIM selector that became active during this check

    def to_json(self) -> dict[str, object]:
        return {"identity": self.identity, "domain": self.domain, "verified": self.verified,
                "switched_to": self.switched_to,
                "records": [r.__dict__ for r in self.rows]}


def dkim_tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        k, eq, v = part.partition("=")
        if eq:
            tags[k.strip().lower()] = "".join(v.split())
    return tags


def key_matches(key: DkimKey, found: list[str]) -> bool:
    for rec in found:
        tags = dkim_tags(rec)
        if tags.get("p") == key.public and tags.get("k", "rsa") == key.algorithm:
            return True
    return False


def judge_dkim(domain: str, key: DkimKey, lookup: Lookup[str], role: str) -> Row:
    name = f"{key.selector}._domainkey.{domain}"
    found = list(lookup.records)
    if lookup.temporary:
        return Row("dkim", name, "TXT", TEMPFAIL, key.record, found, lookup.reason)
    if role == "remove":
        return Row("dkim", name, "TXT", REMOVE if found else OK, "", found,
                   "retired selector past its grace period: safe to remove")
    if key_matches(key, found):
        note = {"pending": "next selector: published, relay switches to it now",
                "retired": "retired selector: keep until the grace period ends"}.get(role, "")
        return Row("dkim", name, "TXT", OK, key.record, found, note)
    status = MISMATCH if found else MISSING
    if role == "pending":
        return Row("dkim", name, "TXT", PENDING, key.record, found,
                   "next selector (rotation): publish this record; relay switches once seen")
    return Row("dkim", name, "TXT", status, key.record, found,
               "another key is published here" if found else "publish this record")


def judge_mx(name: str, lookup: Lookup[MxRecord], hostname: str) -> Row:
    found = [f"{r.preference} {r.exchange or '.'}" for r in lookup.records]
    expected = f"10 {hostname}"
    if lookup.temporary:
        return Row("mail_from_mx", name, "MX", TEMPFAIL, expected, found, lookup.reason)
    if any(not r.is_null for r in lookup.records):
        return Row("mail_from_mx", name, "MX", OK, expected, found,
                   "bounces to the MAIL FROM domain reach relay's feedback listener")
    return Row("mail_from_mx", name, "MX", MISSING, expected, found,
               "without it the identity's on_mx_failure applies")


def judge_txt(check: str, name: str, lookup: Lookup[str], prefix: str, expected: str) -> Row:
    found = list(lookup.records)
    if lookup.temporary:
        return Row(check, name, "TXT", TEMPFAIL, expected, found, lookup.reason)
    mine = [r for r in found if r.lower().replace(" ", "").startswith(prefix.lower())]
    if len(mine) > 1:
        return Row(check, name, "TXT", MISMATCH, expected, found,
                   f"more than one {prefix} record: receivers treat that as none")
    if mine:
        return Row(check, name, "TXT", OK, expected, found)
    return Row(check, name, "TXT", MISSING, expected, found, "publish this record")


def aligned(child: str, parent: str) -> bool:
    return child == parent or child.endswith("." + parent)


def _signing_domain(domain: str, keys: KeyStore) -> tuple[str, DomainKeys | None]:
    parts = domain.split(".")
    for i in range(len(parts) - 1):
        cand = ".".join(parts[i:])
        state = keys.get(cand)
        if state is not None:
            return cand, state
    return domain, None


async def judge_spf_coverage(row: Row, domain: str, ips: Sequence[str], hostname: str,
                             resolver: Resolver) -> Row:
    """`row` (an OK mail_from_spf row) re-judged: does the published record give `pass`
    for every sending IP (`ips`; none configured: the addresses of `hostname`)?"""
    published = spf.spf_records(row.found)[0]
    addresses = list(ips)
    if not addresses:
        lookup = await resolver.addresses(hostname)
        addresses = list(lookup.records)
        if not addresses:
            return replace(row, note=f"no sending IPs configured and {hostname} has no "
                                     "address: could not check what the SPF record covers")
    results = {ip: await spf.check_host(published, domain, ip, resolver) for ip in addresses}
    if any(r == spf.TEMPERROR for r in results.values()):
        return replace(row, status=TEMPFAIL, note="SPF evaluation: DNS temporary failure")
    bad = [f"{ip} ({r})" for ip, r in results.items() if r != spf.PASS]
    if bad:
        return replace(row, status=MISMATCH,
                       note="the published SPF record does not authorize relay's sending "
                            f"IP(s) {', '.join(bad)}: publish the record below")
    return replace(row, note=f"covers relay's sending IPs: {', '.join(addresses)}")


async def check_identity(name: str, *, resolver: Resolver, keys: KeyStore,
                         settings: Identity | None, hostname: str, default_domain: str,
                         spf_record: str, now: float, grace: float,
                         sending_ips: Sequence[str] = ()) -> Report:
    """Look everything up; switch to a pending DKIM selector whose records are published.

    `spf_record` is the recommended SPF record (spf.recommended_record); a published one
    is checked to authorize `sending_ips` (none: the addresses of `hostname`)."""
    domain = domain_of(name) if is_address(name) else name
    rows: list[Row] = []
    dkim_domain, state = _signing_domain(domain, keys)
    verified = False
    switched = ""
    if state is None or state.active is None:
        rows.append(Row("dkim", f"<selector>._domainkey.{domain}", "TXT", MISSING, "", [],
                        f"no DKIM keys: run `relay dkim keygen {domain}`"))
    else:
        gone = {g.name for g in rotation.removable(state, now, grace)}
        published: set[str] = set()
        active_ok = True
        for gen in state.generations:
            role = "remove" if gen.name in gone else gen.status
            for key in gen.keys:
                lookup = await resolver.txt(f"{key.selector}._domainkey.{dkim_domain}")
                row = judge_dkim(dkim_domain, key, lookup, role)
                rows.append(row)
                if key_matches(key, list(lookup.records)):
                    published.add(key.selector)
                if gen.status == "active" and row.status != OK:
                    active_ok = False
        new_state = rotation.switch(state, now, published)
        if new_state is not None and new_state.active is not None:
            keys.update(new_state)
            switched = new_state.active.name
            log.info("DKIM %s: switched to selector %s", dkim_domain, switched)
            active_ok = True
        verified = active_ok
    mail_from = settings.mail_from.lower() if settings and settings.mail_from else ""
    return_domain = default_domain
    if mail_from:
        mx_row = judge_mx(mail_from, await resolver.mx(mail_from), hostname)
        rows.append(mx_row)
        spf_row = judge_txt("mail_from_spf", mail_from, await resolver.txt(mail_from),
                            "v=spf1", spf_record)
        if spf_row.status == OK:
            spf_row = await judge_spf_coverage(spf_row, mail_from, sending_ips, hostname,
                                               resolver)
        rows.append(spf_row)
        if mx_row.status == OK:
            return_domain = mail_from
    rows.append(judge_txt("dmarc", f"_dmarc.{domain}", await resolver.txt(f"_dmarc.{domain}"),
                          "v=DMARC1", f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"))
    rows.append(Row("dkim_alignment", "", "", OK if aligned(domain, dkim_domain) and verified
                    else WARN, "", [f"d={dkim_domain}"],
                    "DKIM d= aligns with the From domain" if verified
                    else "DKIM will not pass until the active selector is published"))
    spf_ok = aligned(return_domain, domain)
    rows.append(Row("spf_alignment", "", "", OK if spf_ok else WARN, "",
                    [f"return path @{return_domain}"],
                    "SPF aligns with the From domain" if spf_ok else
                    f"set mail_from = \"bounce.{domain}\" on this identity for SPF alignment; "
                    "DMARC can still pass through DKIM"))
    return Report(name, domain, rows, verified, switched)


async def rotation_tick(keys: KeyStore, resolver: Resolver, *, now: float,
                        rotate_every: float) -> list[str]:
    """Start due rotations and switch to pending selectors now published; what happened."""
    done: list[str] = []
    for domain in keys.domains():
        state = keys.get(domain, fresh=True)
        if state is None:
            continue
        if rotation.due(state, now, rotate_every):
            gen = keys.rotate(domain)
            done.append(f"{domain}: rotation started, publish selector {gen.name}")
            log.warning("DKIM %s: new selector %s; publish: %s", domain, gen.name,
                        "; ".join(f"{k.selector}._domainkey.{domain} TXT {k.record}"
                                  for k in gen.keys))
            state = keys.get(domain, fresh=True)
            assert state is not None
        pending = state.pending
        if pending is None:
            continue
        published = set()
        for key in pending.keys:
            lookup = await resolver.txt(f"{key.selector}._domainkey.{domain}")
            if key_matches(key, list(lookup.records)):
                published.add(key.selector)
        new_state = rotation.switch(state, now, published)
        if new_state is not None:
            keys.update(new_state)
            done.append(f"{domain}: switched to selector {pending.name}")
            log.info("DKIM %s: switched to selector %s", domain, pending.name)
    return done

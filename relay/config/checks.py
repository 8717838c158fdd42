"""Rules that span sections (names that refer to each other, listen addresses that clash,
the TLS pair on disk, ...) and config_warnings (valid but unsafe settings). Each rule
yields problems naming the key path; load.py runs them on a config whose sections each
passed their own validation.
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.parse
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from pathlib import Path

from relay.config.describe import show
from relay.config.root import Config
from relay.config.types import valid_hostname
from relay.warmup.plans import BUILTIN_PLANS
from relay.warmup.providers import BUILTIN_PROVIDER_NAMES


def check_whole(cfg: Config, skip: AbstractSet[str] = frozenset()) -> Iterable[str]:
    """Rules that span sections; a rule reading a section in `skip` (one that failed its
    own validation, so `cfg` has its defaults there) is left out."""
    for sections, rule in _RULES:
        if not sections & skip:
            yield from rule(cfg)


def _hosts_overlap(a: str, b: str) -> bool:
    """Whether binding both hosts on one port clashes ("::" also takes IPv4 on Linux)."""
    if a == b or {a, b} & {"::", "*", ""}:
        return True
    if "0.0.0.0" in (a, b):
        other = b if a == "0.0.0.0" else a
        return ":" not in other
    return False


def _check_binds(cfg: Config) -> Iterable[str]:
    binds = [(f"listener[{i}].address", lst.address) for i, lst in enumerate(cfg.listener)]
    if cfg.admin.enabled:
        binds.append(("admin.address", cfg.admin.address))
    for i, (name, addr) in enumerate(binds):
        for other_name, other in binds[:i]:
            if addr.port == other.port and _hosts_overlap(addr.host, other.host):
                yield f"{name}: \"{addr}\" clashes with {other_name} \"{other}\""
                break


def _check_identities(cfg: Config) -> Iterable[str]:
    seen: set[str] = set()
    for i, ident in enumerate(cfg.identity):
        name = (ident.address or ident.domain).lower()
        if name in seen:
            yield f"identity[{i}]: \"{name}\" is declared twice"
        seen.add(name)


def _check_tls(cfg: Config) -> Iterable[str]:
    if bool(cfg.tls.cert) != bool(cfg.tls.key):
        yield "tls: cert and key must be given together (or both left out for a self-signed one)"
    missing = False
    for name, path in (("tls.cert", cfg.tls.cert), ("tls.key", cfg.tls.key)):
        if path and not Path(path).is_file():
            missing = True
            yield f"{name}: file \"{path}\" does not exist"
    if cfg.tls.cert and cfg.tls.key and not missing:
        problem = _cert_key_problem(cfg.tls.cert, cfg.tls.key)
        if problem:
            yield (f"tls.cert, tls.key: expected a PEM certificate chain and its unencrypted "
                   f"private key, but {problem}")


def _cert_key_problem(cert: str, key: str) -> str:
    """Why the pair cannot serve TLS ("" when it can): unreadable, not PEM, an encrypted
    key (relay has no passphrase), a key that does not match the certificate."""
    try:
        cert_text = Path(cert).read_bytes()[:1 << 20]
        key_text = Path(key).read_bytes()[:1 << 20]
    except OSError as e:
        return f"cannot read {e.filename}: {e.strerror}"
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        return f"{cert} has no PEM certificate (-----BEGIN CERTIFICATE-----)"
    if b"PRIVATE KEY-----" not in key_text:
        return f"{key} has no PEM private key (-----BEGIN PRIVATE KEY-----)"
    if b"ENCRYPTED" in key_text:
        return f"{key} is encrypted; relay needs an unencrypted key (mode 0600)"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            return "the private key does not belong to the certificate"
        return f"OpenSSL: {(e.reason or str(e)).lower().replace('_', ' ')}"
    except OSError as e:
        return f"cannot read {e.filename or cert}: {e.strerror}"
    return ""


def _check_server(cfg: Config) -> Iterable[str]:
    if not valid_hostname(cfg.server.hostname):
        yield (f"server.hostname: expected a host name (RFC 1123: dot-separated labels of "
               f"letters, digits and inner hyphens, at most 63 characters each and 253 in "
               f"all), e.g. \"mail.example.com\", got {show(cfg.server.hostname)}")


def _check_public_url(cfg: Config) -> Iterable[str]:
    if cfg.admin.public_url and not _is_public_https_url(cfg.admin.public_url):
        yield (f"admin.public_url: expected an https:// URL with a host name and no query "
               f"or fragment, e.g. \"https://mail.example.com\" (RFC 8058 one-click "
               f"unsubscribe needs HTTPS), got \"{cfg.admin.public_url}\"")


def _is_public_https_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a bad port raises ValueError
    except ValueError:
        return False
    return (parts.scheme == "https" and bool(parts.hostname) and not parts.query
            and not parts.fragment and not parts.username and not parts.password
            and not any(c.isspace() or c in "<>\"" for c in url))


def config_warnings(cfg: Config) -> list[str]:
    """Settings that are valid but unsafe where they are: reported by `check-config`
    (and at start), never a reason to refuse the config."""
    out: list[str] = []
    if cfg.server.sender_authorization == "off" and not cfg.server.dev_credential:
        out.append('server.sender_authorization: "off" lets every credential send as any '
                   'address; it is meant for the development config (server.dev_credential '
                   '= true). Use "verified" in production')
    api = cfg.api
    if api.enabled and not api.tls_cert and not _loopback(api.address.host):
        out.append(f"api.address: {api.address} is not a loopback address and api.tls_cert "
                   "is empty: the SES API's requests (signed, but with every message in "
                   "clear) travel over plain HTTP; set tls_cert/tls_key or listen on "
                   "127.0.0.1 behind a TLS reverse proxy")
    return out


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_configuration_sets(cfg: Config) -> Iterable[str]:
    names: set[str] = set()
    pools = {p.name for p in cfg.pool}
    pool_owner = {p.name: p.tenant for p in cfg.pool}
    set_owner = {cs.name.lower(): cs.tenant for cs in cfg.configuration_set}
    for i, cs in enumerate(cfg.configuration_set):
        if not cs.name or cs.name.lower() in names:
            yield f"configuration_set[{i}].name: \"{cs.name}\" is empty or used twice"
        names.add(cs.name.lower())
        if cs.pool and cs.pool not in pools:
            yield f"configuration_set[{i}].pool: no [[pool]] named \"{cs.pool}\""
        elif cs.pool and pool_owner.get(cs.pool) not in ("", cs.tenant):
            yield (f"configuration_set[{i}].pool: pool \"{cs.pool}\" belongs to tenant "
                   f"\"{pool_owner[cs.pool]}\", expected a shared pool or one of tenant "
                   f"\"{cs.tenant or '(shared)'}\"")
        if cs.max_delivery_time > cfg.delivery.max_delivery_time:
            yield (f"configuration_set[{i}].max_delivery_time: must not be longer than "
                   "delivery.max_delivery_time")
    dests: set[str] = set()
    for i, d in enumerate(cfg.event_destination):
        if d.name in dests:
            yield f"event_destination[{i}].name: \"{d.name}\" is used twice"
        dests.add(d.name)
        if d.configuration_set and d.configuration_set.lower() not in names:
            yield (f"event_destination[{i}].configuration_set: no [[configuration_set]] "
                   f"named \"{d.configuration_set}\"")
        elif d.configuration_set and d.tenant \
                and set_owner[d.configuration_set.lower()] not in ("", d.tenant):
            yield (f"event_destination[{i}].configuration_set: configuration set "
                   f"\"{d.configuration_set}\" belongs to tenant "
                   f"\"{set_owner[d.configuration_set.lower()]}\", expected a shared one or "
                   f"one of tenant \"{d.tenant}\"")


def _check_pools(cfg: Config) -> Iterable[str]:
    """Pools, warm-up plans, providers and backoff rules refer to each other by name."""
    plans: set[str] = set()
    for i, plan in enumerate(cfg.warmup_plan):
        if plan.name in BUILTIN_PLANS or plan.name in plans:
            yield f"warmup_plan[{i}].name: \"{plan.name}\" is already a plan name"
        plans.add(plan.name)
    pools: dict[str, int] = {}
    owner: dict[str, str] = {}
    for i, pool in enumerate(cfg.pool):
        if pool.name in pools or pool.name == "defer" or not pool.name:
            yield f"pool[{i}].name: \"{pool.name}\" is empty, \"defer\" or used twice"
        pools.setdefault(pool.name, i)
        for j, ip in enumerate(pool.ips):
            if ip.address in owner:
                yield (f"pool[{i}].ips[{j}]: \"{ip.address}\" is already in pool "
                       f"\"{owner[ip.address]}\"")
            owner.setdefault(ip.address, pool.name)
        addresses = {ip.address for ip in pool.ips}
        for ip_text in pool.ehlo:
            if ip_text not in addresses:
                yield f"pool[{i}].ehlo.{ip_text}: not one of this pool's ips"
        if pool.warmup_plan and pool.warmup_plan not in BUILTIN_PLANS \
                and pool.warmup_plan not in plans:
            known = ", ".join(sorted({*BUILTIN_PLANS, *plans}))
            yield (f"pool[{i}].warmup_plan: no plan \"{pool.warmup_plan}\" "
                   f"(known plans: {known})")
    for i, pool in enumerate(cfg.pool):
        if pool.overflow != "defer" and (pool.overflow not in pools
                                         or pool.overflow == pool.name):
            yield (f"pool[{i}].overflow: expected \"defer\" or another pool's name, "
                   f"got \"{pool.overflow}\"")
    if cfg.delivery.pool and cfg.delivery.pool not in pools:
        yield f"delivery.pool: no [[pool]] named \"{cfg.delivery.pool}\""
    providers: set[str] = set()
    for i, prov in enumerate(cfg.provider):
        if prov.name in providers or prov.name == "other":
            yield f"provider[{i}].name: \"{prov.name}\" is \"other\" or used twice"
        providers.add(prov.name)
    for i, rule in enumerate(cfg.backoff):
        if rule.provider and rule.provider not in providers | BUILTIN_PROVIDER_NAMES | {"other"}:
            yield f"backoff[{i}].provider: no provider \"{rule.provider}\""


# Cross-section rules and the top-level sections each reads.
_RULES: list[tuple[frozenset[str], Callable[[Config], Iterable[str]]]] = [
    (frozenset({"warmup_plan", "pool", "delivery", "provider", "backoff"}), _check_pools),
    (frozenset({"configuration_set", "pool", "delivery", "event_destination"}),
     _check_configuration_sets),
    (frozenset({"listener", "admin"}), _check_binds),
    (frozenset({"identity"}), _check_identities),
    (frozenset({"tls"}), _check_tls),
    (frozenset({"admin"}), _check_public_url),
    (frozenset({"server"}), _check_server),
]

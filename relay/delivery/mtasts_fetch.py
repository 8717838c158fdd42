"""MTA-STS policy source for delivery: TXT lookup, HTTPS fetch, and a cache that survives restarts.

Owns: the only aiohttp client use in delivery. `MtaSts.policy(domain)` asks the resolver for
`_mta-sts.<domain>` TXT, fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt` when the
TXT id differs from the cached policy's (or none is cached), and keeps each policy under
`<state_dir>/mta-sts/<domain>.json` for its max_age (RFC 8461 §3.3, §5.1): no redirects,
certificate verified for the policy host, at most 64 KiB, a timeout, and the host resolved
through relay's own resolver (the configured nameservers). A failed lookup or fetch keeps
the cached policy while it is valid. Every decision is in relay/delivery/mtasts.py.
Must not: raise to the router (failures are logged and mean "the cached policy, or none").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Protocol

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult

from relay.clock import Clock
from relay.delivery import mtasts
from relay.delivery.mtasts import Policy
from relay.dns.answers import Lookup

log = logging.getLogger("relay.mtasts")

# A domain whose policy could not be fetched is not asked again for this long (seconds),
# so a dead policy host does not cost a timeout on every delivery attempt.
FAILURE_BACKOFF = 300.0
_SETTLED_MAX = 4096


class TxtResolver(Protocol):
    async def txt(self, name: str) -> Lookup[str]: ...
    async def addresses(self, host: str) -> Lookup[str]: ...


class _Stored(msgspec.Struct, frozen=True):
    mode: str
    mx: list[str]
    max_age: int
    id: str
    fetched_at: float


class _Resolver(AbstractResolver):
    """aiohttp's host lookups through relay's resolver (so tests' loopback DNS applies too)."""

    def __init__(self, resolver: TxtResolver) -> None:
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._resolver.addresses(host)
        if not found.records:
            raise OSError(f"{host}: {found.reason or 'no address'}")
        return [ResolveResult(hostname=host, host=a, port=port,
                              family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for a in found.records]

    async def close(self) -> None:
        return None


class MtaSts:
    """`MtaSts(resolver, state_dir, clock, timeout=10.0, ssl_context=None)`.

    `ssl_context` verifies the policy host (default: the system trust store; tests pass
    one trusting a trustme CA). `_https_port` is for tests only (policy servers on
    loopback); RFC 8461 fixes 443.
    """

    def __init__(self, resolver: TxtResolver, state_dir: Path, clock: Clock, *,
                 timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None,
                 _https_port: int = 443) -> None:
        self._resolver = resolver
        self._dir = Path(state_dir) / "mta-sts"
        self._clock = clock
        self._timeout = timeout
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._port = _https_port
        self._memory: dict[str, Policy | None] = {}
        self._failed_until: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[Policy | None]] = {}
        # domain -> (its answer, until when on the monotonic clock): an answer that needed
        # no fetch holds while its TXT record's answer and the cached policy are valid, so
        # a delivery costs no task and no TXT lookup meanwhile.
        self._settled: dict[str, tuple[Policy | None, float]] = {}
        self.fetch_count = 0

    def _settle(self, domain: str, policy: Policy | None, txt: Lookup[str], now: float) -> None:
        mono = self._clock.monotonic()
        until = txt.expires_at  # 0.0 (not kept) after a temporary DNS failure
        if policy is not None:
            until = min(until, mono + (policy.expires_at() - now))
        if until <= mono:
            return
        if len(self._settled) >= _SETTLED_MAX:
            self._settled.clear()
        self._settled[domain] = (policy, until)

    async def policy(self, domain: str) -> Policy | None:
        """The policy to apply to `domain` now, or None; never raises."""
        domain = domain.lower().rstrip(".")
        settled = self._settled.get(domain)
        if settled is not None and self._clock.monotonic() < settled[1]:
            return settled[0]
        task = self._inflight.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._policy(domain))
            self._inflight[domain] = task
            task.add_done_callback(lambda _t: self._inflight.pop(domain, None))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("MTA-STS policy lookup for %s failed", domain)
            return None

    async def _policy(self, domain: str) -> Policy | None:
        now = self._clock.now()
        cached = mtasts.usable(self._cached(domain), now)
        txt = await self._resolver.txt(f"_mta-sts.{domain}")
        record_id = mtasts.txt_id(txt.records) if txt.ok else None
        if not mtasts.needs_fetch(cached, record_id, now):
            self._settle(domain, cached, txt, now)
            return cached  # no TXT (or DNS trouble): a valid cached policy still holds
        if self._clock.monotonic() < self._failed_until.get(domain, 0.0):
            return cached
        result = await self._fetch(domain)
        if isinstance(result, _Error):
            self._failed_until[domain] = self._clock.monotonic() + FAILURE_BACKOFF
            log.warning("MTA-STS policy of %s not fetched (%s); %s", domain, result,
                        f"keeping the cached {cached.mode} policy" if cached else "no policy")
            return cached
        parsed = mtasts.parse_policy(result, policy_id=record_id or "", fetched_at=now)
        if isinstance(parsed, str):
            self._failed_until[domain] = self._clock.monotonic() + FAILURE_BACKOFF
            log.warning("MTA-STS policy of %s is not valid (%s); %s", domain, parsed,
                        f"keeping the cached {cached.mode} policy" if cached else "no policy")
            return cached
        self._failed_until.pop(domain, None)
        self._store(domain, parsed)
        log.info("MTA-STS policy of %s: mode %s, mx %s, max_age %d", domain, parsed.mode,
                 ", ".join(parsed.mx), parsed.max_age)
        return parsed

    async def _fetch(self, domain: str) -> str:
        """The policy body, or an `_Error` saying why not (never raises but on cancel)."""
        host = f"mta-sts.{domain}"
        port = "" if self._port == 443 else f":{self._port}"
        url = f"https://{host}{port}{mtasts.WELL_KNOWN_PATH}"
        self.fetch_count += 1
        connector = aiohttp.TCPConnector(ssl=self._ssl, resolver=_Resolver(self._resolver),
                                         use_dns_cache=False, force_close=True)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                             trust_env=False) as session, \
                    session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:  # §3.3: a redirect is a failure, not followed
                    return _Error(f"HTTP {resp.status} from {url}")
                ctype = resp.headers.get("Content-Type", "text/plain")
                if ctype.split(";")[0].strip().lower() != "text/plain":
                    return _Error(f"{url} is {ctype}, not text/plain")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(8192):
                    body += chunk
                    if len(body) > mtasts.MAX_POLICY_BYTES:
                        return _Error(f"{url} is larger than {mtasts.MAX_POLICY_BYTES} bytes")
                return bytes(body).decode("utf-8", "replace") if body else ""
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError, ValueError) as e:
            return _Error(f"{url}: {type(e).__name__}: {str(e)[:200]}")

    # ------------------------------------------------------------------ the cache

    def _path(self, domain: str) -> Path:
        safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in domain)
        return self._dir / f"{safe}.json"

    def _cached(self, domain: str) -> Policy | None:
        if domain in self._memory:
            return self._memory[domain]
        policy: Policy | None = None
        with contextlib.suppress(OSError, msgspec.DecodeError, msgspec.ValidationError):
            s = msgspec.json.decode(self._path(domain).read_bytes(), type=_Stored)
            parsed = mtasts.parse_policy(
                "\n".join(["version: STSv1", f"mode: {s.mode}", f"max_age: {s.max_age}",
                           *(f"mx: {m}" for m in s.mx)]), policy_id=s.id,
                fetched_at=s.fetched_at)
            policy = parsed if isinstance(parsed, Policy) else None
        self._memory[domain] = policy
        return policy

    def _store(self, domain: str, policy: Policy) -> None:
        self._memory[domain] = policy
        data = msgspec.json.encode(_Stored(policy.mode, list(policy.mx), policy.max_age,
                                           policy.id, policy.fetched_at))
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self._path(domain)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:  # the in-memory copy still applies until restart
            log.warning("MTA-STS policy of %s not written to %s: %s", domain, self._dir, e)


class _Error(str):
    """A fetch failure's description (a str subclass, so callers test isinstance(x, str))."""

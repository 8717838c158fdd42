"""DKIM keys and selectors: `<state_dir>/dkim/<domain>/` (directory 0700, files 0600).

Each domain has `state.json` listing key *generations*. A generation is one selector per
algorithm (RSA-2048, RFC 8301; Ed25519, RFC 8463), created together and switched
together: `pending` (made by a rotation, its record not yet seen in DNS), `active` (used
for signing) or `retired` (no longer signs; its public record may be removed after the
grace period). Private keys are PEM (RSA, PKCS#1, what dkimpy reads) or the base64 seed
(Ed25519, as dkimpy wants). The public half is kept in state.json for `relay dkim dns`.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import Literal

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from relay.clock import Clock, SystemClock
from relay.config import valid_domain
from relay.jsonfile import locked, stamp, write_atomic

Algorithm = Literal["rsa", "ed25519"]
KeyType = Literal["rsa", "ed25519", "both"]
Status = Literal["pending", "active", "retired"]
_SELECTOR_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class DkimError(Exception):
    """A user-fixable DKIM problem; one line."""


class DkimKey(msgspec.Struct, frozen=True):
    selector: str
    algorithm: Algorithm
    public: str  # base64: SubjectPublicKeyInfo DER (rsa) or the raw 32 bytes (ed25519)

    @property
    def record(self) -> str:
        return txt_record(self.algorithm, self.public)


class Generation(msgspec.Struct, frozen=True):
    name: str
    keys: list[DkimKey]
    status: Status
    created_at: float
    activated_at: float = 0.0
    retired_at: float = 0.0


class DomainKeys(msgspec.Struct, frozen=True):
    domain: str
    generations: list[Generation] = []

    def with_status(self, status: Status) -> list[Generation]:
        return [g for g in self.generations if g.status == status]

    @property
    def active(self) -> Generation | None:
        gens = self.with_status("active")
        return gens[-1] if gens else None

    @property
    def pending(self) -> Generation | None:
        gens = self.with_status("pending")
        return gens[-1] if gens else None


def txt_record(algorithm: Algorithm, public_b64: str) -> str:
    return f"v=DKIM1; k={algorithm}; p={public_b64}"


def split_txt(record: str, size: int = 255) -> list[str]:
    """A TXT value as DNS character-strings of at most 255 bytes (RFC 1035 §3.3; 6376 §3.6.2.2)."""
    raw = record.encode("ascii")
    return [raw[i:i + size].decode("ascii") for i in range(0, len(raw), size)] or [""]


def zone_line(name: str, record: str) -> str:
    """`name. IN TXT ( "..." "..." )`, ready to paste into a zone file."""
    parts = " ".join(f'"{s}"' for s in split_txt(record))
    return f"{name}. IN TXT ( {parts} )"


def generate(algorithm: Algorithm, rsa_bits: int = 2048) -> tuple[bytes, str]:
    """A new key: (private key file contents, public key base64 for p=)."""
    if algorithm == "rsa":
        priv = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        pem = priv.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
        der = priv.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return pem, base64.b64encode(der).decode("ascii")
    epriv = ed25519.Ed25519PrivateKey.generate()
    seed = epriv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                               serialization.NoEncryption())
    pub = epriv.public_key().public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw)
    return base64.b64encode(seed) + b"\n", base64.b64encode(pub).decode("ascii")


def algorithms(key_type: KeyType) -> list[Algorithm]:
    return ["rsa", "ed25519"] if key_type == "both" else [key_type]


def selectors_for(base: str, algs: list[Algorithm]) -> dict[Algorithm, str]:
    """One selector per algorithm: `base` alone, or `base-rsa` + `base-ed` when dual."""
    if len(algs) == 1:
        return {algs[0]: base}
    return {"rsa": f"{base}-rsa", "ed25519": f"{base}-ed"}


def check_selector(selector: str) -> str:
    s = selector.strip().lower()
    if not _SELECTOR_RE.match(s):
        raise DkimError(f"selector {selector!r}: use letters, digits and '-' (max 63)")
    return s


def check_domain(domain: str) -> str:
    d = domain.strip().rstrip(".").lower()
    if not valid_domain(d):
        raise DkimError(f"{domain!r} is not a domain name")
    return d


class KeyStore:
    """Every read and write of `<state_dir>/dkim/`; reloads a domain when its state changes."""

    def __init__(self, root: str | Path, clock: Clock | None = None, *,
                 rsa_bits: int = 2048, recheck: float = 0.0) -> None:
        self.root = Path(root)
        self.clock: Clock = clock or SystemClock()
        self.rsa_bits = rsa_bits
        # How long (monotonic seconds) a look at a domain's state.json stays fresh: the
        # server signs every message, and the stat() per message released the GIL to a
        # signing or commit thread (4 % of the loop's samples). A `relay dkim` edit in
        # another process shows within `recheck`; this process's own edits and refresh()
        # (SIGHUP) at once. 0: look every time (the CLI).
        self.recheck = recheck
        # domain -> (file stamp, keys, monotonic time of the look)
        self._cache: dict[str, tuple[tuple[int, int, int] | None, DomainKeys | None,
                                     float]] = {}
        self._private: dict[tuple[str, str], bytes] = {}
        self._paths: dict[str, Path] = {}  # state.json per domain: built once, not per get()

    @classmethod
    def in_state_dir(cls, state_dir: Path, clock: Clock | None = None, *,
                     rsa_bits: int = 2048, recheck: float = 0.0) -> KeyStore:
        return cls(state_dir / "dkim", clock, rsa_bits=rsa_bits, recheck=recheck)

    def _dir(self, domain: str) -> Path:
        return self.root / domain

    def _state_path(self, domain: str) -> Path:
        return self._dir(domain) / "state.json"

    # --- reading -----------------------------------------------------------------------

    def domains(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "state.json").is_file())

    def get(self, domain: str, *, fresh: bool = False) -> DomainKeys | None:
        """The domain's state, re-read when state.json changed: a stat() at most every
        `recheck` seconds (every call when 0 or `fresh`), so a `relay dkim keygen` or
        `rotate` by another process is seen within that."""
        path = self._paths.get(domain)
        if path is None:
            if len(self._paths) >= 4096:  # From domains without keys are looked up too
                self._paths.clear()
            path = self._paths[domain] = self._state_path(domain)
        now = self.clock.monotonic()
        cached = self._cache.get(domain)
        if not fresh and cached is not None and 0 <= now - cached[2] < self.recheck:
            return cached[1]
        st = stamp(path)
        if cached is not None and cached[0] == st:
            self._cache[domain] = (st, cached[1], now)
            return cached[1]
        keys: DomainKeys | None = None
        if st is not None:
            try:
                keys = msgspec.json.decode(path.read_bytes(), type=DomainKeys)
            except (OSError, msgspec.DecodeError) as e:
                raise DkimError(f"{path}: not a valid DKIM state file: {e}") from None
        self._cache[domain] = (st, keys, now)
        return keys

    def refresh(self) -> None:
        """Look at every domain's file again on its next use (SIGHUP)."""
        self._cache = {d: (st, keys, -1e18) for d, (st, keys, _) in self._cache.items()}

    def private_key(self, domain: str, key: DkimKey) -> bytes:
        cache_key = (domain, key.selector)
        data = self._private.get(cache_key)
        if data is None:
            data = (self._dir(domain) / self._key_file(key)).read_bytes()
            self._private[cache_key] = data
        return data

    @staticmethod
    def _key_file(key: DkimKey) -> str:
        return f"{key.selector}.{'pem' if key.algorithm == 'rsa' else 'ed25519'}"

    # --- writing (CLI and the rotation task) ------------------------------------------

    def _save(self, state: DomainKeys) -> None:
        data = msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n"
        write_atomic(self._state_path(state.domain), data)
        self._cache.pop(state.domain, None)

    def _new_generation(self, domain: str, base: str, key_type: KeyType,
                        status: Status, existing: DomainKeys | None) -> Generation:
        used = {k.selector for g in (existing.generations if existing else []) for k in g.keys}
        algs = algorithms(key_type)
        sels = selectors_for(base, algs)
        clash = sorted(set(sels.values()) & used)
        if clash:
            raise DkimError(f"selector {clash[0]!r} is already used for {domain}")
        d = self._dir(domain)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        keys: list[DkimKey] = []
        for alg in algs:
            private, public = generate(alg, self.rsa_bits)
            key = DkimKey(sels[alg], alg, public)
            write_atomic(d / self._key_file(key), private, 0o600)
            keys.append(key)
        now = self.clock.now()
        return Generation(base, keys, status, now, activated_at=now if status == "active" else 0)

    def default_selector(self, domain: str) -> str:
        """`rYYYYMMDD` from the clock, with a letter added when that name is taken."""
        existing = self.get(domain, fresh=True)
        used = {g.name for g in existing.generations} if existing else set()
        base = "r" + time.strftime("%Y%m%d", time.gmtime(self.clock.now()))
        name, n = base, 0
        while name in used:
            n += 1
            name = base + chr(ord("a") + n - 1)
        return name

    def keygen(self, domain: str, selector: str | None = None,
               key_type: KeyType = "both") -> Generation:
        """First keys of a domain; they sign at once (the identity is verified by DNS)."""
        domain = check_domain(domain)
        with locked(self._state_path(domain)):
            existing = self.get(domain, fresh=True)  # read-modify-write: never a stale copy
            if existing is not None and existing.active is not None:
                raise DkimError(f"{domain} already has DKIM keys (selector "
                                f"{existing.active.name!r}); use `relay dkim rotate {domain}`")
            base = check_selector(selector) if selector else self.default_selector(domain)
            gen = self._new_generation(domain, base, key_type, "active", existing)
            self._save(DomainKeys(domain, [*(existing.generations if existing else []), gen]))
        return gen

    def rotate(self, domain: str, selector: str | None = None,
               key_type: KeyType | None = None) -> Generation:
        """Create the next generation as pending; it signs once its record is in DNS."""
        domain = check_domain(domain)
        with locked(self._state_path(domain)):
            existing = self.get(domain, fresh=True)  # read-modify-write: never a stale copy
            if existing is None or existing.active is None:
                raise DkimError(f"{domain} has no DKIM keys; run `relay dkim keygen {domain}`")
            if existing.pending is not None:
                raise DkimError(f"{domain} already has a pending selector "
                                f"{existing.pending.name!r}; publish its record and run "
                                f"`relay identity verify {domain}`")
            if key_type is None:
                algs = [k.algorithm for k in existing.active.keys]
                key_type = "both" if len(algs) > 1 else algs[0]
            base = check_selector(selector) if selector else self.default_selector(domain)
            gen = self._new_generation(domain, base, key_type, "pending", existing)
            self._save(DomainKeys(domain, [*existing.generations, gen]))
        return gen

    def update(self, state: DomainKeys) -> None:
        """Write a state computed by relay.dkim.rotation (under the domain's lock)."""
        with locked(self._state_path(state.domain)):
            self._save(state)

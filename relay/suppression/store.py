"""The suppression lists in LMDB: sub-databases of the queue's environment.

The account-level list is "suppression", key: the lower-cased address. A tenant whose
suppression scope is "tenant" has its own list in "suppression_tenant", key: the tenant
name, a NUL byte, the lower-cased address (so one tenant's complaints never block
another tenant from mailing the same address). Value: an `Entry` (msgpack).
Writes are ops for the store's group commit (`await store.write(op)` in the server,
`store.write_now(op)` in the CLI), so an automatic add commits with the delivery
result that caused it. Reads use one read transaction and never block the writer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from relay.queue.store import QueueStore
from relay.suppression.policy import Reason, normalize


class Entry(msgspec.Struct, array_like=True, tag=1):
    address: str
    reason: str          # BOUNCE | COMPLAINT
    created_at: float
    message_id: str = ""
    diagnostic: str = ""  # the response or feedback type that put it there
    # The feedbackId of the Bounce or Complaint event that put it there ("" when added by
    # hand, or in entries written before it was kept).
    feedback_id: str = ""


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Entry)


class SuppressionList:
    DB = "suppression"
    TENANT_DB = "suppression_tenant"

    def __init__(self, store: QueueStore, tenant: str = "") -> None:
        """The account-level list, or with `tenant` that tenant's own list."""
        self.store = store
        self.tenant = tenant
        self._name = self.TENANT_DB if tenant else self.DB
        self._prefix = tenant.encode("utf-8") + b"\0" if tenant else b""

    def _db(self) -> Any:
        return self.store.named_db(self._name)

    def _key(self, text: str) -> bytes:
        return self._prefix + text.encode("utf-8", "surrogatepass")

    # ------------------------------------------------------------------ reads

    def get(self, address: str) -> Entry | None:
        key = self._key(normalize(address))
        raw = self.store.read(lambda txn: txn.get(key, db=self._db()))
        return _dec.decode(raw) if raw is not None else None

    def reasons(self, addresses: Iterable[str]) -> dict[str, Reason]:
        """The listed reason of each of `addresses` that is on the list (one read txn)."""
        keys = {self._key(normalize(a)): a for a in addresses}
        db = self._db()

        def read(txn: Any) -> dict[str, Reason]:
            out: dict[str, Reason] = {}
            for key, original in keys.items():
                raw = txn.get(key, db=db)
                if raw is not None:
                    out[original] = Reason(_dec.decode(raw).reason)
            return out
        return self.store.read(read)

    def _raw_entries(self) -> list[bytes]:
        return [raw for _, raw in self.store.read_db(self._name, self._prefix)]

    def entries(self, *, reason: str | None = None, prefix: str = "",
                contains: str = "") -> Iterator[Entry]:
        """The entries in address order; `contains`: only addresses with this in them."""
        needle = contains.lower()
        for raw in self._raw_entries():
            entry = _dec.decode(raw)
            if reason and entry.reason != reason:
                continue
            if prefix and not entry.address.startswith(prefix.lower()):
                continue
            if needle and needle not in entry.address:
                continue
            yield entry

    def count(self) -> int:
        if self._prefix:
            return len(self._raw_entries())
        return int(self.store.read(lambda txn: txn.stat(self._db())["entries"]))

    # ------------------------------------------------------------------ ops

    def add_op(self, entries: list[Entry], *, replace: bool = True) -> Callable[[Any], int]:
        """Put entries on the list; return how many were new. `replace=False` keeps an
        existing entry (first reason wins, as for automatic adds)."""
        db = self._db()

        def op(txn: Any) -> int:
            added = 0
            for e in entries:
                key = self._key(normalize(e.address))
                exists = txn.get(key, db=db) is not None
                if exists and not replace:
                    continue
                added += 0 if exists else 1
                txn.put(key, _enc.encode(msgspec.structs.replace(
                    e, address=normalize(e.address))), db=db)
            return added
        return op

    def remove_op(self, addresses: list[str]) -> Callable[[Any], int]:
        """Take `addresses` off the list; return how many of them removed an entry.

        No syntax check: every entry on the list can be removed by the address the list
        shows, even one that is no valid address (listed before relay refused such
        recipients at RCPT) or whose text normalizes to another (" a@b"). Each address is
        tried as given, then normalized."""
        db, prefix = self._db(), self._prefix

        def op(txn: Any) -> int:
            return sum(1 for a in addresses if _remove(txn, db, prefix, a) is not None)
        return op

    def remove_one_op(self, address: str) -> Callable[[Any], str | None]:
        """Like `remove_op` for one address: the listed address it removed, or None."""
        db, prefix = self._db(), self._prefix
        return lambda txn: _remove(txn, db, prefix, address)


_MAX_KEY = 511  # LMDB's key size limit: no longer key can be on the list


def _remove(txn: Any, db: Any, prefix: bytes, address: str) -> str | None:
    removed = None
    for text in dict.fromkeys((address, normalize(address))):
        key = text.encode("utf-8", "surrogatepass")
        if key and len(prefix) + len(key) <= _MAX_KEY and txn.delete(
                prefix + key, db=db):
            removed = text
    return removed

"""What `relay serve` checks in the state dir before it starts anything.

Each state file the server loads is read here the way the server reads it (the same
stores and loaders), so a damaged one stops the start with a StateError naming the file
and what is wrong, instead of a traceback halfway through, or worse a running relay that
treats a corrupt users.json as "no users" and answers every login 535. Checked: the
queue (LMDB), verp.key, users.json, api_keys.json with the api_keys.key that decrypts
it, identities.json, admin_tokens.json (when the admin API runs), each domain's DKIM
state.json and the private keys it names, and that the event log can be opened. Files
relay makes on its own when missing (verp.key, the queue, the self-signed certificate,
which is remade when it does not parse) are not an error when absent. Must not: change
a file that exists.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from pathlib import Path

from relay.clock import SystemClock
from relay.config import Config
from relay.statedir import StateError


def check_state(cfg: Config) -> None:
    """Raise StateError for the first state file relay cannot start on."""
    state = cfg.state_path
    _check_queue(cfg)
    from relay.verp import Verp

    Verp.from_state_dir(state)  # made when missing; StateError when unusable
    _check_users(cfg)
    _check_api_keys(cfg)
    _check_identities(cfg)
    if cfg.admin.enabled:
        _check_tokens(cfg)
    _check_dkim(cfg)
    _check_event_log(cfg)


def _check_queue(cfg: Config) -> None:
    from relay.queue.store import QueueStore

    # Opened and closed before any worker starts: an LMDB environment must not be
    # carried across fork (the supervisor's workers open their own).
    QueueStore(cfg.state_path / "queue", SystemClock(),
               map_size=cfg.server.queue_map_size).close_sync()


def _check_users(cfg: Config) -> None:
    from relay.users import UserError, check_file

    try:
        check_file(cfg.state_path / "users.json")
    except UserError as e:
        raise StateError(str(e)) from None


def _load(path: Path, load: Callable[[], object], errors: type[Exception]) -> None:
    """Run a store's own loader of `path`: its error (which names the file) or a file it
    cannot read is a StateError."""
    try:
        load()
    except errors as e:
        raise StateError(str(e)) from None
    except OSError as e:
        raise StateError(f"{path}: cannot read: {e.strerror or e}") from None


def _check_api_keys(cfg: Config) -> None:
    from relay.sesapi.keys import ApiKeyError, ApiKeyStore

    _load(cfg.state_path / ApiKeyStore.FILE, ApiKeyStore(cfg.state_path).check, ApiKeyError)


def _check_identities(cfg: Config) -> None:
    from relay.identity.model import IdentityError
    from relay.identity.store import IdentityStore

    _load(cfg.state_path / "identities.json",
          lambda: IdentityStore.in_state_dir(cfg.state_path), IdentityError)


def _check_tokens(cfg: Config) -> None:
    from relay.admin.tokens import TokenError, TokenStore

    _load(cfg.state_path / TokenStore.FILE,
          lambda: TokenStore.in_state_dir(cfg.state_path), TokenError)


def _check_dkim(cfg: Config) -> None:
    """Every domain's state.json, and the private key of each selector that signs now or
    will after a rotation (active and pending generations)."""
    from relay.dkim.keys import DkimError, KeyStore

    keys = KeyStore.in_state_dir(cfg.state_path)
    for domain in keys.domains():
        try:
            state = keys.get(domain, fresh=True)
        except DkimError as e:
            raise StateError(str(e)) from None
        if state is None:
            continue
        for gen in state.generations:
            if gen.status == "retired":
                continue
            for key in gen.keys:
                path = keys.root / domain / keys._key_file(key)
                try:
                    data = keys.private_key(domain, key)
                except OSError as e:
                    raise StateError(f"{path}: DKIM private key of selector "
                                     f"{key.selector!r} ({gen.status}): "
                                     f"{e.strerror or e}") from None
                problem = _private_key_problem(key.algorithm, data)
                if problem:
                    raise StateError(f"{path}: DKIM private key of selector "
                                     f"{key.selector!r} ({gen.status}): {problem}")


def _private_key_problem(algorithm: str, data: bytes) -> str:
    """Why `data` is not a private key of `algorithm` as relay.dkim writes it, or ""."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if algorithm == "rsa":
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            return f"not a PEM private key ({e})"
        if not isinstance(key, rsa.RSAPrivateKey):
            return "not an RSA key"
        return ""
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except (ValueError, binascii.Error):
        return "not base64"
    return "" if len(seed) == 32 else f"an Ed25519 seed is 32 bytes, this is {len(seed)}"


def _check_event_log(cfg: Config) -> None:
    path = Path(cfg.events.log)
    path = path if path.is_absolute() else cfg.state_path / path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise StateError(f"{path}: the event log cannot be opened: {e.strerror or e}") \
            from None

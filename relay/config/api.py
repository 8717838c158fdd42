"""The [api] section: the SES HTTP API (relay/sesapi/)."""

from __future__ import annotations

import re

import msgspec

from relay.config.types import Address, Size

# An AWS region name as clients configure it ("us-east-1", "eu-central-1", "local").
_REGION_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class Api(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The SES HTTP API listener (relay/sesapi/server.py): off unless asked for.
    enabled: bool = False
    address: Address = Address("127.0.0.1", 8026)
    # HTTPS with this certificate and key (PEM files); both empty: plain HTTP, for a
    # loopback listener behind a TLS-terminating reverse proxy.
    tls_cert: str = ""
    tls_key: str = ""
    # A request body larger than this is refused before it is read (SES's 40 MB limit).
    max_body_size: Size = Size(40 * 1000 * 1000)
    # The region SES API clients sign for (AWS Signature V4's credential scope) and SES
    # SMTP passwords are derived for (`relay user keys smtp-password`).
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        if len(self.region) > 32 or not _REGION_RE.match(self.region):
            raise ValueError(f"region {self.region!r}: expected a region name like "
                             "\"us-east-1\" (at most 32 lower-case letters, digits and "
                             "single '-')")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key: give both (HTTPS) or neither (plain "
                             "HTTP behind a reverse proxy)")

"""The [api] section: the SES HTTP API (relay/sesapi/)."""

from __future__ import annotations

import re

import msgspec

# An AWS region name as clients configure it ("us-east-1", "eu-central-1", "local").
_REGION_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class Api(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The region SES API clients sign for (AWS Signature V4's credential scope) and SES
    # SMTP passwords are derived for (`relay user keys smtp-password`).
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        if len(self.region) > 32 or not _REGION_RE.match(self.region):
            raise ValueError(f"region {self.region!r}: expected a region name like "
                             "\"us-east-1\" (at most 32 lower-case letters, digits and "
                             "single '-')")

"""PURE rules of which tenant a message belongs to and what a tenant may use.

A credential belongs to one tenant, and a platform credential may be allowed several;
a message names one with `X-SES-TENANT: NAME` (SES's SMTP header) or `TenantName` (the
API), else it belongs to the credential's own tenant. A tenant may use its own
identities, configuration sets, pools and event destinations and the shared ones (owner
""), never another tenant's (SES: every resource a message references must be
associated with its tenant). No I/O here; the refusals are SMTP replies with enhanced
status codes (`Refusal`, which the SMTP session turns into its `Reply`).
"""

from __future__ import annotations

from collections.abc import Iterable

from relay.tenants.model import DEFAULT_TENANT, valid_tenant_name
from relay.tenants.refusals import Refusal as Reply

HEADER = "X-SES-TENANT"

# The message names a tenant its credential may not send for.
TENANT_NOT_ALLOWED = Reply(554, "5.7.1", "Message rejected: tenant {tenant} is not allowed "
                                         "for this credential")
# The header's value is no tenant name at all (it is not echoed).
TENANT_INVALID = Reply(554, "5.7.1", "Message rejected: X-SES-TENANT is not a valid tenant "
                                     "name (1-64 letters, digits, '-' or '_')")
# A resource the message uses belongs to another tenant.
RESOURCE_NOT_ALLOWED = Reply(554, "5.7.1", "Message rejected: {kind} {name} is not "
                                           "associated with tenant {tenant}")

RESOURCE_KINDS = ("identity", "configuration set", "pool", "event destination")


def credential_tenants(own: str, others: Iterable[str] = ()) -> list[str]:
    """The tenants a credential may use: its own first, then the others, once each;
    a credential with none recorded belongs to `default`."""
    return list(dict.fromkeys([own or DEFAULT_TENANT, *others]))


def resolve_tenant(credential_tenants: Iterable[str], default_tenant: str,
                   header_value: str | None) -> str | Reply:
    """The tenant of a message: the one `header_value` names (X-SES-TENANT or TenantName,
    None or blank: none named) when the credential may use it, else `default_tenant`
    (the credential's own). A refusal Reply when it names one the credential may not
    use, or no valid tenant name."""
    if header_value is None or not header_value.strip():
        return default_tenant or DEFAULT_TENANT
    name = header_value.strip()
    if not valid_tenant_name(name):
        return TENANT_INVALID
    allowed = set(credential_tenants) | {default_tenant or DEFAULT_TENANT}
    if name not in allowed:
        return TENANT_NOT_ALLOWED._replace(text=TENANT_NOT_ALLOWED.text.format(tenant=name))
    return name


def may_use(tenant: str, owner: str) -> bool:
    """May a message of `tenant` use a resource owned by `owner` ("" = shared)?"""
    return not owner or owner == tenant


def refuse_resource(tenant: str, kind: str, name: str, owner: str) -> Reply | None:
    """None when `tenant` may use the `kind` resource `name` owned by `owner`; else the
    refusal naming the resource and the tenant (not the owner: another tenant's name is
    not told to this one)."""
    if may_use(tenant, owner):
        return None
    return RESOURCE_NOT_ALLOWED._replace(text=RESOURCE_NOT_ALLOWED.text.format(
        kind=kind, name=name, tenant=tenant))


def first_refusal(tenant: str, resources: Iterable[tuple[str, str, str]]) -> Reply | None:
    """The refusal of the first (kind, name, owner) of `resources` that `tenant` may not
    use, or None: one call for a message's identity, configuration set and pool."""
    for kind, name, owner in resources:
        refusal = refuse_resource(tenant, kind, name, owner)
        if refusal is not None:
            return refusal
    return None

"""The tenant of a message and what a tenant may use, as tables."""

from __future__ import annotations

import pytest

from relay.tenants.access import (
    TENANT_INVALID,
    credential_tenants,
    first_refusal,
    may_use,
    refuse_resource,
    resolve_tenant,
)
from relay.tenants.refusals import Refusal as Reply


@pytest.mark.parametrize(("tenants", "default", "header", "expected"), [
    (["default"], "default", None, "default"),
    (["default"], "default", "", "default"),
    (["default"], "default", "   ", "default"),
    (["acme"], "acme", None, "acme"),
    (["acme"], "acme", " acme ", "acme"),
    (["platform", "a", "b"], "platform", "b", "b"),
    (["platform", "a", "b"], "platform", "platform", "platform"),
    ([], "acme", "acme", "acme"),     # its own tenant always
    ([], "", None, "default"),
])
def test_resolved(tenants: list[str], default: str, header: str | None,
                  expected: str) -> None:
    assert resolve_tenant(tenants, default, header) == expected


@pytest.mark.parametrize(("tenants", "default", "header", "text"), [
    (["acme"], "acme", "beta",
     "554 5.7.1 Message rejected: tenant beta is not allowed for this credential"),
    (["a", "b"], "a", "A",
     "554 5.7.1 Message rejected: tenant A is not allowed for this credential"),
    (["acme"], "acme", "acme\r\nRCPT TO:<x@y>", str(TENANT_INVALID)),
    (["acme"], "acme", "x" * 65, str(TENANT_INVALID)),
])
def test_refused(tenants: list[str], default: str, header: str, text: str) -> None:
    got = resolve_tenant(tenants, default, header)
    assert isinstance(got, Reply)
    assert str(got) == text


@pytest.mark.parametrize(("tenant", "owner", "ok"), [
    ("acme", "", True), ("acme", "acme", True), ("acme", "beta", False),
    ("default", "", True), ("default", "acme", False),
])
def test_may_use(tenant: str, owner: str, ok: bool) -> None:
    assert may_use(tenant, owner) is ok
    refusal = refuse_resource(tenant, "configuration set", "news", owner)
    if ok:
        assert refusal is None
    else:
        assert refusal is not None and str(refusal) == (
            f"554 5.7.1 Message rejected: configuration set news is not associated with "
            f"tenant {tenant}")
        assert owner not in refusal.text  # another tenant's name is not told


def test_credential_tenants_own_first_once_each() -> None:
    assert credential_tenants("acme", ["b", "acme", "c"]) == ["acme", "b", "c"]
    assert credential_tenants("") == ["default"]


def test_first_refusal_names_the_first_resource_of_another_tenant() -> None:
    resources = [("identity", "acme.example", "acme"), ("configuration set", "news", ""),
                 ("pool", "beta-ips", "beta")]
    assert first_refusal("acme", resources[:2]) is None
    got = first_refusal("acme", resources)
    assert got is not None and got.text.startswith("Message rejected: pool beta-ips is not")
    got = first_refusal("beta", resources)
    assert got is not None and "identity acme.example" in got.text

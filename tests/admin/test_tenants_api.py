"""/api/tenants of a running relay: create, list, show, pause, resume, production and
remove over real HTTP, with SES's field names; the CLI (another process on the same
spool) and the API see each other's changes."""

from __future__ import annotations

import json

import pytest
from adminkit import Admin

from relay.testing.process import run_cli
from relay.testing.wait import wait_until

ENDPOINTS = [
    ("GET", "/api/tenants"), ("POST", "/api/tenants"), ("GET", "/api/tenants/acme"),
    ("DELETE", "/api/tenants/acme"), ("POST", "/api/tenants/acme/pause"),
    ("POST", "/api/tenants/acme/resume"), ("POST", "/api/tenants/acme/production"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_no_token_is_401(admin: Admin, method: str, path: str) -> None:
    status, body = admin.call(method, path, token=None)
    assert status == 401 and "token" in body["error"]


def test_openapi_describes_the_tenant_routes(admin: Admin) -> None:
    _, doc = admin.call("GET", "/openapi.json", token=None)
    for method, path in ENDPOINTS:
        templated = path.replace("/acme", "/{name}")
        assert method.lower() in doc["paths"][templated], templated
    props = doc["components"]["schemas"]["TenantAdd"]["properties"]
    assert set(props) == {"TenantName", "Sandbox", "Max24HourSend", "MaxSendRate",
                          "SuppressionScope"}


def test_create_show_pause_resume_production(admin: Admin) -> None:
    status, body = admin.call("GET", "/api/tenants")
    assert status == 200
    assert [t["TenantName"] for t in body["Tenants"]] == ["default"]
    assert body["Tenants"][0]["ProductionAccessEnabled"] is True

    status, body = admin.call("POST", "/api/tenants", {
        "TenantName": "acme", "Max24HourSend": 1000, "MaxSendRate": 5,
        "SuppressionScope": "tenant"})
    assert status == 201, body
    t = body["Tenant"]
    assert (t["TenantName"], t["SendingStatus"], t["ProductionAccessEnabled"],
            t["SuppressionScope"]) == ("acme", "ENABLED", False, "tenant")
    # In the sandbox it sends under the sandbox's limits; its own quota is kept.
    assert t["SendQuota"] == {"Max24HourSend": 200, "MaxSendRate": 1.0,
                              "SentLast24Hours": 0}
    assert t["Quota"] == {"Max24HourSend": 1000, "MaxSendRate": 5.0}
    assert t["ReputationStatus"]["Status"] == "Healthy"
    assert t["ReputationStatus"]["LastFreshStart"] is None

    status, body = admin.call("POST", "/api/tenants", {"TenantName": "acme"})
    assert status == 409 and "'acme' already exists" in body["error"]

    status, body = admin.call("POST", "/api/tenants/acme/pause", {"Reason": "list cleanup"})
    assert status == 200, body
    rep = body["Tenant"]["ReputationStatus"]
    assert body["Tenant"]["SendingStatus"] == "DISABLED"
    assert (rep["Status"], rep["Reason"], rep["Automatic"], rep["ChangedBy"]) == (
        "Paused", "list cleanup", False, "admin-token:tests")

    status, body = admin.call("POST", "/api/tenants/acme/resume")  # no body
    assert status == 200, body
    rep = body["Tenant"]["ReputationStatus"]
    assert body["Tenant"]["SendingStatus"] == "REINSTATED"
    assert rep["Status"] == "Healthy" and rep["LastFreshStart"] == rep["ChangedTimestamp"]

    status, body = admin.call("POST", "/api/tenants/acme/production")
    assert status == 200 and body["Tenant"]["ProductionAccessEnabled"] is True
    assert body["Tenant"]["SendQuota"]["Max24HourSend"] == 1000
    assert body["Tenant"]["ProductionAccessTimestamp"]

    status, body = admin.call("GET", "/api/tenants/acme")
    assert status == 200 and body["Tenant"]["SendQuota"]["SentLast24Hours"] == 0
    for path in ("/api/tenants/ghost", "/api/tenants/ghost/pause",
                 "/api/tenants/ghost/production"):
        status, body = admin.call("GET" if path.count("/") == 3 else "POST", path)
        assert status == 404 and "no tenant 'ghost'" in body["error"], path


@pytest.mark.parametrize(("body", "field", "text"), [
    ({"TenantName": "a b"}, "TenantName", "tenant name 'a b': expected 1-64"),
    ({"TenantName": "x", "Max24HourSend": -1}, "Max24HourSend", "Max24HourSend"),
    ({"TenantName": "x", "SuppressionScope": "global"}, "SuppressionScope",
     "SuppressionScope"),
    ({"TenantName": "x", "Colour": "red"}, "Colour", "unknown field"),
    ({}, "TenantName", "TenantName: missing"),
    ({"TenantName": "default"}, "TenantName", "'default' already exists"),
])
def test_bad_input_names_the_field(admin: Admin, body: dict[str, object], field: str,
                                   text: str) -> None:
    status, answer = admin.call("POST", "/api/tenants", body)
    assert status in (400, 409), answer
    assert answer["field"] == field and text in answer["error"], answer


def test_pause_body_is_checked(admin: Admin) -> None:
    status, body = admin.call("POST", "/api/tenants/default/pause", {"Why": "x"})
    assert status == 400 and body["field"] == "Why"


def test_remove_rules_and_the_cli_on_the_same_spool(admin: Admin) -> None:
    assert admin.call("POST", "/api/tenants", {"TenantName": "beta"})[0] == 201
    # The CLI, another process, sees the API's tenant and adds a credential to it.
    shown = run_cli("tenant", "show", "beta", "--json", config=admin.config)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["sandbox"] is True
    added = run_cli("user", "add", "beta-app", "--tenant", "beta", "--generate-password",
                    config=admin.config)
    assert added.returncode == 0, added.stderr
    owned = run_cli("identity", "add", "beta.example", "--tenant", "beta", config=admin.config)
    assert owned.returncode == 0, owned.stderr
    identities = {r["name"]: r for r in admin.call("GET", "/api/identities")[1]["identities"]}
    assert identities["beta.example"]["tenant"] == "beta"
    users = {u["name"]: u for u in admin.call("GET", "/api/users")[1]["users"]}
    assert (users["beta-app"]["tenant"], users["beta-app"]["tenants"]) == ("beta", ["beta"])
    assert users["app"]["tenant"] == "default" and users["app"]["max_24h_send"] is None
    status, body = admin.call("DELETE", "/api/tenants/beta")
    assert status == 409 and "still has credentials: beta-app" in body["error"]
    status, body = admin.call("DELETE", "/api/tenants/default")
    assert status == 409 and "cannot be removed" in body["error"]
    # A pause by the CLI shows in the running server within its recheck.
    paused = run_cli("tenant", "pause", "beta", "--reason", "by cli", config=admin.config)
    assert paused.returncode == 0, paused.stderr
    wait_until(lambda: admin.call("GET", "/api/tenants/beta")[1]["Tenant"]
               ["ReputationStatus"]["Reason"] == "by cli", 5, "the CLI's pause")
    assert run_cli("user", "remove", "beta-app", config=admin.config).returncode == 0
    status, body = admin.call("DELETE", "/api/tenants/beta")
    assert status == 200 and body == {"TenantName": "beta", "removed": True}
    assert admin.call("GET", "/api/tenants/beta")[0] == 404
    assert admin.call("DELETE", "/api/tenants/beta")[0] == 404


def test_suppression_api_takes_a_tenant(admin: Admin) -> None:
    """POST/GET/DELETE /api/suppression with `tenant`: that tenant's own list, apart from
    the account's; a bad tenant name is a 400 naming the field."""
    status, body = admin.call("POST", "/api/suppression",
                              {"address": "x@own-list.test", "reason": "COMPLAINT",
                               "tenant": "acme"})
    assert status == 201, body
    status, body = admin.call("GET", "/api/suppression?tenant=acme")
    assert [e["address"] for e in body["entries"]] == ["x@own-list.test"]
    status, body = admin.call("GET", "/api/suppression?prefix=x@own-list")
    assert status == 200 and body["entries"] == []       # not on the account's list
    status, body = admin.call("DELETE", "/api/suppression/x@own-list.test")
    assert status == 404                                  # nor removable from it
    status, body = admin.call("DELETE", "/api/suppression/x@own-list.test?tenant=acme")
    assert status == 200 and body["removed"] is True
    status, body = admin.call("GET", "/api/suppression?tenant=no%20spaces")
    assert status == 400 and "tenant" in json.dumps(body)

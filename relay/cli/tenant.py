"""`relay tenant add|list|show|quota|pause|resume|production|remove`: the tenants in the
spool (sub-databases "tenants" and "status" of the queue's LMDB, relay/tenants/store.py).

The command opens the same spool as a running server (LMDB allows both processes); the
server's view of the tenants looks for a change every half second, so an edit here
shows there within a second. Exit codes: 0 done, 1 a problem the user can fix (unknown
or duplicate tenant, a value out of range, credentials still in the tenant), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
from collections.abc import Callable, Iterator
from typing import Any

from relay.cli import CliError, load_config
from relay.cli.output import emit
from relay.clock import SystemClock
from relay.config import Config
from relay.events.model import iso
from relay.queue.store import QueueStore
from relay.tenants.model import (
    DEFAULT_TENANT,
    SUPPRESSION_SCOPES,
    Quota,
    StatusRecord,
    Tenant,
    configuration_set_scope,
    tenant_scope,
    valid_tenant_name,
)
from relay.tenants.quota import effective_limits
from relay.tenants.store import (
    TenantError,
    TenantStore,
    check_quota,
    sent_last_24_hours,
)
from relay.users import UserError, UserStore

# SentLast24Hours of a tenant; the quota code's reader replaces this (see
# relay.tenants.store.sent_last_24_hours).
SENT_LAST_24_HOURS: Callable[[QueueStore, str], int] = sent_last_24_hours


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "tenant", help="tenants: isolated senders with their own quota, sandbox and status",
        description="Manage tenants (kept in the queue's spool).")
    tsub = p.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $RELAY_CONFIG or the embedded dev config)")

    add = tsub.add_parser("add", parents=[common], help="add a tenant",
                          description="Add a tenant. Every tenant but 'default' starts in "
                                      "the sandbox unless --no-sandbox is given.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--sandbox", action=argparse.BooleanOptionalAction, default=None,
                     help="start in the sandbox (default: yes)")
    _quota_options(add)
    add.add_argument("--suppression-scope", default="account", choices=SUPPRESSION_SCOPES,
                     help="the suppression list its mail is checked against and feeds "
                          "(default: account)")
    add.add_argument("--json", action="store_true", help="print the tenant as JSON")
    add.set_defaults(func=cmd_add)

    ls = tsub.add_parser("list", parents=[common], help="list tenants")
    ls.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    ls.set_defaults(func=cmd_list)

    show = tsub.add_parser("show", parents=[common],
                           help="a tenant, its status, quota and use")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="JSON instead of lines")
    show.set_defaults(func=cmd_show)

    quota = tsub.add_parser("quota", parents=[common], help="set a tenant's sending quota")
    quota.add_argument("name", metavar="NAME")
    _quota_options(quota)
    quota.add_argument("--clear", action="store_true",
                       help="remove both limits ([tenants] defaults apply)")
    quota.set_defaults(func=cmd_quota)

    for verb, helptext, func in (
            ("pause", "stop a tenant's (or configuration set's) sending", cmd_pause),
            ("resume", "let it send again, with a fresh reputation window", cmd_resume)):
        sp = tsub.add_parser(verb, parents=[common], help=helptext)
        sp.add_argument("name", metavar="NAME")
        sp.add_argument("--configuration-set", action="store_true",
                        help="NAME is a [[configuration_set]], not a tenant")
        sp.add_argument("--reason", default="", help="why (recorded with the status)")
        sp.set_defaults(func=func)

    prod = tsub.add_parser("production", parents=[common],
                           help="take a tenant out of the sandbox")
    prod.add_argument("name", metavar="NAME")
    prod.set_defaults(func=cmd_production)

    rm = tsub.add_parser("remove", parents=[common], help="remove a tenant",
                         description="Remove a tenant and its status. Refused for "
                                     "'default' and while credentials belong to it.")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=cmd_remove)


def _quota_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-24h-send", type=int, default=None, metavar="N",
                        help="recipients in a rolling 24 hours (0 = unlimited)")
    parser.add_argument("--max-send-rate", type=float, default=None, metavar="R",
                        help="recipients per second (0 = unlimited)")


@contextlib.contextmanager
def open_tenants(cfg: Config) -> Iterator[TenantStore]:
    """The tenant store of the config's spool, for one command (looks every read)."""
    queue = QueueStore(cfg.state_path / "queue", SystemClock(),
                       map_size=cfg.server.queue_map_size)
    try:
        yield TenantStore(queue, queue.clock)
    finally:
        queue.close_sync()


def operator() -> str:
    """Who did it, for the status record."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def tenant_row(t: Tenant, status: StatusRecord) -> dict[str, Any]:
    return {"name": t.name, "sandbox": t.sandbox, "status": status.status,
            "max_24h_send": t.quota.max_24h_send, "max_send_rate": t.quota.max_send_rate,
            "suppression_scope": t.suppression_scope,
            "created_at": iso(t.created_at) if t.created_at else None,
            "production_at": iso(t.production_at) if t.production_at else None}


def status_row(s: StatusRecord) -> dict[str, Any]:
    return {"status": s.status, "reason": s.reason, "automatic": s.automatic,
            "changed_at": iso(s.changed_at) if s.changed_at else None,
            "changed_by": s.changed_by,
            "last_fresh_start": iso(s.last_fresh_start) if s.last_fresh_start else None,
            "bounce_rate": s.bounce_rate, "complaint_rate": s.complaint_rate,
            "volume": s.volume}


def _run(args: argparse.Namespace, fn: Callable[[TenantStore], Any]) -> Any:
    with open_tenants(load_config(args)) as tenants:
        try:
            return fn(tenants)
        except TenantError as e:
            raise CliError(str(e)) from None


def cmd_add(args: argparse.Namespace) -> int:
    def add(ts: TenantStore) -> Tenant:
        quota = check_quota(args.max_24h_send, args.max_send_rate)
        return ts.write_now(ts.add_op(args.name, sandbox=args.sandbox, quota=quota,
                                      suppression_scope=args.suppression_scope))
    t: Tenant = _run(args, add)
    if args.json:
        print(json.dumps(tenant_row(t, StatusRecord())))
    else:
        where = "in the sandbox (`relay tenant production` ends it)" if t.sandbox \
            else "in production"
        print(f"tenant {t.name!r} added, {where}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    def rows(ts: TenantStore) -> list[dict[str, Any]]:
        return [tenant_row(t, ts.tenant_status(n)) for n, t in ts.tenants().items()]
    emit(_run(args, rows), ["name", "status", "sandbox", ("max_24h_send", "max 24h send"),
                            ("max_send_rate", "max send rate"),
                            ("suppression_scope", "suppression"), "created_at"],
         as_json=args.json)
    return 0


def show_data(ts: TenantStore, name: str,
              sent: Callable[[QueueStore, str], int] | None = None) -> dict[str, Any]:
    """The tenant, its status and its quota use (shared with the admin API's shape)."""
    t = ts.get(name)
    if t is None:
        raise TenantError(f"no tenant {name!r} (see `relay tenant list`)")
    count = (sent or SENT_LAST_24_HOURS)(ts.queue, name)
    return {**tenant_row(t, ts.tenant_status(name)),
            "status_record": status_row(ts.tenant_status(name)),
            "sent_last_24_hours": count}


def _cluster_sent(cfg: Config, name: str) -> int | None:
    """SentLast24Hours of tenant `name` across the cluster (its rolling window in Redis,
    as every node counts it), or None: no [cluster], or Redis unreachable."""
    if not cfg.cluster.enabled:
        return None
    # Imported here, only with [cluster] set: without it the CLI never loads redis.
    from relay.cluster.client import ClusterClient
    from relay.cluster.limits import SharedLimits
    from relay.cluster.quota import SharedQuota

    async def read() -> int | None:
        clock = SystemClock()
        client = ClusterClient(cfg.cluster, clock)
        try:
            quota = SharedQuota(SharedLimits(client, clock, lambda: 1))
            count, from_redis = await quota.sent_last_24h(name)
        finally:
            await client.close()
        return int(count) if from_redis else None

    return asyncio.run(read())


def cmd_show(args: argparse.Namespace) -> int:
    data: dict[str, Any] = _run(args, lambda ts: show_data(ts, args.name))
    cfg = load_config(args)
    # [cluster]: every node's count (this node's spool knows its own only), else this
    # node's figure, said so.
    shared = _cluster_sent(cfg, args.name)
    data["sent_last_24_hours_scope"] = "node" if shared is None else "cluster"
    if shared is not None:
        data["sent_last_24_hours"] = shared
    # What it sends under: its own quota, else [tenants], capped by the sandbox's.
    t = Tenant(args.name, sandbox=bool(data["sandbox"]),
               quota=Quota(data["max_24h_send"], data["max_send_rate"]))
    limits = effective_limits(cfg.tenants, t).tenant
    data["send_quota"] = {"max_24h_send": limits.max_24h_send,
                          "max_send_rate": limits.max_send_rate}
    if args.json:
        print(json.dumps(data))
        return 0
    st = data["status_record"]

    def val(v: Any) -> str:
        return "not set (the [tenants] default applies)" if v is None else \
            "unlimited" if v == 0 else str(v)
    lines = [
        ("Tenant", data["name"]),
        ("Status", st["status"] + (" (automatic)" if st["automatic"] else "")),
        ("Reason", st["reason"] or "-"),
        ("ChangedAt", f"{st['changed_at'] or '-'}"
                      + (f" by {st['changed_by']}" if st["changed_by"] else "")),
        ("LastFreshStart", st["last_fresh_start"] or "-"),
        ("Sandbox", "yes" if data["sandbox"] else
         f"no (production since {data['production_at'] or 'creation'})"),
        ("Max24HourSend", val(data["send_quota"]["max_24h_send"])
         + f" (own: {val(data['max_24h_send'])})"),
        ("MaxSendRate", val(data["send_quota"]["max_send_rate"])
         + f" (own: {val(data['max_send_rate'])})"),
        ("SentLast24Hours", str(data["sent_last_24_hours"]) + (
            " (this node only: redis unreachable)"
            if cfg.cluster.enabled and data["sent_last_24_hours_scope"] == "node" else "")),
        ("SuppressionScope", data["suppression_scope"]),
        ("CreatedAt", data["created_at"] or "-"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 2}}{value}")
    return 0


def cmd_quota(args: argparse.Namespace) -> int:
    if args.clear and (args.max_24h_send is not None or args.max_send_rate is not None):
        raise CliError("--clear: give it alone, not with --max-24h-send or --max-send-rate")
    if not args.clear and args.max_24h_send is None and args.max_send_rate is None:
        raise CliError("quota: expected --max-24h-send N, --max-send-rate R or --clear")

    def change(ts: TenantStore) -> Tenant:
        old = ts.get(args.name)
        if old is None:
            raise TenantError(f"no tenant {args.name!r} (see `relay tenant list`)")
        if args.clear:
            quota = check_quota(None, None)
        else:
            quota = check_quota(
                old.quota.max_24h_send if args.max_24h_send is None else args.max_24h_send,
                old.quota.max_send_rate if args.max_send_rate is None
                else args.max_send_rate)
        return ts.write_now(ts.set_quota_op(args.name, quota))
    t: Tenant = _run(args, change)
    def shown(v: float | None) -> str:
        return "not set" if v is None else str(v)
    print(f"tenant {t.name!r}: max_24h_send {shown(t.quota.max_24h_send)}, "
          f"max_send_rate {shown(t.quota.max_send_rate)}")
    return 0


def _scope(args: argparse.Namespace) -> str:
    if args.configuration_set:
        cfg = load_config(args)
        cs = cfg.configuration_set_named(args.name)
        if cs is None:
            known = ", ".join(c.name for c in cfg.configuration_set) or "none configured"
            raise CliError(f"no [[configuration_set]] named {args.name!r} in the config "
                           f"(configuration sets: {known})")
        return configuration_set_scope(cs.name)
    return tenant_scope(args.name)


def _to_cluster(args: argparse.Namespace, scope: str, rec: StatusRecord) -> None:
    """[cluster] set: the operator's pause or resume reaches every node, by Redis (on each
    the newer of it and the node's own status decides)."""
    cfg = load_config(args)
    if not cfg.cluster.enabled:
        return
    # Imported here, only with [cluster] set: without it the CLI never loads redis.
    from relay.cluster.node import publish_status_once

    if asyncio.run(publish_status_once(cfg.cluster, scope, rec, SystemClock())):
        print(f"{scope}: the change reaches every node of the cluster")
    else:
        raise CliError(f"{scope}: changed on this node only: redis unreachable, the other "
                       "nodes do not see it (run the command again when redis answers)")


def cmd_pause(args: argparse.Namespace) -> int:
    scope = _scope(args)
    rec: StatusRecord = _run(args, lambda ts: ts.write_now(
        ts.pause_op(scope, who=operator(), reason=args.reason)))
    print(f"{scope} paused ({rec.reason}); queued mail is held until "
          f"`relay tenant resume`")
    _to_cluster(args, scope, rec)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    scope = _scope(args)
    rec: StatusRecord = _run(args, lambda ts: ts.write_now(
        ts.resume_op(scope, who=operator(), reason=args.reason)))
    print(f"{scope} resumed: {rec.status}, reputation window starts now "
          f"({iso(rec.last_fresh_start)})")
    _to_cluster(args, scope, rec)
    return 0


def cmd_production(args: argparse.Namespace) -> int:
    t: Tenant = _run(args, lambda ts: ts.write_now(ts.production_op(args.name)))
    print(f"tenant {t.name!r} is out of the sandbox")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        credentials = UserStore(cfg.state_path / "users.json").tenant_map()
    except (UserError, OSError) as e:
        raise CliError(str(e)) from None
    t: Tenant = _run(args, lambda ts: ts.write_now(ts.remove_op(args.name, credentials)))
    print(f"tenant {t.name!r} removed")
    return 0


def check_tenants_exist(cfg: Config, names: list[str]) -> None:
    """CliError naming the first of `names` that is no tenant (for `relay user`). Only
    `default` (which always exists): the spool is not opened."""
    for name in names:
        if name != DEFAULT_TENANT and not valid_tenant_name(name):
            raise CliError(f"tenant name {name!r}: expected 1-64 letters, digits, '-' "
                           "or '_'")
    if all(n == DEFAULT_TENANT for n in names):
        return
    with open_tenants(cfg) as ts:
        known = ts.tenants()
    for name in names:
        if name not in known:
            some = ", ".join(list(known)[:10]) + (", ..." if len(known) > 10 else "")
            raise CliError(f"no tenant {name!r} (tenants: {some}; add it with "
                           f"`relay tenant add {name}`)")

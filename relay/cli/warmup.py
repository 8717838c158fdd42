"""`relay warmup status|set|freeze|resume|plan`: see and steer dedicated-IP warm-up.

status reads the per-IP counters the server keeps in the queue's LMDB ("warmup"
sub-database); set/freeze/resume write an operator change there with a higher
op_seq, which a running server adopts within a few seconds (relay/delivery/shaper.py).
With [cluster], set/freeze/resume are also made in Redis, which announces them to every
node (relay/cluster/warmup.py) and keeps them across restarts.
plan sizes a migration without touching any state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from relay.cli import CliError, load_config
from relay.clock import SystemClock
from relay.config import Config
from relay.events.log import tail
from relay.queue.store import QueueStore
from relay.warmup import counters
from relay.warmup import gate as gate_mod
from relay.warmup.planner import plan_for
from relay.warmup.plans import BUILTIN_PLANS, Plan
from relay.warmup.store import load_states, persist_op, total_states


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("warmup", help="dedicated-IP warm-up")
    wsub = p.add_subparsers(dest="warmup_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $RELAY_CONFIG or the embedded dev config)")

    st = wsub.add_parser("status", parents=[common],
                         help="per IP: plan, day, today's cap, sent today, next step")
    st.add_argument("--json", action="store_true", help="JSON instead of a table")
    st.set_defaults(func=cmd_status)

    s = wsub.add_parser("set", parents=[common], help="set an IP's plan day by hand")
    s.add_argument("ip")
    s.add_argument("--day", type=int, required=True, help="the plan day (1 or more)")
    s.set_defaults(func=cmd_set)
    for name, helptext, func in (("freeze", "stop an IP's plan from advancing", cmd_freeze),
                                 ("resume", "let a frozen IP's plan advance again", cmd_resume)):
        sp = wsub.add_parser(name, parents=[common], help=helptext)
        sp.add_argument("ip")
        sp.set_defaults(func=func)

    pl = wsub.add_parser("plan", parents=[common],
                         help="how many IPs a target volume needs, day by day")
    pl.add_argument("--daily-target", type=int, required=True, metavar="N")
    pl.add_argument("--peak-hourly", type=int, default=0, metavar="M")
    pl.add_argument("--plan", default="ses-standard", metavar="NAME",
                    help="a built-in plan or a [[warmup_plan]] of the config")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plan)


def _store(cfg: Config, *, create: bool) -> QueueStore | None:
    path = cfg.state_path / "queue"
    if not create and not (path / "data.mdb").exists():
        return None
    return QueueStore(path, SystemClock(), map_size=cfg.server.queue_map_size)


def _gate(cfg: Config, store: QueueStore | None, *, totals: bool = False
          ) -> gate_mod.WarmupGate:
    """A gate on the stored states: the IPs' own records (what operator changes are made
    to), or with `totals` every worker's counts added up (server.workers = N)."""
    if not cfg.pool:
        raise CliError("no [[pool]] in the config: warm-up needs pools of source IPs")
    if store is None:
        return gate_mod.from_config(cfg, {})
    return gate_mod.from_config(cfg, total_states(store) if totals else load_states(store))


WARMUP_EVENTS = ("WarmupFreeze", "WarmupBackoff")
_TAIL = 4 * 1024 * 1024   # how much of the end of the event log status reads


def recent_events(cfg: Config, per_ip: int = 5) -> dict[str, list[dict[str, Any]]]:
    """The last WarmupFreeze/WarmupBackoff events per IP, from the end of the event log."""
    path = Path(cfg.events.log)
    if not path.is_absolute():
        path = cfg.state_path / path
    try:
        found = tail(path, _TAIL, containing=b'"Warmup')
    except OSError:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for ev in found:
        if ev.get("eventType") not in WARMUP_EVENTS:
            continue
        w = ev.get("warmup") or {}
        out.setdefault(str(w.get("ip", "")), []).append({"eventType": ev["eventType"], **w})
    return {ip: evs[-per_ip:] for ip, evs in out.items()}


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = _store(cfg, create=False)
    try:
        g = _gate(cfg, store, totals=True)
        if cfg.cluster.enabled:
            _from_cluster(cfg, g)
        rows = g.status(SystemClock().now())
    finally:
        if store is not None:
            store.close_sync()
    events = recent_events(cfg)
    for r in rows:
        r["events"] = events.get(r["ip"], [])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'IP':16} {'POOL':12} {'PLAN':24} {'DAY':>4} {'CAP':>9} {'SENT':>9} "
          f"{'FROZEN':6} NEXT STEP")
    for r in rows:
        step = r["next_step"]
        nxt = f"day {step['day']}: {step['cap']} (from {step['earliest']})" if step else "-"
        if not r["started"]:
            nxt = "not started; " + nxt
        print(f"{r['ip']:16} {r['pool']:12} {r['plan'] or 'warm':24} "
              f"{r['day'] if r['day'] is not None else '-':>4} "
              f"{r['cap_today'] if r['cap_today'] is not None else '-':>9} "
              f"{r['sent_today']:>9} {'yes' if r['frozen'] else 'no':6} {nxt}")
        if r["frozen_reason"]:
            print(f"{'':16} frozen: {r['frozen_reason']}")
        for name, p in r["providers"].items():
            extra = f" paused until {p['paused_until']}" if p["paused_until"] else ""
            extra += " (today frozen by backoff)" if p["frozen_today"] else ""
            print(f"{'':16}   {name:12} day {p['day']:>3}  cap {p['cap'] or '-':>9}  "
                  f"sent {p['sent_today']:>9}{extra}")
        for e in r["events"]:
            print(f"{'':16}   {e['timestamp']} {e['eventType']} "
                  f"{e['provider'] or 'all providers'} until {e['until'] or 'resumed'}: "
                  f"{e['reason']}")
    return 0


def _operator(args: argparse.Namespace, action: str) -> int:
    cfg = load_config(args)
    store = _store(cfg, create=True)
    assert store is not None
    now = SystemClock().now()
    try:
        g = _gate(cfg, store)
        try:
            if action == "set":
                g.set_day(args.ip, args.day, now)
            elif action == "freeze":
                g.freeze(args.ip, now)
            else:
                g.resume(args.ip, now)
        except KeyError:
            raise CliError(f"{args.ip} is in no [[pool]] of the config") from None
        except ValueError as e:
            raise CliError(str(e)) from None
        blob = msgspec.msgpack.encode(g.state(args.ip))
        store.write_now(persist_op(store, {args.ip: blob}))
    finally:
        store.close_sync()
    what = {"set": f"plan day set to {getattr(args, 'day', 0)}", "freeze": "frozen",
            "resume": "resumed"}[action]
    print(f"{args.ip}: {what}")
    if cfg.cluster.enabled:
        value = {"set": str(getattr(args, "day", 0)), "freeze": "frozen by the operator",
                 "resume": ""}[action]
        _to_cluster(cfg, args.ip, action, value, g.days.day_of(now))
    return 0


def _from_cluster(cfg: Config, g: gate_mod.WarmupGate) -> None:
    """[cluster]: the warming IPs' counts, plan days and restrictions as Redis has them
    (every node's sends), over this node's copy; the copy alone when Redis is away."""
    # Imported here, only with [cluster] set: without it the CLI never loads redis.
    from relay.cluster.warmup import states_once

    ips = [ip.address for p in g.pools.values() if p.plan is not None for ip in p.ips]
    states = asyncio.run(states_once(cfg.cluster, ips, SystemClock()))
    if states is None:
        print("warning: redis unreachable: this node's copy of the warm-up counts",
              file=sys.stderr)
        return
    for ip, state in states.items():
        try:
            counters.adopt_state(g.state(ip), state)
        except (KeyError, TypeError, ValueError):
            print(f"warning: {ip}: unreadable warm-up state in redis", file=sys.stderr)


def _to_cluster(cfg: Config, ip: str, action: str, value: str, today: int) -> None:
    """[cluster]: the same change in Redis, announced to every node."""
    # Imported here, only with [cluster] set: without it the CLI never loads redis.
    from relay.cluster.warmup import operate_once

    if asyncio.run(operate_once(cfg.cluster, ip, action, value, today, SystemClock())):
        print(f"{ip}: the change reaches every node of the cluster")
    else:
        raise CliError(f"{ip}: changed on this node only: redis unreachable, the other "
                       "nodes do not see it (run the command again when redis answers)")


def cmd_set(args: argparse.Namespace) -> int:
    return _operator(args, "set")


def cmd_freeze(args: argparse.Namespace) -> int:
    return _operator(args, "freeze")


def cmd_resume(args: argparse.Namespace) -> int:
    return _operator(args, "resume")


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    custom = {p.name: p.caps for p in cfg.warmup_plan}
    if args.plan in custom:
        plan = Plan(args.plan, tuple(custom[args.plan]))
    elif args.plan in BUILTIN_PLANS:
        plan = BUILTIN_PLANS[args.plan]
    else:
        known = ", ".join(sorted({*BUILTIN_PLANS, *custom}))
        raise CliError(f"no warm-up plan {args.plan!r} (known plans: {known})")
    try:
        sizing = plan_for(args.daily_target, args.peak_hourly, plan,
                          burst=cfg.warmup.burst_factor, paced=cfg.warmup.pacing == "hourly")
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps(sizing.as_dict(), indent=2))
        return 0
    print(f"plan {plan.name}: {sizing.ips} IPs for {sizing.daily_target}/day "
          f"(daily target needs {sizing.ips_for_daily}, peak {sizing.peak_hourly}/h needs "
          f"{sizing.ips_for_peak}); full volume on day {sizing.full_volume_day}")
    print("caps are per IP per provider; the sizing counts one provider (the safe case)")
    print(f"{'DAY':>4} {'PER IP':>10} {'ALL IPS':>12}")
    for row in sizing.schedule:
        print(f"{row.day:>4} {row.cap_per_ip:>10} {row.total:>12}")
    return 0

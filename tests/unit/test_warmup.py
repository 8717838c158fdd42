"""Pure warm-up policy: plans, counters, pacing, providers, backoff, the gate, the planner.

Whole plans run on plain numbers for `now` (no event loop, no disk): 45 days of
hourly decisions for two IPs and two providers take milliseconds.
"""

from __future__ import annotations

import math
import time

import msgspec
import pytest

from relay.config import loads
from relay.warmup import backoff, counters, pacing
from relay.warmup.counters import DayClock, IpState
from relay.warmup.gate import IpSpec, PoolSpec, WarmupGate, from_config
from relay.warmup.planner import plan_for
from relay.warmup.plans import BUILTIN_PLANS, DOUBLE_EVERY_OTHER_DAY, SES_STANDARD, Plan
from relay.warmup.providers import OTHER, ProviderMap, ProviderRule, SiteLimits
from relay.warmup.shaping import SiteThrottle

DAY, HOUR = 86400.0, 3600.0
T0 = 1_790_035_200.0   # 2026-09-22T00:00:00Z, a day boundary
PROVIDERS = ("gmail", "microsoft")


def test_builtin_plans() -> None:
    assert len(SES_STANDARD.caps) == 45 and SES_STANDARD.cap(45) == 50_000
    assert SES_STANDARD.cap(46) == 50_000 and SES_STANDARD.cap(1) < 1000
    assert list(SES_STANDARD.caps) == sorted(SES_STANDARD.caps)
    d = DOUBLE_EVERY_OTHER_DAY
    assert (d.cap(1), d.cap(2), d.cap(3), d.cap(4), d.cap(19)) == (
        5_000, 5_000, 10_000, 10_000, 2_560_000)
    assert d.full_day == 19 and d.next_step(3) == (5, 20_000) and d.next_step(19) is None
    assert set(BUILTIN_PLANS) == {"ses-standard", "double-every-other-day"}


def test_pacing_spreads_the_cap_over_the_day() -> None:
    assert pacing.hourly_budget(2400, 1.0) == 100
    assert pacing.allowed(2400, 0, 0, mode="hourly", burst=1.0) == 100
    assert pacing.allowed(2400, 2350, 0, mode="hourly", burst=2.0) == 50
    assert pacing.allowed(2400, 0, 0, mode="none", burst=1.0) == 2400
    # 24 hourly budgets always add up to at least the cap (ceil), whatever the cap.
    for cap in (1, 7, 20, 23, 50_000):
        assert 24 * pacing.hourly_budget(cap, 1.0) >= cap
    assert pacing.next_window(100, 10, T0 + 90, T0 + DAY, mode="hourly", boundary=0) == \
        T0 + HOUR
    assert pacing.next_window(100, 100, T0 + 90, T0 + DAY, mode="hourly", boundary=0) == \
        T0 + DAY


def _gate(plan: Plan, *, overflow: str = "shared", start: float = T0, mode: str = "hourly",
          burst: float = 2.0, states: dict[str, IpState] | None = None) -> WarmupGate:
    days = DayClock()
    pools = {
        "dedicated": PoolSpec("dedicated", (IpSpec("10.0.0.10", "mta1"),
                                            IpSpec("10.0.0.11", "mta2")),
                              plan, days.day_of(start), overflow),
        "shared": PoolSpec("shared", (IpSpec("10.0.0.20", "shared1"),)),
    }
    return WarmupGate(pools, days, mode, burst, states=dict(states or {}))


def _sent(gate: WarmupGate, ip: str, provider: str, now: float) -> int:
    return counters.sent_today(gate.state(ip).providers[provider], gate.days.day_of(now))


def test_45_day_plan_each_ip_sends_exactly_its_cap_per_provider() -> None:
    t = time.perf_counter()
    gate = _gate(SES_STANDARD)
    overflow_total = demand_total = 0
    for day in range(1, 46):
        day_start = T0 + (day - 1) * DAY
        for hour in range(24):
            now = day_start + hour * HOUR + 60
            for prov in PROVIDERS:
                want = 6_000   # far more than any hourly budget
                demand_total += want
                d = gate.acquire("dedicated", prov, want, now)
                assert d.deferred == 0   # the excess always overflows to the warm pool
                overflow_total += sum(g.count for g in d.grants if g.pool == "shared")
                dedicated = sum(g.count for g in d.grants if g.pool == "dedicated")
                assert dedicated <= 2 * pacing.hourly_budget(SES_STANDARD.cap(day), 2.0)
            if day == 10 and hour == 12:   # restart mid-day: persist, reload, go on
                blob = {ip: msgspec.msgpack.encode(st) for ip, st in gate.states.items()}
                gate = _gate(SES_STANDARD, states={
                    ip: msgspec.msgpack.decode(b, type=IpState) for ip, b in blob.items()})
        for ip in ("10.0.0.10", "10.0.0.11"):
            for prov in PROVIDERS:
                assert _sent(gate, ip, prov, day_start) == SES_STANDARD.cap(day), (day, ip)
                st = gate.state(ip)
                assert counters.plan_day(st.providers[prov], st, gate.days.day_of(
                    day_start)) == day
    dedicated_total = 2 * len(PROVIDERS) * sum(SES_STANDARD.caps)
    assert overflow_total + dedicated_total == demand_total
    assert time.perf_counter() - t < 0.5


def test_defer_policy_waits_for_the_next_window() -> None:
    gate = _gate(Plan("tiny", (20, 40)), overflow="defer", mode="none")
    now = T0 + 5 * HOUR
    d = gate.acquire("dedicated", "gmail", 50, now)
    assert sum(g.count for g in d.grants) == 40 and d.deferred == 10
    assert {g.ip for g in d.grants} == {"10.0.0.10", "10.0.0.11"}
    assert d.retry_at == T0 + DAY and "no capacity" in d.reason
    # Another provider has its own cap the same day.
    assert sum(g.count for g in gate.acquire("dedicated", "yahoo", 50, now).grants) == 40
    # Next day: day 2 of the plan for both IPs.
    d2 = gate.acquire("dedicated", "gmail", 100, T0 + DAY + 1)
    assert sum(g.count for g in d2.grants) == 80 and d2.deferred == 20


def test_hourly_pacing_defers_to_the_next_hour() -> None:
    gate = _gate(Plan("p", (2400,)), overflow="defer", burst=1.0)
    d = gate.acquire("dedicated", "gmail", 1000, T0 + 30)
    assert sum(g.count for g in d.grants) == 200 and d.retry_at == T0 + HOUR


def test_before_start_date_nothing_is_sent() -> None:
    gate = _gate(SES_STANDARD, overflow="defer", start=T0 + 2 * DAY)
    d = gate.acquire("dedicated", "gmail", 5, T0)
    assert d.grants == () and d.retry_at == T0 + 2 * DAY


def test_day_advances_only_on_sending_days_and_freeze_set_resume() -> None:
    gate = _gate(Plan("p", (10, 20, 30, 40, 50, 60)), overflow="defer", mode="none")
    ip = "10.0.0.10"
    for day in (0, 1):      # plan days 1, 2
        gate.acquire("dedicated", "gmail", 1000, T0 + day * DAY)
    # Days 2-4: nothing sent. Day 5 is plan day 3.
    assert gate.cap(gate.pools["dedicated"], ip, "gmail", T0 + 5 * DAY) == 30
    # Microsoft never sent: still day 1 there.
    assert gate.cap(gate.pools["dedicated"], ip, "microsoft", T0 + 5 * DAY) == 10
    gate.acquire("dedicated", "gmail", 1000, T0 + 5 * DAY)
    gate.freeze(ip, T0 + 6 * DAY)
    gate.acquire("dedicated", "gmail", 1000, T0 + 6 * DAY)    # sent while frozen
    assert gate.cap(gate.pools["dedicated"], ip, "gmail", T0 + 7 * DAY) == 40  # day 4, not 5
    gate.resume(ip, T0 + 7 * DAY)
    gate.acquire("dedicated", "gmail", 1000, T0 + 7 * DAY)
    assert gate.cap(gate.pools["dedicated"], ip, "gmail", T0 + 8 * DAY) == 50
    gate.set_day(ip, 2, T0 + 8 * DAY)
    assert gate.cap(gate.pools["dedicated"], ip, "gmail", T0 + 8 * DAY) == 20
    assert gate.cap(gate.pools["dedicated"], ip, "apple", T0 + 8 * DAY) == 20
    with pytest.raises(KeyError):
        gate.freeze("192.0.2.1", T0)


def test_backoff_pauses_the_ip_toward_the_provider_and_freezes_the_day() -> None:
    gate = _gate(Plan("p", (10, 20, 30)), overflow="defer", mode="none")
    d = gate.acquire("dedicated", "gmail", 1, T0 + 10)
    (g,) = d.grants
    notices = gate.settle(g, [("deferred", "421 4.7.28 unusual rate of unsolicited mail")],
                          T0 + 20)
    assert notices and "pause_and_freeze" in notices[0]
    st = gate.state(g.ip)
    assert st.providers["gmail"].paused_until == T0 + 20 + 2 * HOUR
    assert counters.sent_today(st.providers["gmail"], 0 + gate.days.day_of(T0)) == 0  # refunded
    # Only the other IP sends to gmail now; the paused one waits; microsoft is unaffected.
    d2 = gate.acquire("dedicated", "gmail", 100, T0 + 30)
    assert {x.ip for x in d2.grants} == {"10.0.0.11" if g.ip == "10.0.0.10" else "10.0.0.10"}
    assert {x.ip for x in gate.acquire("dedicated", "microsoft", 100, T0 + 30).grants} == {
        "10.0.0.10", "10.0.0.11"}
    # After the pause it sends again, but the frozen day does not advance its plan.
    d3 = gate.acquire("dedicated", "gmail", 100, T0 + 3 * HOUR)
    assert sum(x.count for x in d3.grants if x.ip == g.ip) == 10
    assert gate.cap(gate.pools["dedicated"], g.ip, "gmail", T0 + DAY) == 10
    assert gate.cap(gate.pools["dedicated"], d2.grants[0].ip, "gmail", T0 + DAY) == 20


def test_backoff_rules() -> None:
    rules = (backoff.rule(r"^550 5\.7\.1 .*blocked", "pause", 600, "gmail"),
             *backoff.BUILTIN_RULES)
    assert backoff.match(rules, "gmail", "550 5.7.1 you are blocked").action == "pause"
    assert backoff.match(rules, "yahoo", "550 5.7.1 you are blocked") is None
    assert backoff.match(rules, "microsoft",
                         "451 4.7.500 Server busy. Please try again later. (S3150)")
    assert backoff.match(rules, "other", "421 4.7.0 too many connections")
    assert backoff.match(rules, "other", "451 4.3.0 mailbox busy") is None


def test_bounce_rate_freezes_the_plan() -> None:
    gate = _gate(Plan("p", (1000,)), overflow="defer", mode="none")
    gate.reputation = type(gate.reputation)(0.05, 0.001, 24, 100)
    notices: list[str] = []
    for i in range(40):
        (g,) = gate.acquire("dedicated", "other", 10, T0 + i).grants
        outs = [("bounced", "550 5.1.1 no such user")] * (2 if i % 2 else 0)
        outs += [("delivered", "250 ok")] * (10 - len(outs))
        notices += gate.settle(g, outs, T0 + i)
    assert any("bounce rate" in n for n in notices)
    assert any(gate.state(ip).frozen for ip in ("10.0.0.10", "10.0.0.11"))


def test_providers_and_sites() -> None:
    pm = ProviderMap([ProviderRule("corp", ("mx*.corp.test",), SiteLimits(max_connections=2))])
    assert pm.site(["gmail-smtp-in.l.google.com."]).provider == "gmail"
    assert pm.site(["alt1.aspmx.l.google.com", "x.test"]).key == "gmail"
    assert pm.site(["example-com.mail.protection.outlook.com"]).provider == "microsoft"
    assert pm.site(["mta5.am0.yahoodns.net"]).provider == "yahoo"
    assert pm.site(["mx1.corp.test"]).limits.max_connections == 2
    other = pm.site(["mx2.b.test", "mx1.b.test"])
    assert other.provider == OTHER and other.key == "mx:mx1.b.test,mx2.b.test"
    assert pm.site(["MX1.b.test.", "mx2.b.test"]).key == other.key   # one site, shared


def test_site_throttle() -> None:
    th = SiteThrottle()
    lim = SiteLimits(messages_per_second=2, messages_per_hour=5)
    assert th.allowed("gmail", lim, T0, 10) == 2
    th.take("gmail", lim, T0, 2)
    assert th.allowed("gmail", lim, T0, 10) == 0 and th.next_at("gmail", lim, T0) == T0 + 0.5
    assert th.allowed("gmail", lim, T0 + 1, 10) == 2
    th.take("gmail", lim, T0 + 1, 2)
    th.take("gmail", lim, T0 + 2, 1)
    assert th.allowed("gmail", lim, T0 + 3, 10) == 0
    assert th.next_at("gmail", lim, T0 + 3) == math.floor(T0 / HOUR + 1) * HOUR
    assert th.allowed("other", SiteLimits(), T0, 7) == 7


def test_planner_sizes_a_migration() -> None:
    s = plan_for(10_000_000, 2_000_000, SES_STANDARD, burst=2.0)
    assert s.ips_for_daily == 200                 # 10M / 50k
    assert s.ips_for_peak == math.ceil(2_000_000 / math.ceil(50_000 * 2 / 24))
    assert s.ips == max(s.ips_for_daily, s.ips_for_peak)
    assert s.schedule[s.full_volume_day - 1].total >= 10_000_000
    assert s.schedule[s.full_volume_day - 2].total < 10_000_000
    assert len(s.schedule) == 45 and s.as_dict()["ips"] == s.ips


def test_gate_from_config_and_day_boundary() -> None:
    cfg = loads('''
[warmup]
day_boundary = "06:00"
[[warmup_plan]]
name = "tiny"
caps = [3, 6]
[[pool]]
name = "d"
ips = [{address = "127.0.0.10", ehlo = "mta1.test"}, "127.0.0.11"]
ehlo = {"127.0.0.11" = "mta2.test"}
warmup_plan = "tiny"
warmup_start = "2026-09-22"
[[backoff]]
pattern = "^452 4\\\\.5\\\\.3"
action = "pause"
duration = "10m"
''')
    gate = from_config(cfg)
    pool = gate.pools["d"]
    assert [(i.address, i.ehlo) for i in pool.ips] == [("127.0.0.10", "mta1.test"),
                                                        ("127.0.0.11", "mta2.test")]
    # The warm-up day starts at 06:00 UTC: at 05:00 on the start date, not started yet.
    assert gate.acquire("d", "gmail", 10, T0 + 5 * HOUR).grants == ()
    d = gate.acquire("d", "gmail", 10, T0 + 6 * HOUR)
    assert sum(g.count for g in d.grants) == 2     # ceil(3 * 2 / 24) = 1 per IP per hour
    assert gate.rules[0].action == "pause" and gate.rules[0].duration == 600


@pytest.mark.parametrize(("text", "expected"), [
    ('[[pool]]\nname = "a"\nips = ["1.2.3.4"]\noverflow = "b"\n',
     'pool[0].overflow: expected "defer" or another pool\'s name, got "b"'),
    ('[[pool]]\nname = "a"\nips = ["1.2.3.4"]\nwarmup_plan = "x"\nwarmup_start = "2026-01-01"\n',
     'pool[0].warmup_plan: no plan "x" (known plans: double-every-other-day, ses-standard)'),
    ('[[pool]]\nname = "a"\nips = ["1.2.3.4"]\nwarmup_plan = "ses-standard"\n',
     "pool[0]: warmup_start (day 1 of the plan) is required with warmup_plan"),
    ('[delivery]\npool = "z"\n', 'delivery.pool: no [[pool]] named "z"'),
    ('[[pool]]\nname = "a"\nips = ["1.2.3.4"]\n[[pool]]\nname = "b"\nips = ["1.2.3.4"]\n',
     'pool[1].ips[0]: "1.2.3.4" is already in pool "a"'),
    ('[[pool]]\nname = "a"\nips = ["1.2.3"]\n',
     "pool[0].ips[0]: '1.2.3' is not an IP address, got \"1.2.3\""),
    ('[[pool]]\nname = "a"\nips = []\n',
     'pool[0].ips: expected a list (each "IP" or {address = "IP", ehlo = "name"}) '
     'with at least 1 item(s), got []'),
    ('[[backoff]]\npattern = "x"\nprovider = "nope"\n', 'backoff[0].provider: no provider "nope"'),
    ('[warmup]\nburst_factor = 0.5\n',
     "warmup.burst_factor: expected a number between 1 and 24, got 0.5"),
])
def test_pool_config_errors_name_the_key(text: str, expected: str) -> None:
    from relay.config import ConfigError
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert expected in info.value.problems


def test_worker_keys_and_whole_ip_counts() -> None:
    """server.workers = N: worker i keeps "IP#i"; a status adds the workers' counts."""
    c = counters

    assert c.worker_key("192.0.2.1", None) == "192.0.2.1"
    assert c.worker_key("192.0.2.1", (0, 2)) == "192.0.2.1"
    assert c.worker_key("2001:db8::1", (1, 2)) == "2001:db8::1#1"
    assert c.parse_key("2001:db8::1#1") == ("2001:db8::1", 1)
    assert c.parse_key("192.0.2.1") == ("192.0.2.1", 0)

    total = c.IpState(providers={
        "gmail": c.ProviderCounter(advanced=4, day=10, sent=30, hour=240, hour_sent=5),
        "yahoo": c.ProviderCounter(advanced=2, day=9, sent=7)},
        reputation=[c.Bucket(239, 10, 1, 0), c.Bucket(240, 5, 0, 0)])
    other = c.IpState(frozen=True, frozen_reason="bounce rate", providers={
        "gmail": c.ProviderCounter(advanced=5, day=10, sent=12, hour=241, hour_sent=3,
                                   paused_until=99.0, pause_reason="421"),
        "yahoo": c.ProviderCounter(advanced=2, day=10, sent=4),   # a later day replaces
        "outlook": c.ProviderCounter(day=10, sent=2)},
        reputation=[c.Bucket(240, 7, 2, 1), c.Bucket(241, 3, 0, 0)])
    c.add_counts(total, other)
    g, y, o = (total.providers[n] for n in ("gmail", "yahoo", "outlook"))
    assert (g.day, g.sent, g.hour, g.hour_sent, g.advanced) == (10, 42, 241, 3, 5)
    assert (g.paused_until, g.pause_reason) == (99.0, "421")
    assert (y.day, y.sent) == (10, 4) and (o.day, o.sent) == (10, 2)
    assert total.frozen and total.frozen_reason == "bounce rate"
    assert [(b.hour, b.sent, b.bounced, b.complained) for b in total.reputation] == [
        (239, 10, 1, 0), (240, 12, 2, 1), (241, 3, 0, 0)]

    plan = c.plan_only(total)
    assert plan.frozen and plan.providers["gmail"].advanced == 5
    assert plan.providers["gmail"].sent == 0 and plan.providers["gmail"].hour_sent == 0
    assert plan.reputation == [] and total.providers["gmail"].sent == 42  # a copy

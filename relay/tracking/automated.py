"""Which open and click hits a machine made (PURE): scanners, prefetchers, link checkers.

A hit is flagged automated, with the reason, when (in this order):
- it comes within `any_hit_within` seconds of delivery (the message has just reached the
  provider: scanners act then, readers have not opened it yet);
- its user agent matches a [[user_agent]] rule (security scanners, Office's link check,
  Apple Mail Privacy Protection's prefetch, headless browsers, HTTP libraries, link
  previews; the Google image proxy only right after delivery, because it is also how every
  real open of a Gmail user arrives);
- its address is in a [[network]] rule's ranges (the providers' scanning networks);
- it is a click and the recipient has clicked every link of the message within
  `every_link_within` seconds (a scanner following each link).

The rules are data, relay/data/tracking_bots.toml, read and validated once when this
module is imported: a damaged file stops relay with the key and the value named. Flagged
hits are still published (marked automated) but do not count as engagement.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Literal, NamedTuple

import msgspec

from relay import datafile

Kind = Literal["open", "click"]
BOTS_FILE = "data/tracking_bots.toml"
MAX_USER_AGENT = 1024   # longer user agents are matched on their first 1024 characters

_Seconds = Annotated[float, msgspec.Meta(ge=0)]
_Text = Annotated[str, msgspec.Meta(min_length=1)]
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BotRulesError(Exception):
    """The rule file is not valid; names the file, the key and the value."""


class Verdict(NamedTuple):
    automated: bool
    reason: str   # "" when not automated


HUMAN = Verdict(False, "")


@dataclass(frozen=True)
class Hit:
    kind: Kind
    ip: str
    user_agent: str
    at: float                          # when the hit arrived (clock seconds)
    delivered_at: float | None = None  # when the message was delivered; None: unknown
    # For a click: the recipient's clicks on this message so far, this one included, as
    # (link index, time), and how many trackable links the message has.
    clicks: Sequence[tuple[int, float]] = ()
    link_count: int = 0


@dataclass(frozen=True)
class AgentRule:
    reason: str
    contains: str | None      # lower-case substring
    equals: str | None        # the whole user agent
    kinds: frozenset[str]
    within: float | None      # seconds after delivery; None: any time


@dataclass(frozen=True)
class NetworkRule:
    reason: str
    networks: tuple[_Network, ...]
    kinds: frozenset[str]
    within: float | None


@dataclass(frozen=True)
class BotRules:
    any_hit_within: float
    every_link_within: float
    every_link_minimum: int
    agents: tuple[AgentRule, ...]
    networks: tuple[NetworkRule, ...]


class _Timing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    any_hit_within: _Seconds
    every_link_within: _Seconds
    every_link_minimum: Annotated[int, msgspec.Meta(ge=1)]


class _Agent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: _Text
    contains: _Text | None = None
    equals: str | None = None
    kinds: Annotated[list[Kind], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["open", "click"])
    within: _Seconds | None = None


class _Net(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: _Text
    cidrs: Annotated[list[str], msgspec.Meta(min_length=1)]
    kinds: Annotated[list[Kind], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["open", "click"])
    within: _Seconds | None = None


class _BotsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    timing: _Timing
    user_agent: list[_Agent] = []
    network: list[_Net] = []


_SECTIONS: dict[str, type[msgspec.Struct]] = {  # datafile.load: unknown keys
    "": _BotsFile, "timing": _Timing, "user_agent": _Agent, "network": _Net}


def parse_rules(text: str, source: str = BOTS_FILE) -> BotRules:
    """The rules of a bots file; BotRulesError names what is wrong."""
    data = datafile.load(text, source, _BotsFile, _SECTIONS, BotRulesError,
                         {"Invalid enum value": "expected \"open\" or \"click\""})
    agents = []
    for i, a in enumerate(data.user_agent):
        if (a.contains is None) == (a.equals is None):
            raise BotRulesError(
                f"{source}: user_agent[{i}]: expected exactly one of `contains` or `equals`"
                f", got {'both' if a.contains is not None else 'neither'}")
        agents.append(AgentRule(a.reason, a.contains.lower() if a.contains else None,
                                a.equals, frozenset(a.kinds), a.within))
    networks = []
    for i, n in enumerate(data.network):
        nets = []
        for j, cidr in enumerate(n.cidrs):
            try:
                nets.append(ipaddress.ip_network(cidr, strict=True))
            except ValueError as e:
                raise BotRulesError(f"{source}: network[{i}].cidrs[{j}]: expected a CIDR "
                                    f"such as \"192.0.2.0/24\" ({e}), got {cidr!r}") from None
        networks.append(NetworkRule(n.reason, tuple(nets), frozenset(n.kinds), n.within))
    t = data.timing
    return BotRules(t.any_hit_within, t.every_link_within, t.every_link_minimum,
                    tuple(agents), tuple(networks))


def _load_builtin() -> BotRules:
    path = resources.files("relay").joinpath(BOTS_FILE)
    return parse_rules(path.read_text(encoding="utf-8"), f"relay/{BOTS_FILE}")


BUILTIN_RULES: BotRules = _load_builtin()


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip[:64].strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _applies(kinds: frozenset[str], within: float | None, hit: Hit, age: float | None) -> bool:
    if hit.kind not in kinds:
        return False
    return within is None or (age is not None and age <= within)


def clicked_every_link(clicks: Sequence[tuple[int, float]], link_count: int, at: float,
                       rules: BotRules = BUILTIN_RULES) -> bool:
    """Whether the clicks made in the `every_link_within` seconds up to `at` cover every
    link of a message with at least `every_link_minimum` links."""
    if link_count < rules.every_link_minimum:
        return False
    since = at - rules.every_link_within
    recent = {link for link, when in clicks if since <= when <= at}
    return len(recent) >= link_count and set(range(link_count)) <= recent


def classify(hit: Hit, rules: BotRules = BUILTIN_RULES) -> Verdict:
    """(automated, reason) for one open or click hit."""
    age = None if hit.delivered_at is None else max(0.0, hit.at - hit.delivered_at)
    if age is not None and age <= rules.any_hit_within:
        return Verdict(True, f"{age:.1f} s after delivery")
    agent = hit.user_agent[:MAX_USER_AGENT]
    lowered = agent.lower()
    for a in rules.agents:
        if not _applies(a.kinds, a.within, hit, age):
            continue
        if (a.contains is not None and a.contains in lowered) or \
                (a.equals is not None and agent.strip() == a.equals):
            return Verdict(True, f"user agent: {a.reason}")
    addr = _address(hit.ip)
    if addr is not None:
        for n in rules.networks:
            if _applies(n.kinds, n.within, hit, age):
                for net in n.networks:
                    if addr.version == net.version and addr in net:
                        return Verdict(True, f"network {net}: {n.reason}")
    if hit.kind == "click" and clicked_every_link(hit.clicks, hit.link_count, hit.at, rules):
        return Verdict(True, f"clicked all {hit.link_count} links within "
                             f"{rules.every_link_within:g} s")
    return HUMAN

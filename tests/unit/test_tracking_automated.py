"""Machine-generated open and click hits: the shipped rules and the rule file's checks."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from relay.tracking.automated import (
    BUILTIN_RULES,
    HUMAN,
    BotRulesError,
    Hit,
    classify,
    clicked_every_link,
    parse_rules,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "relay" / "data" / "tracking_bots.toml"
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")
IPHONE_MAIL = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
               "(KHTML, like Gecko) Mobile/15E148")
GMAIL_PROXY = ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
               "(via ggpht.com GoogleImageProxy)")
OUTLOOK_CHECK = ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)")
DELIVERED = 1_000_000.0
LATER = DELIVERED + 3600


CASES = [
    # (kind, ip, user agent, seconds after delivery, automated, reason contains)
    ("open", "198.51.100.7", CHROME, 3600, False, ""),
    ("click", "198.51.100.7", CHROME, 3600, False, ""),
    ("open", "198.51.100.7", IPHONE_MAIL, 3600, False, ""),
    ("open", "198.51.100.7", CHROME, 1, True, "after delivery"),
    ("click", "198.51.100.7", "BarracudaCentral scanner", 3600, True, "Barracuda"),
    ("click", "198.51.100.7", OUTLOOK_CHECK, 3600, True, "Microsoft Office"),
    ("open", "198.51.100.7", OUTLOOK_CHECK, 3600, False, ""),  # Outlook showing images
    ("open", "66.249.84.1", GMAIL_PROXY, 5, True, "Google image proxy"),
    ("open", "66.249.84.1", GMAIL_PROXY, 3600, False, ""),  # a Gmail reader's real open
    ("open", "198.51.100.7", "Mozilla/5.0", 3600, True, "Privacy Protection"),
    ("click", "198.51.100.7", "Mozilla/5.0", 3600, False, ""),
    ("open", "17.58.1.2", IPHONE_MAIL, 3600, True, "Privacy Protection"),
    ("click", "17.58.1.2", CHROME, 3600, False, ""),
    ("click", "40.107.22.9", CHROME, 3600, True, "Exchange Online"),
    ("click", "::ffff:40.107.22.9", CHROME, 3600, True, "Exchange Online"),
    ("click", "2a01:111:f400::1", CHROME, 3600, True, "Exchange Online"),
    ("click", "148.163.130.1", CHROME, 3600, True, "Proofpoint"),
    ("click", "198.51.100.7", "Mozilla/5.0 HeadlessChrome/120.0", 3600, True, "headless"),
    ("click", "198.51.100.7", "python-requests/2.31", 3600, True, "HTTP library"),
    ("open", "198.51.100.7", "", 3600, True, "no user agent"),
    ("open", "not an address", CHROME, 3600, False, ""),
    ("open", "198.51.100.7", "x" * 100_000, 3600, False, ""),
]


@pytest.mark.parametrize("kind,ip,agent,age,automated,reason", CASES)
def test_shipped_rules(kind: str, ip: str, agent: str, age: float, automated: bool,
                       reason: str) -> None:
    verdict = classify(Hit(kind, ip, agent, DELIVERED + age, DELIVERED))  # type: ignore[arg-type]
    assert verdict.automated is automated
    assert reason in verdict.reason and (verdict.reason == "") is (not automated)


def test_without_a_delivery_time_only_timeless_rules_apply() -> None:
    assert classify(Hit("open", "66.249.84.1", GMAIL_PROXY, LATER)) == HUMAN
    assert classify(Hit("click", "40.107.1.1", CHROME, LATER)).automated


def test_clicks_on_every_link_at_once_are_a_scanner() -> None:
    burst = [(0, LATER - 2), (1, LATER - 1), (2, LATER)]
    hit = Hit("click", "198.51.100.7", CHROME, LATER, DELIVERED, burst, link_count=3)
    assert classify(hit) == (True, "clicked all 3 links within 5 s")
    # Spread over minutes, or not every link: a reader.
    spread = [(0, LATER - 600), (1, LATER - 300), (2, LATER)]
    assert classify(Hit("click", "198.51.100.7", CHROME, LATER, DELIVERED, spread, 3)) == HUMAN
    assert not clicked_every_link(burst[:2], 3, LATER)
    assert not clicked_every_link([(0, LATER)], 1, LATER)  # one link: below the minimum
    assert not clicked_every_link([(0, LATER), (0, LATER), (5, LATER)], 2, LATER)


def test_the_shipped_file_is_the_builtin_rule_set_and_package_data() -> None:
    assert parse_rules(SHIPPED.read_text(encoding="utf-8")) == BUILTIN_RULES
    assert BUILTIN_RULES.any_hit_within > 0 and BUILTIN_RULES.agents and BUILTIN_RULES.networks
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["relay"]
    assert any(fnmatch.fnmatch("data/tracking_bots.toml", g) for g in globs)


TIMING = "[timing]\nany_hit_within = 2\nevery_link_within = 5\nevery_link_minimum = 2\n"


@pytest.mark.parametrize("text,message", [
    ("[timing]\nany_hit_within = -1\nevery_link_within = 5\nevery_link_minimum = 2\n",
     "timing.any_hit_within: expected `float` >= 0.0, got -1"),
    (TIMING.replace("every_link_minimum = 2", "every_link_minimum = 0"),
     "timing.every_link_minimum: expected `int` >= 1, got 0"),
    ("", "(top level): object missing required field `timing`"),
    ("[timing]\nany_hit_within = 2\n", "missing required field `every_link_within`"),
    (TIMING + "[[network]]\nreason = \"x\"\ncidrs = [\"10.0.0.1/8\"]\n",
     "network[0].cidrs[0]: expected a CIDR such as \"192.0.2.0/24\""),
    (TIMING + "[[network]]\nreason = \"x\"\ncidrs = [\"nope\"]\n", "got 'nope'"),
    (TIMING + "[[user_agent]]\nreason = \"x\"\ncontain = \"a\"\n",
     "user_agent[0].contain: unknown key (known keys: contains, equals, kinds, reason, within)"),
    (TIMING + "[[user_agent]]\nreason = \"x\"\n",
     "user_agent[0]: expected exactly one of `contains` or `equals`, got neither"),
    (TIMING + "[[user_agent]]\nreason = \"x\"\ncontains = \"a\"\nequals = \"b\"\n",
     "got both"),
    (TIMING + "[[user_agent]]\nreason = \"x\"\nequals = \"\"\nkinds = [\"view\"]\n",
     "user_agent[0].kinds[0]: expected \"open\" or \"click\", got 'view'"),
    (TIMING + "[[user_agent]]\nreason = \"x\"\nequals = \"\"\nwithin = \"soon\"\n",
     "user_agent[0].within: expected `float | null`, got 'soon'"),
    ("[timing\n", "not valid TOML"),
])
def test_a_bad_rule_file_names_the_key_and_value(text: str, message: str) -> None:
    with pytest.raises(BotRulesError) as e:
        parse_rules(text, "bots.toml")
    assert str(e.value).startswith("bots.toml: ")
    assert message in str(e.value)

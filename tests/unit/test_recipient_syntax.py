"""relay.smtp.address.recipient_syntax_error on generated addresses: every RFC 5321
Mailbox of dot-atoms and LDH labels passes; breaking any one part fails."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.smtp.address import recipient_syntax_error

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
atom = st.text(alphabet=ATEXT, min_size=1, max_size=8)
local = st.lists(atom, min_size=1, max_size=3).map(".".join).filter(lambda s: len(s) <= 64)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
tld = st.from_regex(r"[a-z]{2,6}", fullmatch=True)
domain = st.tuples(st.lists(label, min_size=1, max_size=3), tld).map(
    lambda parts: ".".join([*parts[0], parts[1]]))


@given(local, domain)
def test_every_dot_atom_at_a_host_name_is_accepted(lp: str, dom: str) -> None:
    assert recipient_syntax_error(f"{lp}@{dom}") is None


@given(local, domain, st.sampled_from(["_", " ", "!", "..", "@", ",", "("]))
def test_a_bad_character_in_the_domain_is_refused(lp: str, dom: str, bad: str) -> None:
    first, _, rest = dom.partition(".")
    assert recipient_syntax_error(f"{lp}@{first}{bad}x.{rest}") is not None


@given(local, domain)
def test_missing_parts_are_refused(lp: str, dom: str) -> None:
    assert recipient_syntax_error(lp) is not None  # no @domain
    assert recipient_syntax_error(f"@{dom}") is not None
    assert recipient_syntax_error(f"{lp}@") is not None
    assert recipient_syntax_error(f"{lp}@{dom.rpartition('.')[2]}") is not None  # no dot
    assert recipient_syntax_error(f".{lp}@{dom}") is not None
    assert recipient_syntax_error(f"{'x' * 65}@{dom}") is not None

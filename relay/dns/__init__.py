"""DNS for relay: lookups with a clock-driven cache, and MX routing decisions.

answers.py (plain result types, the Resolver protocol), cache.py (TTL cache), route.py (pure
RFC 5321 §5.1 / RFC 7505 decisions) never import dnspython; resolver.py is the only module
that does. Import the dnspython adapter from relay.dns.resolver explicitly.
"""

from relay.dns.answers import Lookup, MxRecord, Resolver, Status
from relay.dns.route import Route, RouteFailure, Target, Targets

__all__ = ["Lookup", "MxRecord", "Resolver", "Route", "RouteFailure", "Status", "Target",
           "Targets"]

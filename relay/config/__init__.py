"""TOML → typed, validated configuration.

Rule: every key relay reads is declared in this package, with its default, as a frozen
msgspec Struct. `load()` walks the raw TOML against these declarations and collects
*every* problem (unknown key, wrong type, bad unit, out of range) with its key path, the
value it saw and what it expected, so `relay check-config` can print them all at once.
Nothing else in relay parses configuration.

One job per module; this one re-exports their public names (`from relay.config import X`):

  types.py      value types with their own syntax (Duration, Size, Address, ...), their
                parsers and bounded numbers; domain, host and tenant name syntaxes
  server.py     sections of the process and its listeners: server, listener, tls, dns,
                limits, feedback, admin
  delivery.py   sections of delivery: delivery, pool, warmup_plan, warmup, provider, backoff
  sending.py    identity, dkim, configuration_set, events, event_destination, suppression
  tenants.py    tenants (default quotas, the sandbox) and reputation
  api.py        api: the SES HTTP API (the region clients sign for)
  cluster.py    cluster: the Redis several nodes share (relay/cluster/)
  history.py    history: the message history and sending statistics (retention, flush)
  root.py       Config: the whole file, one field per section
  describe.py   how problems name types and values
  load.py       TOML → Config: the schema walk, ConfigError, load/loads/from_dict
  checks.py     rules across sections, and config_warnings
"""

from __future__ import annotations

from relay.config.api import Api
from relay.config.checks import config_warnings
from relay.config.cluster import Cluster
from relay.config.delivery import (
    DEFAULT_RETRY_SCHEDULE,
    Backoff,
    Delivery,
    Pool,
    Provider,
    Warmup,
    WarmupPlan,
)
from relay.config.history import History
from relay.config.load import ConfigError, from_dict, load, loads
from relay.config.root import Config
from relay.config.sending import (
    ConfigurationSet,
    Dkim,
    EventDestination,
    Events,
    Identity,
    Suppression,
    Tracking,
)
from relay.config.server import Admin, Dns, Feedback, Limits, Listener, Server, Tls
from relay.config.tenants import Reputation, Tenants
from relay.config.types import (
    Address,
    Duration,
    Fraction,
    HostPort,
    Nameserver,
    Network,
    NextHop,
    PoolIp,
    Port,
    PositiveInt,
    RateLine,
    Size,
    parse_duration,
    parse_host_port,
    parse_network,
    parse_pool_ip,
    parse_size,
    valid_domain,
    valid_hostname,
)

__all__ = [
    "DEFAULT_RETRY_SCHEDULE",
    "Address",
    "Admin",
    "Api",
    "Backoff",
    "Cluster",
    "Config",
    "ConfigError",
    "ConfigurationSet",
    "Delivery",
    "Dkim",
    "Dns",
    "Duration",
    "EventDestination",
    "Events",
    "Feedback",
    "Fraction",
    "History",
    "HostPort",
    "Identity",
    "Limits",
    "Listener",
    "Nameserver",
    "Network",
    "NextHop",
    "Pool",
    "PoolIp",
    "Port",
    "PositiveInt",
    "Provider",
    "RateLine",
    "Reputation",
    "Server",
    "Size",
    "Suppression",
    "Tenants",
    "Tls",
    "Tracking",
    "Warmup",
    "WarmupPlan",
    "config_warnings",
    "from_dict",
    "load",
    "loads",
    "parse_duration",
    "parse_host_port",
    "parse_network",
    "parse_pool_ip",
    "parse_size",
    "valid_domain",
    "valid_hostname",
]

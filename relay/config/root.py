"""Config: the whole configuration file, one field per top-level section (the sections are
declared in server.py, delivery.py, sending.py, tenants.py, api.py and history.py).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from relay.config.api import Api
from relay.config.cluster import Cluster
from relay.config.delivery import Backoff, Delivery, Pool, Provider, Warmup, WarmupPlan
from relay.config.history import History
from relay.config.sending import (
    ConfigurationSet,
    Dkim,
    EventDestination,
    Events,
    Identity,
    Suppression,
)
from relay.config.server import Admin, Dns, Feedback, Limits, Listener, Server, Tls
from relay.config.tenants import Reputation, Tenants


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server: Server = Server()
    listener: list[Listener] = []
    tls: Tls = Tls()
    dns: Dns = Dns()
    delivery: Delivery = Delivery()
    limits: Limits = Limits()
    feedback: Feedback = Feedback()
    admin: Admin = Admin()
    api: Api = Api()
    events: Events = Events()
    history: History = History()
    identity: list[Identity] = []
    dkim: Dkim = Dkim()
    pool: list[Pool] = []
    warmup_plan: list[WarmupPlan] = []
    warmup: Warmup = Warmup()
    provider: list[Provider] = []
    backoff: list[Backoff] = []
    suppression: Suppression = Suppression()
    tenants: Tenants = Tenants()
    reputation: Reputation = Reputation()
    configuration_set: list[ConfigurationSet] = []
    event_destination: list[EventDestination] = []
    cluster: Cluster = Cluster()

    def configuration_set_named(self, name: str) -> ConfigurationSet | None:
        for cs in self.configuration_set:
            if cs.name.lower() == name.lower():
                return cs
        return None

    @property
    def state_path(self) -> Path:
        return Path(self.server.state_dir)

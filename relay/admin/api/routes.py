"""The admin API's route table (ROUTES: method, path, handler) and make_app, which builds
the aiohttp application from it with the guard and the security headers.

relay.admin.openapi describes the same paths; a test checks the two agree.
"""

from __future__ import annotations

from aiohttp import web

from relay.admin.api.cluster import cluster
from relay.admin.api.common import Handler
from relay.admin.api.context import CTX, AdminContext
from relay.admin.api.events import events
from relay.admin.api.guard import _guard, _security_headers
from relay.admin.api.history import message_show, messages_search
from relay.admin.api.identities import identities
from relay.admin.api.pages import dashboard, health, metrics, openapi
from relay.admin.api.queue import (
    queue_bounce,
    queue_delete,
    queue_domain_bounce,
    queue_domain_delete,
    queue_domain_retry,
    queue_list,
    queue_retry,
    queue_show,
)
from relay.admin.api.stats import stats
from relay.admin.api.status import dashboard_data, status
from relay.admin.api.stream import events_stream
from relay.admin.api.suppression import (
    suppression_add,
    suppression_list,
    suppression_remove,
)
from relay.admin.api.tenants import (
    tenants_add,
    tenants_list,
    tenants_pause,
    tenants_production,
    tenants_remove,
    tenants_resume,
    tenants_show,
)
from relay.admin.api.tracking import (
    TRACKING_STATE,
    TrackingState,
    click_redirect,
    open_pixel,
)
from relay.admin.api.unsubscribe import unsubscribe, unsubscribe_page
from relay.admin.api.users import users_add, users_list, users_remove
from relay.admin.api.warmup import warmup

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/api/queue", queue_list),
    # Per destination (?domain=), before the per-message paths they could be read as.
    ("POST", "/api/queue/retry", queue_domain_retry),
    ("POST", "/api/queue/bounce", queue_domain_bounce),
    ("DELETE", "/api/queue", queue_domain_delete),
    ("GET", "/api/queue/{id}", queue_show),
    ("POST", "/api/queue/{id}/retry", queue_retry),
    ("POST", "/api/queue/{id}/bounce", queue_bounce),
    ("DELETE", "/api/queue/{id}", queue_delete),
    ("GET", "/api/suppression", suppression_list),
    ("POST", "/api/suppression", suppression_add),
    ("DELETE", "/api/suppression/{address}", suppression_remove),
    ("GET", "/api/identities", identities),
    ("GET", "/api/warmup", warmup),
    ("GET", "/api/users", users_list),
    ("POST", "/api/users", users_add),
    ("DELETE", "/api/users/{name}", users_remove),
    ("GET", "/api/tenants", tenants_list),
    ("POST", "/api/tenants", tenants_add),
    ("GET", "/api/tenants/{name}", tenants_show),
    ("DELETE", "/api/tenants/{name}", tenants_remove),
    ("POST", "/api/tenants/{name}/pause", tenants_pause),
    ("POST", "/api/tenants/{name}/resume", tenants_resume),
    ("POST", "/api/tenants/{name}/production", tenants_production),
    ("GET", "/api/events", events),
    ("GET", "/api/events/stream", events_stream),
    ("GET", "/api/messages", messages_search),
    ("GET", "/api/messages/{id}", message_show),
    ("GET", "/api/stats", stats),
    ("GET", "/api/status", status),
    ("GET", "/api/cluster", cluster),
    ("GET", "/api/dashboard", dashboard_data),
    ("GET", "/metrics", metrics),
    ("GET", "/health", health),
    ("GET", "/openapi.json", openapi),
    ("GET", "/", dashboard),
    ("POST", "/unsubscribe/{token}", unsubscribe),
    ("GET", "/unsubscribe/{token}", unsubscribe_page),
    ("GET", "/t/o/{token}", open_pixel),
    ("HEAD", "/t/o/{token}", open_pixel),
    ("GET", "/t/c/{token}", click_redirect),
    ("HEAD", "/t/c/{token}", click_redirect),
]


def make_app(ctx: AdminContext) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=1 << 20)
    app.on_response_prepare.append(_security_headers)
    app[CTX] = ctx
    app[TRACKING_STATE] = TrackingState(ctx)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app

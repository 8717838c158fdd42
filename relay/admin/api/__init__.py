"""The admin HTTP API (aiohttp): JSON under /api/, /metrics, /openapi.json, the dashboard at /.

Rules: every /api/ request needs `Authorization: Bearer <token>` (401 otherwise; tokens
from relay.admin.tokens); wrong input is a 400 `{"error": ..., "field": ...}` naming the
query parameter, path part or JSON key (query strings and JSON bodies are decoded into
the Structs of relay.admin.params; path parts are checked in the handlers); unknown ids
are 404. Responses never contain a secret: no password hash, no token or token hash, no
DKIM private key, no message body.
Queue actions go through the store's group committer like the scheduler's own writes.
Suppression reads and writes relay/suppression's list, tenants relay/tenants/store.py
(both in the queue's LMDB environment).
Must not: block the event loop on slow work (scrypt runs in a thread).

The modules, from the bottom (a contract in pyproject.toml keeps this order):
  context      AdminContext (what the API reads and acts on) and its shared readers
  common       JSON responses and errors, query and body decoding, the token's request key
  queue, suppression, identities, warmup, users, tenants, events, status (and the
  dashboard's data), pages (/metrics, /openapi.json, the dashboard), unsubscribe (RFC
  8058 one-click): one noun's handlers each; guard: the bearer-token and error middleware
  and the security headers
  routes       ROUTES and make_app
"""

from relay.admin.api.common import TOKEN_NAME, VERSION, Handler
from relay.admin.api.context import CTX, HISTORY_POINTS, AdminContext
from relay.admin.api.guard import SECURITY_HEADERS
from relay.admin.api.pages import dashboard_html
from relay.admin.api.routes import ROUTES, make_app

__all__ = [
    "CTX",
    "HISTORY_POINTS",
    "ROUTES",
    "SECURITY_HEADERS",
    "TOKEN_NAME",
    "VERSION",
    "AdminContext",
    "Handler",
    "dashboard_html",
    "make_app",
]

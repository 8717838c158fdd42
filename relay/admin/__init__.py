"""The admin HTTP side: the JSON API and dashboard (api, openapi, server), the Prometheus
metrics (metrics) and the bearer tokens that guard them (tokens)."""

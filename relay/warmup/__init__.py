"""Dedicated-IP warm-up: plans, per-IP counters, pacing, providers, backoff, planner.

Every module here is pure (STYLE §3 rule 1): plain data in, decision out, time
passed in as `now` by the caller. No asyncio, lmdb or sockets; the thin shell
that binds source IPs and persists counters (through store.py here) is
relay/delivery/shaper.py.
"""

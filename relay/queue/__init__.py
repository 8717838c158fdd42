"""Durable LMDB queue: message bodies, per-recipient state and the schedule index."""

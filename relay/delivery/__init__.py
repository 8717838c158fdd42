"""Delivery: routing, scheduling, the SMTP client and result classification."""

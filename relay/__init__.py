"""relay: a self-hosted, high-throughput outbound mail platform."""

__version__ = "0.1.0"

"""Message history and sending statistics: what happened to each message, per recipient,
and how much was sent, delivered, deferred, bounced and complained about, over time."""

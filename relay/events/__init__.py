"""SES-shaped events: Send, Delivery, Bounce, DeliveryDelay; the JSON-lines log."""

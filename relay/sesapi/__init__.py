"""The SES HTTP API: AWS Signature V4 verification (sigv4.py, PURE) and the access keys
that sign for an SMTP credential (keys.py)."""

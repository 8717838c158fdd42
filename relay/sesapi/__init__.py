"""The SES HTTP API: what the SES v2/v1 operations build on.

Owns: sigv4 (PURE: AWS Signature V4 verification, SES SMTP passwords), keys (the access
keys that sign for an SMTP credential), render (PURE: SES templates with Handlebars
semantics, bounded), templates (the template store in the spool), mime (PURE: the
RFC 5322 message of SendEmail's Simple and Template content).
"""

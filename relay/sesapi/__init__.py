"""The SES HTTP API.

Owns: sigv4 (PURE: AWS Signature V4 verification), keys (the access keys that sign for an
SMTP credential), render (PURE: SES templates with Handlebars semantics, bounded),
templates (the template store in the spool), mime (PURE: the RFC 5322 message of
SendEmail's Simple and Template content), errors (PURE: SES v2 errors), operations (the
SES v2 operations on the shared submission pipeline) and server (the aiohttp listener).
"""

"""The SES HTTP API: what the SES v2/v1 operations build on.

Owns: render (PURE: SES templates with Handlebars semantics, bounded), templates (the
template store in the spool), mime (PURE: the RFC 5322 message of SendEmail's Simple and
Template content).
"""

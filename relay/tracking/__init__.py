"""Engagement tracking: signed open/click tokens, the HTML rewriter, the automated-hit rules."""

"""Sending identities (domains and addresses), sending authorization and their DNS checks."""

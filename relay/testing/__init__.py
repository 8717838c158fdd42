"""Test tools shipped with relay (like trio.testing): a loopback DNS server and SMTP sinks.

They are real servers on loopback sockets, used by the test suite and by bench/.
"""

"""The account model: tenants, their sending quotas, sandbox and reputation status."""

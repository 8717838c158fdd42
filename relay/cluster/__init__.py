"""Several relay nodes, one set of limits: the counters, leases, flags and suppression list
the nodes share, in Redis ([cluster] redis_url). Imported only when [cluster] is set, so
a single node never loads the redis client library.

One job per module:
  client.py    the connection from the URL (Sentinel too), timeouts, the `up` flag, the
               round-trip latency and its metrics; every failure is ClusterUnavailable
  scripts.py   the Lua scripts (all arithmetic happens in Redis, atomically): capped
               fixed windows, sliding windows, connection leases, flags with PUBLISH
  limits.py    the counters callers use: Redis when it answers, the local share when not,
               reconciled when it returns
  fallback.py  PURE: the local share while Redis is unreachable and the ledger of counts
               made meanwhile
  flags.py     pause/status flags and the suppression list: authoritative in Redis, a local
               view kept current by pub/sub
  nodes.py     the heartbeat of each node and the live node list
  digests.py   digests of the files a deployment distributes to every node
  quota.py     tenant and credential quotas (24 h, send rate) counted in Redis
  shaping.py   provider/site messages per second and per hour, and connection leases
               per site, for all nodes together
  suppression.py  each node's copy of the suppression list follows Redis
  status.py    what `relay cluster status` and /api/cluster show
  node.py      this process as a node: built by relay/wiring.py, started by relay/app.py
"""

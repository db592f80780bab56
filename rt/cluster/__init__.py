"""A local cluster for trying rt on several nodes: `rt cluster` (docs/cluster.md).

It sits beside the server, like the race lab: it starts processes (a
redis-server and N `rt demo --redis` nodes) and a round-robin TCP front, and
speaks to them over sockets only. `rt chaos run --nodes N` uses the same
processes.
"""

from __future__ import annotations


class ClusterError(Exception):
    """The cluster (or the lab) cannot run: the message says what to fix (exit 2)."""

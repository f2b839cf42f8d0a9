"""Which users a simulated node plays: one (``cohort-size = 1``) or a contiguous shard of them.

Node ``p`` (its ``partition-id``) of a simulation with ``cohort-size = N`` plays users
``[p N, (p + 1) N)`` (the last shard may be shorter); the server and the node both derive it from
the run config, so the only thing the node says of itself is ``p`` (server/population.py).
"""

from __future__ import annotations


def shard_users(partition: int, cohort_size: int, num_users: int) -> range:
    """The users node ``partition`` plays."""
    size = max(cohort_size, 1)
    start = partition * size
    return range(start, min(start + size, num_users))


def shard_count(num_users: int, cohort_size: int) -> int:
    """How many nodes a simulation of ``num_users`` users needs at ``cohort-size``."""
    return -(-num_users // max(cohort_size, 1))

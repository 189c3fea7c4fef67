"""One token's rate, shared by the consumer group's members.

Clari allows 100 calls per second per token, whatever the number of replicas using it.
With HTTP_RATE_SHARING=partitions each member takes the part of HTTP_RATE_LIMIT that its
assigned partitions are of all the subscribed topics' partitions, recomputed on every
rebalance. Shares are lowered as soon as partitions are revoked (before another member
can take them up) and raised once they are assigned, so the members' sum never passes
the token's rate, even during a rebalance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class RateShare:
    def __init__(self, total: float, sharing: str, apply: Callable[[float], None]) -> None:
        self.total = total
        self.sharing = sharing
        self._apply = apply  # sets the share on the pace and the HTTP client
        self.partitions_total: int | None = None
        self.current = total

    def update(self, assigned: int, partitions_total: int | None) -> None:
        """Recompute for ``assigned`` partitions of ``partitions_total`` (None: unknown,
        the last known total is used)."""
        if partitions_total:
            self.partitions_total = partitions_total  # also read by sink/last_batch.py
        if self.sharing != "partitions":
            return
        whole = self.partitions_total
        if not whole:
            return  # nothing known yet: keep the current share
        share = self.total * max(1, min(assigned, whole)) / whole
        if share != self.current:
            log.info(
                "rate share: %.1f of %.1f calls/s (%d of %d partitions)",
                share,
                self.total,
                assigned,
                whole,
            )
            self.current = share
            self._apply(share)

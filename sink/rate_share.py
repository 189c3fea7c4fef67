"""One token's rate, shared by the consumer group's members.

Clari allows 100 calls per second per token, whatever the number of replicas using it.
With HTTP_RATE_SHARING=partitions each member takes the part of HTTP_RATE_LIMIT that its
assigned partitions are of all the subscribed topics' partitions, recomputed on every
rebalance. Shares are lowered when a revocation ends, before another member can take
the partitions up (sink/rebalance.py), and raised once they are assigned, so the
members' sum never passes the token's rate, even during a rebalance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class RateShare:
    """This member's share of the token's rate, slowed for a while after a 429.

    A 429 while the sink paces itself means the token's calls went over Clari's count
    anyway: arrival jitter bunching evenly spaced calls, or another client on the same
    token. Either way the lever is the rate, not the calls in flight (halving those cost
    about a second at half speed per 429 at 200 ms a call: 6 % of a run with three). So a
    burst of 429s takes 5 % off the rate, given back at 2.5 % of it a second: a lone burst
    (jitter) costs a quarter of what a tenth off, 5 % back a second did (some 2.4 calls,
    not 9.5), and 429s that go on every second still take the rate down, 2.5 % a second
    net."""

    CUT = 0.95
    RECOVER_PER_S = 0.025
    FLOOR = 0.1

    def __init__(self, total: float, sharing: str, apply: Callable[[float], None]) -> None:
        self.total = total
        self.sharing = sharing
        self._apply = apply  # sets the rate on the pace and the HTTP client
        self.partitions_total: int | None = None
        self.current = total  # the share, before any slowing down
        self.factor = 1.0  # what 429s left of it
        self._cut_at = -1e9
        self._cut_to = 1.0

    def pushback(self) -> None:
        """A 429: slow down (once per burst: the calls in flight answer together)."""
        now = time.monotonic()
        if now - self._cut_at < 1.0:
            return
        self._cut_to = max(self.FLOOR, self._recovered(now) * self.CUT)
        self._cut_at = now
        self.factor = self._cut_to
        self._apply(self.current * self.factor)

    def tick(self) -> None:
        """Give back what the time since the last 429 allows (called from the main loop)."""
        if self.factor >= 1.0:
            return
        factor = self._recovered(time.monotonic())
        if factor == 1.0 or factor - self.factor >= 0.01:
            self.factor = factor
            self._apply(self.current * factor)

    def _recovered(self, now: float) -> float:
        return min(1.0, self._cut_to + (now - self._cut_at) * self.RECOVER_PER_S)

    def update(self, assigned: int, partitions_total: int | None) -> None:
        """Recompute for ``assigned`` partitions of ``partitions_total`` (None: unknown,
        the last known total is used)."""
        if partitions_total:
            self.partitions_total = partitions_total
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
            self._apply(share * self.factor)

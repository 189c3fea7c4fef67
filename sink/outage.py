"""One dependency's outage as the log tells it: once when it starts, a reminder while it
lasts, once when it ends.

librdkafka reports a stopped broker about 40 times a second (every connection of every
client, each retry), the API fails every call of every lane, the registry every fetch:
logged as they come, an outage of a minute buried the log under two thousand lines
saying one thing. Here each failure is counted and its detail goes to DEBUG; what an
operator reads at INFO and above is a line when the dependency goes (where, and the
first error), a reminder every ``remind_s`` while it stays away (how long, how many
failures, the last error), and a line when it is back (how long it was gone).

A dependency that flaps (fails, recovers, fails again within ``remind_s``, as an API
that answers one call in ten with a 503 does) is not announced again on every failure:
within ``remind_s`` of the last announcement the new episode goes to DEBUG, its failures
are counted, and the next announcement says how many there were meanwhile. An episode
that lasts ``remind_s / 6`` (10 s) is announced all the same: a real outage that starts
just after a blip is not hidden for a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

REMIND_S = 60.0


@dataclass(frozen=True, slots=True)
class Wording:
    """How the log names the dependency and its two states."""

    what: str  # "Kafka broker"
    down: str  # "unreachable"
    up: str  # "reachable again"


class Outage:
    def __init__(
        self,
        wording: Wording,
        where: str,
        logger: logging.Logger,
        remind_s: float = REMIND_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wording = wording
        self.where = where
        self._log = logger
        self._remind_s = remind_s
        self._clock = clock
        self.since: float | None = None  # when this episode started; None: up
        self.failures = 0  # in this episode
        self._announced = False  # this episode's start was logged at WARNING
        self._unreported = 0  # failures not yet told at WARNING or above
        self._next_line = float("-inf")  # no WARNING about this dependency before this

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, error: str) -> None:
        """One more failure (``error``: masked, its detail)."""
        now = self._clock()
        w = self.wording
        if self.since is None:
            self.since = now
            self.failures = 0
            self._announced = False
        self.failures += 1
        self._unreported += 1
        lasting = now - self.since >= self._remind_s / 6
        if now < self._next_line and (self._announced or not lasting):
            self._log.debug("%s %s (%s): %s", w.what, w.down, self.where, error)
            return
        self._next_line = now + self._remind_s
        if not self._announced:
            self._announced = True
            self._log.warning(
                "%s %s (%s): %s%s", w.what, w.down, self.where, error, self._meanwhile()
            )
        else:
            self._log.warning(
                "%s still %s (%s) after %s: %d failure(s) since the last report, last: %s",
                w.what, w.down, self.where, _duration(now - self.since),
                self._unreported, error,
            )  # fmt: skip
        self._unreported = 0

    def recovered(self) -> None:
        """The dependency answered again (cheap when it was not down: called on every
        success)."""
        if self.since is None:
            return
        now = self._clock()
        gone = _duration(now - self.since)
        w = self.wording
        level = logging.INFO if self._announced else logging.DEBUG
        self._log.log(
            level,
            "%s %s (%s) after %s, %d failure(s)",
            w.what, w.up, self.where, gone, self.failures,
        )  # fmt: skip
        if self._announced:
            self._unreported = 0
        self.since = None

    def _meanwhile(self) -> str:
        earlier = self._unreported - 1
        return f" ({earlier} failure(s) since the last report)" if earlier > 0 else ""


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"

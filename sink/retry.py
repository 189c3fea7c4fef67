"""What to do with an API answer, and how long to wait before trying again."""

from __future__ import annotations

import email.utils
import enum
import random
import time


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # throttled, server error, timeout, connection error
    AUTH = "auth"  # credential rejected: retried until someone fixes it, never dead-lettered
    REJECT = "reject"  # the request itself is wrong: resending it unchanged cannot help


RETRIABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
AUTH_FAILURES = frozenset({401, 403})
PUSHBACK = frozenset({429, 503})  # the API asks us to slow down


def classify(status: int | None) -> Verdict:
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.OK
    if status in AUTH_FAILURES:
        return Verdict.AUTH
    if status in RETRIABLE or status >= 500:
        return Verdict.RETRY
    return Verdict.REJECT


class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's variant)."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng or random.Random()

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_s, self.initial_s * (2 ** min(attempt - 1, 30)))
        wait = self._rng.uniform(0, ceiling)
        if retry_after_s is not None:
            # The server said when; never earlier than that, capped so a bad header can't stall us.
            wait = max(wait, min(retry_after_s, max(self.max_s, 1.0) * 10))
        return wait


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))

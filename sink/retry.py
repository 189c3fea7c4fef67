"""What to do with an API answer, and how long to wait before trying again."""

from __future__ import annotations

import email.utils
import enum
import math
import random
import re
import time


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # throttled, server error, timeout, connection error, not an HTTP status
    AUTH = "auth"  # credential rejected: retried until someone fixes it, never dead-lettered
    REJECT = "reject"  # the request itself is wrong: resending it unchanged cannot help
    # A 3xx. Redirects are never followed: following one sends the credential headers to
    # whatever host it names, and a 301/302/303 turns the POST into a bodiless GET whose
    # 200 would count records as delivered that never reached Clari. Clari's ingest paths
    # answer no 3xx, so one means a wrong URL or something in between: a final error.
    REDIRECT = "redirect"


RETRIABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
AUTH_FAILURES = frozenset({401, 403})
PUSHBACK = frozenset({429, 503})  # the API asks us to slow down
# What RFC 9110 (15) defines. aiohttp hands over any three digits (042, 999); an answer
# outside this range is not HTTP's: it says nothing about the records, like no answer.
VALID_STATUS = range(100, 600)

# A Retry-After is a server's word on when to come back; a bad or hostile one must not
# park a batch for ever. Backoff caps it again at ten times RETRY_BACKOFF_MAX_MS.
RETRY_AFTER_MAX_S = 3_600.0
_DELTA_SECONDS = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() takes "²"


def classify(status: int | None) -> Verdict:
    if status is None or status not in VALID_STATUS:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.OK
    if 300 <= status < 400:
        return Verdict.REDIRECT
    if status in AUTH_FAILURES:
        return Verdict.AUTH
    if status in RETRIABLE or status >= 500 or status < 200:
        # A 1xx as the final answer (aiohttp skips the interim ones) is no answer either.
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
        if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
            # The server said when; never earlier than that, capped so a bad header can't stall us.
            wait = max(wait, min(retry_after_s, max(self.max_s, 1.0) * 10))
        return wait


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3), within
    0 and RETRY_AFTER_MAX_S; None for anything else (negative, garbage, out of range)."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), RETRY_AFTER_MAX_S)  # float() of 400 digits is inf
    try:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - (now if now is not None else time.time())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S)

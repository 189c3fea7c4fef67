from __future__ import annotations

import random

import pytest

from sink.retry import Backoff, Verdict, classify, parse_retry_after


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.OK),
        (202, Verdict.OK),
        (None, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (401, Verdict.AUTH),
        (403, Verdict.AUTH),
        (400, Verdict.REJECT),
        (413, Verdict.REJECT),
        (428, Verdict.REJECT),
        (404, Verdict.REJECT),
    ],
)
def test_classify(status: int | None, verdict: Verdict) -> None:
    assert classify(status) is verdict


def test_full_jitter_stays_under_the_capped_exponential() -> None:
    b = Backoff(0.1, 2.0, random.Random(1))
    for attempt in range(1, 20):
        for _ in range(50):
            assert 0 <= b.delay(attempt) <= min(2.0, 0.1 * 2 ** (attempt - 1))


def test_retry_after_is_honoured() -> None:
    b = Backoff(0.1, 2.0, random.Random(1))
    assert b.delay(1, retry_after_s=5) == 5
    assert parse_retry_after("7") == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_rate_limiter_spaces_calls_evenly() -> None:
    import itertools
    import time

    from sink.http_client import RateLimiter

    limiter = RateLimiter(200)
    stamps = []
    for _ in range(60):
        await limiter.acquire()
        stamps.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 1 / 200 - 0.001  # never a burst
    assert stamps[-1] - stamps[0] < 60 * 1.02 / 200 + 0.1  # and no slower than the pace

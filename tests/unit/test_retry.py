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
        (301, Verdict.REDIRECT),
        (302, Verdict.REDIRECT),
        (307, Verdict.REDIRECT),
        (308, Verdict.REDIRECT),
        (42, Verdict.RETRY),  # not an HTTP status: says nothing about the records
        (600, Verdict.RETRY),
        (999, Verdict.RETRY),
        (102, Verdict.RETRY),
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


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("\u00b2", None),  # str.isdigit() says yes, float() raised
        ("\u0661\u0662", None),  # Arabic-Indic digits
        ("-5", None),
        ("1e9", None),
        ("nan", None),
        ("inf", None),
        (" 7 ", 7.0),
        ("9" * 400, 3_600.0),  # capped, not inf
        ("Wed, 21 Oct 99999 07:28:00 GMT", None),
        ("Mon, 31 Feb 2015 07:28:00 GMT", None),
        ("Wed, 21 Oct 2999 07:28:00 GMT", 3_600.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: now
    ],
)
def test_a_hostile_retry_after_never_raises_and_stays_bounded(
    value: str, seconds: float | None
) -> None:
    assert parse_retry_after(value, now=1_800_000_000.0) == seconds
    wait = Backoff(0.1, 2.0, random.Random(1)).delay(1, parse_retry_after(value))
    assert 0 <= wait <= 20.0


async def test_rate_limiter_spaces_calls_evenly() -> None:
    import time

    from sink.http_client import RateLimiter

    limiter = RateLimiter(200)
    stamps = []
    for _ in range(60):
        await limiter.acquire()
        stamps.append(time.monotonic())
    spacing = RateLimiter.MARGIN / 200
    # Never a burst: a late call may be followed by two at once (CATCH_UP), but no four
    # go within a spacing.
    assert all(d - a >= spacing - 0.001 for a, d in zip(stamps, stamps[3:], strict=False))
    assert stamps[-1] - stamps[0] < 60 * RateLimiter.MARGIN / 200 + 0.1  # no slower than the pace


def test_late_calls_keep_the_schedule_and_no_second_holds_more_than_the_rate() -> None:
    """Calls let through late (a busy event loop) keep their schedule instead of
    restarting it, yet no sliding second ever holds more than rate / MARGIN + 3 calls."""
    import random

    from sink.http_client import RateLimiter, next_slot

    rng = random.Random(3)
    spacing = RateLimiter.MARGIN / 100
    scheduled, stamps = 0.0, []
    for _ in range(2_000):
        # Timers fire late, now and then by most of a spacing (the bench machine).
        now = scheduled + rng.choice([0.0, 0.001, 0.002, 0.003, 0.004, 0.008, 0.01, 0.02])
        stamps.append(now)
        scheduled = next_slot(scheduled, now, spacing)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert rate > 94  # restarting the schedule at every late call: 1 / 12.5 ms = 80
    assert busiest_second(stamps) <= 100 / RateLimiter.MARGIN + 3


@pytest.mark.parametrize("rate", [100 / 3, 25.0, 50.0, 20.0, 100 / 6, 100 / 7, 100 / 12])
def test_a_members_small_share_is_never_passed_by_catching_up(rate: float) -> None:
    """Three members share 100 calls/s: 33.3 each. Catching up two spacings let a second
    hold 34 of one member's calls; the catch-up is cut to what the margin holds."""
    import random

    from sink.http_client import RateLimiter, next_slot

    rng = random.Random(5)
    spacing = RateLimiter.MARGIN / rate
    scheduled, stamps = 0.0, []
    for _ in range(1_000):
        now = scheduled + rng.choice([0.0, 0.0, 0.001, spacing, 3 * spacing])
        stamps.append(now)
        scheduled = next_slot(scheduled, now, spacing)
    assert busiest_second(stamps) <= rate


def busiest_second(stamps: list[float]) -> int:
    """The most calls in any sliding second of ``stamps`` (ascending)."""
    most, j = 0, 0
    for i, t in enumerate(stamps):
        while stamps[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    return most

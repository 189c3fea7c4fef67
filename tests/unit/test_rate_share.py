"""One token's rate shared by the group's members (sink/rate_share.py)."""

from __future__ import annotations

from sink.rate_share import RateShare


def test_each_member_takes_its_partitions_share_and_the_sum_never_passes_the_token() -> None:
    applied: list[float] = []
    a = RateShare(100.0, "partitions", applied.append)
    b = RateShare(100.0, "partitions", lambda r: None)
    a.update(6, 6)  # alone: the whole rate
    assert a.current == 100.0
    # B joins: A's revoke lowers A first (total known), then B's assignment raises B.
    a.update(3, None)
    assert a.current == 50.0
    b.update(3, 6)
    assert a.current + b.current == 100.0
    assert applied == [50.0]  # only changes are applied
    a.update(0, 6)  # nothing assigned: a single partition's share, never zero
    assert a.current == 100.0 / 6


def test_sharing_none_keeps_the_whole_rate_per_member() -> None:
    share = RateShare(100.0, "none", lambda r: None)
    share.update(1, 6)
    assert share.current == 100.0


def test_a_429_slows_the_rate_for_a_while_and_429s_that_go_on_keep_slowing_it(
    monkeypatch: object,
) -> None:
    import sink.rate_share as rs

    now = [1_000.0]
    monkeypatch.setattr(rs.time, "monotonic", lambda: now[0])  # type: ignore[attr-defined]
    applied: list[float] = []
    share = RateShare(100.0, "partitions", applied.append)
    share.update(3, 6)  # 50 calls/s
    share.pushback()
    assert applied[-1] == 47.5  # 5 % off
    share.pushback()  # the same burst: no second cut
    assert applied[-1] == 47.5
    now[0] += 1.0
    share.tick()
    assert round(applied[-1], 2) == 48.75  # 2.5 % of the rate back per second
    share.update(6, 6)  # a rebalance meanwhile: the new share, still slowed
    assert round(applied[-1], 2) == 97.5
    share.pushback()  # another 429 a second later: cut from where it was
    assert round(applied[-1], 2) == 92.62
    for _ in range(5):  # 429s every second: the rate keeps going down
        now[0] += 1.0
        share.tick()
        share.pushback()
    assert applied[-1] < 85.0
    now[0] += 20.0
    share.tick()
    assert applied[-1] == 100.0 and share.factor == 1.0


def test_a_member_asks_again_for_the_partition_count_until_the_broker_answers() -> None:
    # The metadata read failing once marked the share fresh, at the whole rate: six
    # members would have made 600 calls/s until the next rebalance.
    import asyncio
    from typing import Any, cast

    from sink import rebalance

    class Source:
        def __init__(self) -> None:
            self.assignment = {("t", 0)}
            self.answers: list[int | None] = [None, 6]
            self.timeouts: list[float] = []

        async def partitions_of_topics(self, timeout_s: float = 5.0) -> int | None:
            self.timeouts.append(timeout_s)
            return self.answers.pop(0)

    applied: list[float] = []
    rate = RateShare(100.0, "partitions", applied.append)
    member = rebalance.Rebalance(
        cast(Any, Source()), cast(Any, None), cast(Any, None), cast(Any, None),
        cast(Any, None), cast(Any, None), rate, 30.0,
    )  # fmt: skip
    member.share_stale = True
    asyncio.run(member.refresh_share())
    assert rate.current == 100.0 and member.share_stale  # nothing known yet: asks again
    asyncio.run(member.refresh_share())
    assert rate.current == 100.0  # not before SHARE_RETRY_S
    member._share_retry_at -= rebalance.SHARE_RETRY_S  # as if 2 s went by
    asyncio.run(member.refresh_share())
    assert round(rate.current, 2) == 16.67 and not member.share_stale
    source = cast(Any, member.source)
    assert source.timeouts == [5.0, rebalance.SHARE_RETRY_TIMEOUT_S]  # a retry waits less

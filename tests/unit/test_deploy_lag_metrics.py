"""Consumer lag and committed-offset age, as /metrics shows them (sink/lag.py)."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from sink.lag import LagMeter
from sink.metrics import Metrics

TP = tuple[str, int]


class FakeSource:
    """The two consumer reads the meter makes: cached end offsets, the group's commits."""

    def __init__(self, highs: dict[TP, int], group: dict[TP, int]) -> None:
        self.assignment = set(highs)
        self.highs = highs
        self.group = group
        self.asked: list[list[TP]] = []

    def cached_high_watermark(self, tp: TP) -> int | None:
        return self.highs.get(tp)

    async def committed(self, tps: list[TP]) -> dict[TP, int]:
        self.asked.append(tps)
        return {tp: self.group.get(tp, -1) for tp in tps}


def scrape(m: Metrics) -> dict[str, float]:
    out = {}
    for line in generate_latest(m.registry).decode().splitlines():
        if line.startswith(("clari_sink_consumer_lag{", "clari_sink_committed_offset_age")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_lag_starts_from_the_groups_commit_and_follows_own_commits() -> None:
    now = [100.0]
    src = FakeSource({("crm", 0): 500, ("crm", 1): 40}, {("crm", 0): 200, ("crm", 1): 40})
    m = Metrics()
    meter = LagMeter(src, m, position=lambda tp: None, clock=lambda: now[0])
    asyncio.run(meter.update())
    now[0] = 112.0
    asyncio.run(meter.update())
    got = scrape(m)
    assert got['clari_sink_consumer_lag{partition="0",topic="crm"}'] == 300
    assert got['clari_sink_consumer_lag{partition="1",topic="crm"}'] == 0
    # Partition 0 has waited 12 s behind an unmoved commit; partition 1 is caught up.
    assert got['clari_sink_committed_offset_age_seconds{partition="0",topic="crm"}'] == 12
    assert got['clari_sink_committed_offset_age_seconds{partition="1",topic="crm"}'] == 0
    assert src.asked == [[("crm", 0), ("crm", 1)]]  # the broker is asked once, not per update

    meter.record_commit({("crm", 0): 450})
    now[0] = 115.0
    asyncio.run(meter.update())
    got = scrape(m)
    assert got['clari_sink_consumer_lag{partition="0",topic="crm"}'] == 50
    assert got['clari_sink_committed_offset_age_seconds{partition="0",topic="crm"}'] == 3


def test_revoked_partitions_leave_the_metrics_and_unknown_ends_are_not_guessed() -> None:
    now = [0.0]
    src = FakeSource({("crm", 0): 10, ("crm", 1): 10}, {("crm", 0): 5})
    m = Metrics()
    # Partition 1: no group commit and nothing consumed, so no position: no series.
    meter = LagMeter(src, m, position=lambda tp: None, clock=lambda: now[0])
    asyncio.run(meter.update())
    assert set(scrape(m)) == {
        'clari_sink_consumer_lag{partition="0",topic="crm"}',
        'clari_sink_committed_offset_age_seconds{partition="0",topic="crm"}',
    }
    # Partition 0 is revoked; partition 1 has now been consumed from offset 4 (the group
    # still has no commit for it): that is where its lag counts from.
    src.assignment = {("crm", 1)}
    meter.position = lambda tp: 4
    now[0] = 6.0  # past the pause after an incomplete answer
    asyncio.run(meter.update())
    now[0] = 8.0
    asyncio.run(meter.update())
    assert scrape(m) == {
        'clari_sink_consumer_lag{partition="1",topic="crm"}': 6,
        'clari_sink_committed_offset_age_seconds{partition="1",topic="crm"}': 2,
    }

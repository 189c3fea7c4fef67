"""Keyed, sequenced records and the check of what arrived: lost, duplicated, reordered."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Producer

from devkit.sample_data import crm_record
from tests.support import Emulator


def keyed(i: int, keys: int) -> tuple[bytes, bytes]:
    key = f"key-{i % keys}"
    return key.encode(), orjson.dumps(crm_record("account", i) | {"key": key, "seq": i})


@dataclass
class Feed:
    """Produces records ``start..start+n`` at ``rate``/s in a thread (records keep arriving)."""

    kafka: str
    topic: str
    n: int
    rate: float
    keys: int = 50
    start: int = 0
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        producer = Producer(
            {"bootstrap.servers": self.kafka, "linger.ms": 5, "enable.idempotence": True}
        )
        chunk = max(1, int(self.rate / 20))
        started = time.monotonic()
        for n, i in enumerate(range(self.start, self.start + self.n)):
            key, value = keyed(i, self.keys)
            producer.produce(self.topic, key=key, value=value)
            if n % chunk == chunk - 1:
                producer.poll(0)
                ahead = started + (n + 1) / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        assert producer.flush(60) == 0

    def begin(self) -> Feed:
        self.thread.start()
        return self

    def join(self, timeout: float = 300) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the producer did not finish"


@dataclass
class Outcome:
    sent: int
    lost: int
    duplicated: int
    reordered: int
    invented: int

    def row(self, scenario: str) -> dict[str, Any]:
        return {
            "scenario": scenario,
            "sent": self.sent,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
        }


def check(emulator: Emulator, sent_ids: set[str]) -> Outcome:
    arrived = [r["record"] for r in emulator.records()]
    counts = Counter(r["id"] for r in arrived)
    seen: set[str] = set()
    last: dict[str, int] = defaultdict(lambda: -1)
    reordered = 0
    for rec in arrived:
        if rec["id"] in seen:  # a duplicate replays an old record: not an ordering fault
            continue
        seen.add(rec["id"])
        key = rec.get("key")
        if key is not None:
            if rec["seq"] < last[key]:
                reordered += 1
            last[key] = max(last[key], rec["seq"])
    return Outcome(
        sent=len(sent_ids),
        lost=len(sent_ids - set(counts)),
        duplicated=sum(c - 1 for c in counts.values()),
        reordered=reordered,
        invented=len(set(counts) - sent_ids),
    )


def ids(start: int, n: int) -> set[str]:
    return {f"ACC{i:012d}" for i in range(start, start + n)}  # crm_record("account", i)["id"]

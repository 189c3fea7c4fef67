"""The units that flow through the sink: a consumed record and a batch of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from confluent_kafka import Message

Headers = list[tuple[str, str | bytes | None]]


@dataclass(slots=True)
class SinkRecord:
    """One Kafka message, kept raw for dead letters and decoded for the API."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    timestamp_ms: int
    body: bytes = b""  # the shaped record as JSON, encoded once, for the request body
    group: str = ""  # what the grouping algorithm put it with
    rid: Any = None  # its id (CLARI_ID_FIELD), for duplicate cuts and named rejections

    @classmethod
    def from_message(cls, msg: Message) -> SinkRecord:
        """A record from a consumed message (one without an error)."""
        return cls(
            cast(str, msg.topic()),
            cast(int, msg.partition()),
            cast(int, msg.offset()),
            msg.key(),
            msg.value(),
            cast("Headers | None", msg.headers()),
            msg.timestamp()[1],
        )

    @property
    def data(self) -> dict[str, Any]:
        """The shaped record, decoded again on demand: buffered records keep only bytes,
        a fraction of the memory of the decoded objects."""
        data: dict[str, Any] = orjson.loads(self.body) if self.body else {}
        return data

    @property
    def nbytes(self) -> int:
        return len(self.body)

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(slots=True)
class OffsetRange:
    topic: str
    partition: int
    first: int
    last: int
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "firstOffset": self.first,
            "lastOffset": self.last,
            "count": self.count,
        }


@dataclass(slots=True)
class Batch:
    """Records that travel in one API call."""

    id: str
    group: str
    records: list[SinkRecord] = field(default_factory=list)
    nbytes: int = 0
    opened_at: float = field(default_factory=time.monotonic)
    is_last: bool = True  # isLastBatch, fixed when the batch is dispatched

    @property
    def keys(self) -> set[bytes]:
        return {r.key for r in self.records if r.key is not None}

    def ranges(self) -> list[OffsetRange]:
        """The offsets this batch covers, one range per source partition."""
        out: dict[tuple[str, int], OffsetRange] = {}
        for r in self.records:
            rng = out.get((r.topic, r.partition))
            if rng is None:
                out[(r.topic, r.partition)] = OffsetRange(
                    r.topic, r.partition, r.offset, r.offset, 1
                )
            else:
                rng.first = min(rng.first, r.offset)
                rng.last = max(rng.last, r.offset)
                rng.count += 1
        return list(out.values())

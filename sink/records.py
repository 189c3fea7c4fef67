"""The units that flow through the sink: a consumed record and a batch of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

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
        # No typing.cast here: it is a call, and this runs for every record.
        return cls(
            msg.topic(),  # type: ignore[arg-type]
            msg.partition(),  # type: ignore[arg-type]
            msg.offset(),  # type: ignore[arg-type]
            msg.key(),
            msg.value(),
            msg.headers(),  # type: ignore[arg-type]
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


Offsets = dict[tuple[str, int], list[int]]  # (topic, partition) → offsets, ascending


def offsets_of(records: list[SinkRecord]) -> Offsets:
    """The records' offsets per source partition (one pass, in consumption order)."""
    out: Offsets = {}
    for r in records:
        tp = (r.topic, r.partition)
        offs = out.get(tp)
        if offs is None:
            out[tp] = [r.offset]
        else:
            offs.append(r.offset)
    return out


@dataclass(slots=True)
class Batch:
    """Records that travel in one API call."""

    id: str
    group: str
    records: list[SinkRecord] = field(default_factory=list)
    nbytes: int = 0
    opened_at: float = field(default_factory=time.monotonic)
    is_last: bool = True  # isLastBatch, fixed when the batch is dispatched
    # Set while the records are dropped from memory (a bulk job runs with Clari holding
    # the file): where to read them again from Kafka, and the keys they carry.
    parked: Offsets | None = None
    parked_keys: set[bytes] = field(default_factory=set)
    # Every offset this batch answers for (set at dispatch): what is resolved when it ends.
    covers: Offsets | None = None

    @property
    def keys(self) -> set[bytes]:
        if self.parked is not None:
            return self.parked_keys
        return {r.key for r in self.records if r.key is not None}

    def covered(self) -> Offsets:
        """Every offset this batch answers for: fixed at dispatch, else its records'."""
        return self.covers if self.covers is not None else offsets_of(self.records)

    @property
    def size(self) -> int:
        """Records in the batch, counted even while they are parked."""
        if self.parked is not None:
            return sum(len(o) for o in self.parked.values())
        return len(self.records)

    def park(self) -> None:
        """Drop the records, keeping their offsets to read them back if they are needed."""
        self.parked_keys = self.keys
        covers = self.covers
        if covers is not None and sum(map(len, covers.values())) == len(self.records):
            self.parked = covers  # none was dead-lettered on the way: the same offsets
        else:
            self.parked = offsets_of(self.records)
        self.records = []
        self.nbytes = 0

    def unpark(self, records: list[SinkRecord]) -> None:
        self.records = records
        self.nbytes = sum(r.nbytes for r in records)
        self.parked = None
        self.parked_keys = set()

    def ranges(self) -> list[OffsetRange]:
        """The offsets this batch covers, one range per source partition."""
        offsets = self.parked if self.parked is not None else offsets_of(self.records)
        return [
            OffsetRange(topic, partition, min(offs), max(offs), len(offs))
            for (topic, partition), offs in offsets.items()
        ]

"""The units that flow through the sink: a consumed record and a batch of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
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
        # No typing.cast here: it is a call, and this runs for every record.
        value = msg.value()
        return cls(
            msg.topic(),  # type: ignore[arg-type]
            msg.partition(),  # type: ignore[arg-type]
            msg.offset(),  # type: ignore[arg-type]
            msg.key(),
            value,
            msg.headers(),  # type: ignore[arg-type]
            msg.timestamp()[1],
            value or b"",  # the body as is, until shaping says otherwise
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


KEYS_SHOWN = 100  # a bulk file's thousands of keys would make each response message huge
Offsets = dict[tuple[str, int], list[int]]  # (topic, partition) → offsets, ascending


_TP_OF = attrgetter("topic", "partition")
_OFFSET_OF = attrgetter("offset")
_KEY_OF = attrgetter("key")


def offsets_of(records: list[SinkRecord]) -> Offsets:
    """The records' offsets per source partition, in consumption order. Kafka hands out
    records in runs of one partition: the work is per run, in C, not per record."""
    out: Offsets = {}
    for tp, run in groupby(records, _TP_OF):
        offs = out.get(tp)
        if offs is None:
            out[tp] = list(map(_OFFSET_OF, run))
        else:
            offs.extend(map(_OFFSET_OF, run))
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
    # the file): where to read them again from Kafka.
    parked: Offsets | None = None
    # The distinct message keys, computed once: a bulk batch holds 20,000 of them, and
    # dispatch, parking and every response message need them.
    key_set: set[bytes] | None = None
    shown_keys: list[bytes] | None = None  # the first keys, for response messages
    # Every offset this batch answers for (set at dispatch): what is resolved when it ends.
    covers: Offsets | None = None
    # The records' offsets, kept as runs of records are added (extend): found while the
    # records are fresh in the CPU cache, where a pass over a full batch at dispatch
    # cost 0.2 us a record. None once records were added or removed otherwise.
    offsets: Offsets | None = None

    @property
    def keys(self) -> set[bytes]:
        """The records' keys as first asked for: records dropped later (dead-lettered,
        revoked) leave a superset, which only ever holds a batch back, never lets one by."""
        keys = self.key_set
        if keys is None:
            found: set[bytes | None] = set(map(_KEY_OF, self.records))
            found.discard(None)
            keys = self.key_set = cast(set[bytes], found)
        return keys

    def extend(self, records: list[SinkRecord], nbytes: int) -> None:
        """Add a run of records (``nbytes`` their bodies' size), keeping the distinct keys
        and the offsets current if the batch started empty."""
        if not self.records:
            self.key_set, self.offsets = set(), {}
        self.records.extend(records)
        self.nbytes += nbytes
        keys, offsets = self.key_set, self.offsets
        if keys is None or offsets is None:
            self.key_set = self.offsets = None  # found later, from all the records
            return
        keys.update(map(_KEY_OF, records))
        keys.discard(None)
        for tp, offs in offsets_of(records).items():
            if tp in offsets:
                offsets[tp].extend(offs)
            else:
                offsets[tp] = offs

    def append(self, record: SinkRecord, nbytes: int) -> None:
        """Add one record (``nbytes`` its body's size); keys and offsets are found later."""
        self.records.append(record)
        self.nbytes += nbytes
        self.key_set = self.offsets = None

    def first_keys(self, limit: int = KEYS_SHOWN) -> list[bytes]:
        """The first ``limit`` distinct keys in record order, found once (while the
        records are here): every response message of the batch names them."""
        if self.shown_keys is None:
            shown: dict[bytes, None] = {}
            for record in self.records:  # a bulk batch stops after some 100 of 20,000
                if record.key is not None:
                    shown[record.key] = None
                    if len(shown) == limit:
                        break
            self.shown_keys = list(shown)
        return self.shown_keys[:limit]

    def covered(self) -> Offsets:
        """Every offset this batch answers for: fixed at dispatch, else its records'."""
        if self.covers is not None:
            return self.covers
        return self.offsets if self.offsets is not None else offsets_of(self.records)

    @property
    def size(self) -> int:
        """Records in the batch, counted even while they are parked."""
        if self.parked is not None:
            return sum(len(o) for o in self.parked.values())
        return len(self.records)

    def park(self) -> None:
        """Drop the records, keeping their offsets (and keys) to read them back if they
        are needed."""
        _ = self.keys, self.first_keys()  # found now, while the records are here
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

    def ranges(self) -> list[OffsetRange]:
        """The offsets this batch covers, one range per source partition."""
        offsets = self.parked if self.parked is not None else offsets_of(self.records)
        # Each partition's offsets are in consumption order, ascending.
        return [
            OffsetRange(topic, partition, offs[0], offs[-1], len(offs))
            for (topic, partition), offs in offsets.items()
        ]

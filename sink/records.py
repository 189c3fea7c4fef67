"""The units that flow through the sink: a consumed record and a batch of them."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter, itemgetter
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
Lane = tuple[str, int, int]  # (topic, partition, slot): see sink/batching.py


_TP_OF = attrgetter("topic", "partition")
_OFFSET_OF = attrgetter("offset")
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_KEY_OF = attrgetter("key")
BODY_OF = attrgetter("body")  # a record's body, for map() over many


_MSG_TOPIC, _MSG_PARTITION = Message.topic, Message.partition
_MSG_OFFSET, _MSG_KEY, _MSG_VALUE = Message.offset, Message.key, Message.value


def offsets_of(records: list[SinkRecord]) -> Offsets:
    """The records' offsets per source partition, in consumption order."""
    return _by_partition(map(_TP_OF, records), list(map(_OFFSET_OF, records)))


def message_offsets(msgs: list[Message]) -> Offsets:
    """offsets_of() for consumed messages, read through their C methods."""
    tps = zip(map(_MSG_TOPIC, msgs), map(_MSG_PARTITION, msgs), strict=True)
    return _by_partition(tps, list(map(_MSG_OFFSET, msgs)))  # type: ignore[arg-type]


def _by_partition(tps: Iterable[tuple[str, int]], offsets: list[int]) -> Offsets:
    """``offsets`` grouped by their partitions ``tps``. Kafka hands out records in runs of
    one partition: the work is per run, in C, not per record."""
    out: Offsets = {}
    start = 0
    for tp, run in groupby(tps):
        end = start + len(list(run))
        offs = out.get(tp)
        if offs is None:
            out[tp] = offsets[start:end]
        else:
            offs.extend(offsets[start:end])
        start = end
    return out


def _pair_offset(pair: tuple[Message, Any]) -> int:
    return cast(int, pair[0].offset())


def message_record(msg: Message, rid: Any) -> SinkRecord:
    """The record of a message the hot path carried, sent as its value, with its id."""
    record = SinkRecord.from_message(msg)
    record.rid = rid
    return record


class Batch:
    """Records that travel in one API call.

    The hot path (JSON values sent as they are, batched in arrival order) fills a batch
    with the consumed messages themselves and their ids (``add_messages``): creating a
    SinkRecord for each and freeing it later was a tenth of the event loop's work in a
    bulk backfill. ``records`` makes the SinkRecords on first use, for what needs them
    (dead letters, records the API rejects, revocations); the per-batch steps of the hot
    path (keys, offsets, body, parking) read the messages.
    """

    __slots__ = (
        "_messages",
        "_records",
        "_rids",
        "covers",
        "group",
        "id",
        "is_last",
        "key_set",
        "lanes",
        "nbytes",
        "offsets",
        "opened_at",
        "parked",
        "shown_keys",
    )

    def __init__(
        self,
        id: str,
        group: str,
        records: list[SinkRecord] | None = None,
        nbytes: int = 0,
        opened_at: float | None = None,
        covers: Offsets | None = None,
    ) -> None:
        self.id = id
        self.group = group
        self.nbytes = nbytes
        self.opened_at = time.monotonic() if opened_at is None else opened_at
        self.is_last = True  # isLastBatch, fixed when the batch is dispatched
        # Where it waits its turn (sink/flow.py): its lane, or the lanes of the lingered
        # batches it was merged from, all held while it is sent.
        self.lanes: tuple[Lane, ...] = ()
        # Set while the records are dropped from memory (a bulk job runs with Clari
        # holding the file): where to read them again from Kafka.
        self.parked: Offsets | None = None
        # The distinct message keys, computed once: a bulk batch holds 20,000 of them,
        # and dispatch, parking and every response message need them.
        self.key_set: set[bytes] | None = None
        self.shown_keys: list[bytes] | None = None  # the first keys, for response messages
        # Every offset this batch answers for (set at dispatch): what is resolved when
        # it ends.
        self.covers = covers
        # The offsets of the records held now, kept as runs are added; None when they
        # are to be found from the records.
        self.offsets: Offsets | None = None
        self._records: list[SinkRecord] = [] if records is None else records
        # The hot path's form of the records: messages and their ids (never both forms).
        self._messages: list[Message] | None = None
        self._rids: list[Any] | None = None

    def __repr__(self) -> str:
        held = "parked" if self.parked is not None else "held"
        return (
            f"Batch(id={self.id!r}, group={self.group!r}, records={self.size} {held}, "
            f"nbytes={self.nbytes})"
        )

    # -- the records ----------------------------------------------------------------
    @property
    def records(self) -> list[SinkRecord]:
        """The records held now (none while parked), made from the messages on first use."""
        msgs, rids = self._messages, self._rids
        if msgs is not None and rids is not None:
            self._records = list(map(message_record, msgs, rids))
            self._messages = self._rids = None
        return self._records

    @records.setter
    def records(self, records: list[SinkRecord]) -> None:
        self._records = records
        self._messages = self._rids = None
        self.offsets = None  # found again from these records when asked for

    @property
    def count(self) -> int:
        """Records held now (none while parked)."""
        msgs = self._messages
        return len(msgs) if msgs is not None else len(self._records)

    @property
    def size(self) -> int:
        """Records in the batch, counted even while they are parked."""
        if self.parked is not None:
            return sum(len(o) for o in self.parked.values())
        return self.count

    def bodies(self, count: int | None = None) -> list[bytes]:
        """Each record's body (of the first ``count``), in order: what the request sends."""
        msgs = self._messages
        if msgs is not None:
            return list(map(_MSG_VALUE, msgs[:count]))  # type: ignore[arg-type]
        return list(map(BODY_OF, self._records[:count]))

    def first_record(self) -> SinkRecord | None:
        """The first record, without making the others."""
        msgs, rids = self._messages, self._rids
        if msgs and rids:
            return message_record(msgs[0], rids[0])
        return self._records[0] if self._records else None

    def add_messages(
        self, msgs: list[Message], rids: list[Any], nbytes: int, offsets: Offsets | None = None
    ) -> None:
        """Add a run of consumed messages, each sent as its value, with their ids
        (``nbytes`` the values' size, ``offsets`` their offsets if known, handed over),
        keeping the offsets current."""
        if self._records:  # already holds SinkRecords: add these as records too
            self.extend(list(map(message_record, msgs, rids)), nbytes)
            return
        if self._messages is None or self._rids is None:
            self._messages, self._rids = [], []
            self.offsets = {}
        held = self.held_offsets()  # found again if a split dropped them
        self._messages.extend(msgs)
        self._rids.extend(rids)
        self.nbytes += nbytes
        self.key_set = None  # found when asked for: dispatch no longer needs the keys
        for tp, offs in (message_offsets(msgs) if offsets is None else offsets).items():
            if tp in held:
                held[tp].extend(offs)
            else:
                held[tp] = offs

    @property
    def lane(self) -> Lane | None:
        return self.lanes[0] if self.lanes else None

    def absorb(self, others: list[Batch]) -> None:
        """Take ``others``' records: lingered batches of other lanes of the same
        partition, merged so that thin traffic makes full calls. The records stay in
        offset order (as a reader of the request expects, and each key's order with it),
        and so do the offsets, as the offset tracker needs. One sort for all of them:
        Timsort merges the sorted runs in C (merging them one by one took a tenth of the
        sink's CPU with 768 lanes at Clari's rate, bench/README.md)."""
        msgs, rids = self._messages, self._rids
        if msgs is not None and rids is not None and all(o._messages for o in others):
            pairs = list(zip(msgs, rids, strict=True))
            for other in others:
                pairs += zip(other._messages or (), other._rids or (), strict=True)
            pairs.sort(key=_pair_offset)
            self._messages = list(map(_FIRST, pairs))
            self._rids = list(map(_SECOND, pairs))
        else:
            records = list(self.records)
            for other in others:
                records += other.records
            records.sort(key=_OFFSET_OF)
            self._records = records
            self._messages = self._rids = None
        self.offsets = None  # found again, in order
        self.nbytes += sum(other.nbytes for other in others)
        self.lanes = (*self.lanes, *(lane for other in others for lane in other.lanes))
        self.key_set = self.shown_keys = None

    def head_ids(self, count: int) -> list[Any]:
        """The ids of the first ``count`` records, without making records."""
        if self._rids is not None:
            return self._rids[:count]
        return [r.rid for r in self._records[:count]]

    def split(self, count: int) -> Batch:
        """Take this batch's first ``count`` records away, as a new batch of the same
        lane and group (a lingered lane's head, to fill a merged call)."""
        head = Batch(id="", group=self.group, opened_at=self.opened_at)
        head.lanes = self.lanes
        msgs, rids = self._messages, self._rids
        if msgs is not None and rids is not None:
            head._messages, head._rids = msgs[:count], rids[:count]
            self._messages, self._rids = msgs[count:], rids[count:]
        else:
            head._records, self._records = self._records[:count], self._records[count:]
        head.nbytes = sum(map(len, head.bodies()))
        self.nbytes -= head.nbytes
        self.offsets = self.key_set = self.shown_keys = None
        return head

    def extend(self, records: list[SinkRecord], nbytes: int) -> None:
        """Add records (``nbytes`` their bodies' size); their keys and offsets are found
        when asked for, from all the records."""
        self.records.extend(records)
        self.nbytes += nbytes
        self.key_set = self.offsets = None

    # -- what is known of them ----------------------------------------------------------
    @property
    def keys(self) -> set[bytes]:
        """The records' distinct keys, as first asked for (response messages count them)."""
        keys = self.key_set
        if keys is None:
            found: set[bytes | None] = set(self._keys_in_order())
            found.discard(None)
            keys = self.key_set = cast(set[bytes], found)
        return keys

    def _keys_in_order(self) -> Iterator[bytes | None]:
        msgs = self._messages
        if msgs is not None:
            return map(_MSG_KEY, msgs)
        return map(_KEY_OF, self._records)

    def first_keys(self, limit: int = KEYS_SHOWN) -> list[bytes]:
        """The first ``limit`` distinct keys in record order, found once (while the
        records are here): every response message of the batch names them."""
        if self.shown_keys is None:
            shown: dict[bytes, None] = {}
            for key in self._keys_in_order():  # a bulk batch stops after some 100 of 20,000
                if key is not None:
                    shown[key] = None
                    if len(shown) == limit:
                        break
            self.shown_keys = list(shown)
        return self.shown_keys[:limit]

    def held_offsets(self) -> Offsets:
        """The offsets of the records held now."""
        if self.offsets is None:
            msgs = self._messages
            self.offsets = message_offsets(msgs) if msgs is not None else offsets_of(self._records)
        return self.offsets

    def covered(self) -> Offsets:
        """Every offset this batch answers for: fixed at dispatch, else its records'."""
        return self.covers if self.covers is not None else self.held_offsets()

    def park(self) -> None:
        """Drop the records, keeping their offsets (and keys) to read them back if they
        are needed."""
        _ = self.keys, self.first_keys()  # found now, while the records are here
        covers = self.covers
        if covers is not None and sum(map(len, covers.values())) == self.count:
            self.parked = covers  # none was dead-lettered on the way: the same offsets
        else:
            self.parked = self.held_offsets()
        self.records = []
        self.nbytes = 0

    def unpark(self, records: list[SinkRecord]) -> None:
        self.records = records
        self.nbytes = sum(r.nbytes for r in records)
        self.parked = None

    def ranges(self) -> list[OffsetRange]:
        """The offsets this batch covers, one range per source partition."""
        offsets = self.parked if self.parked is not None else self.held_offsets()
        # Each partition's offsets are in consumption order, ascending.
        return [
            OffsetRange(topic, partition, offs[0], offs[-1], len(offs))
            for (topic, partition), offs in offsets.items()
        ]

"""Group records into batches: by arrival order, by message key, or by a record attribute.

Every batch belongs to one *lane*: a partition and a slot that the record's message key
hashes to (``lanes`` slots per partition). A key always lands in the same lane, so the
batches of one lane, sent one after the other (sink/flow.py), keep every key in offset
order, while other lanes go on in parallel. A batch never spans partitions or lanes:
that would tie their keys together.

A batch closes when it holds ``max_records``, when one more record would pass
``max_bytes``, when a record repeats an id already in it (Clari rejects a request that
holds the same id twice, and the later record must follow the earlier one), or, once it
has lingered ``linger_s`` since its first record, when its lane may send it (``due``):
a batch whose lane is busy keeps filling, so calls stay full under load.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, groupby, repeat
from operator import attrgetter
from typing import Any
from zlib import crc32

from confluent_kafka import Message

from sink.config import Settings
from sink.decoding import RecordError, lookup, record_id
from sink.records import BODY_OF, Batch, Lane, Offsets, SinkRecord, message_record

GroupOf = Callable[[SinkRecord, dict[str, Any]], str]
_Slot = tuple[Lane, str]  # an open batch: its lane and its group
_MSG_KEY, _MSG_TOPIC, _MSG_PARTITION = Message.key, Message.topic, Message.partition
_MSG_OFFSET = Message.offset
log = logging.getLogger(__name__)

# A partition whose first UNIQUE_SAMPLE records or more have UNIQUE_SHARE distinct keys
# gets UNIQUE_KEY_LANES lanes, or HTTP_MAX_IN_FLIGHT if more (Batcher._learn_lanes).
UNIQUE_KEY_LANES = 16
UNIQUE_SAMPLE = 50
UNIQUE_SHARE = 0.95


def grouping_function(grouping: str, attribute: str | None) -> GroupOf | None:
    """How records are grouped; None for arrival order (one group)."""
    if grouping == "size":
        return None
    if grouping == "key":
        return lambda record, data: (
            "" if record.key is None else record.key.decode("utf-8", "replace")
        )
    if grouping == "attribute" and attribute:

        def by_attribute(record: SinkRecord, data: dict[str, Any]) -> str:
            value = lookup(data, attribute)
            if value is None or isinstance(value, dict | list):
                raise RecordError(
                    "missing-group-attribute",
                    f"the record has no scalar value at '{attribute}' (BATCH_GROUP_ATTRIBUTE)",
                )
            return str(value)

        return by_attribute
    raise ValueError(f"unknown grouping {grouping!r}")


_PLAIN_IDS = {str, type(None)}  # ids as record_id() gives them (an int becomes text)


def _first_repeat(ids: list[Any], held: set[Any]) -> int:
    """The index of the first id in ``ids`` already in ``held`` or earlier in ``ids``."""
    seen = set(held)
    for i, rid in enumerate(ids):
        if rid is not None:
            if rid in seen:
                return i
            seen.add(rid)
    return len(ids)


def _add_ids(held: set[Any], ids: list[Any]) -> bool:
    """Add ``ids`` (None aside) to ``held`` unless one is in it already or repeats among
    them; then leave ``held`` as it was and return False. One set operation per id when
    none repeats, the common case (a set of ``ids`` then two set operations cost twice
    that for every record of a backfill)."""
    if not held.isdisjoint(ids):
        return False
    before = len(held)
    held.update(ids)
    nones = 0
    if None in held:
        held.discard(None)
        nones = ids.count(None)
    if len(held) - before == len(ids) - nones:
        return True
    held.difference_update(ids)  # none of them was in it before
    return False


class _Open:
    __slots__ = ("batch", "ids")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.ids: set[Any] = set()


class _Call:
    """A call being made of one partition's batches: the first, and those it takes."""

    __slots__ = ("batch", "count", "ids", "nbytes", "parts")

    def __init__(self, batch: Batch, ids: set[Any]) -> None:
        self.batch = batch
        self.ids = set(ids)
        self.count = batch.count
        self.nbytes = batch.nbytes
        self.parts: list[Batch] = []

    def fits(self, opened: _Open, max_records: int, max_bytes: int) -> bool:
        more = opened.batch
        return (
            self.count + more.count <= max_records
            and self.nbytes + more.nbytes <= max_bytes
            and self.ids.isdisjoint(opened.ids)
        )

    def take(self, part: Batch, ids: Iterable[Any]) -> None:
        self.parts.append(part)
        self.ids.update(ids)
        self.count += part.count
        self.nbytes += part.nbytes

    def finish(self) -> None:
        if self.parts:
            self.batch.absorb(self.parts)
            self.batch.id = _name(self.batch)


class Batcher:
    def __init__(
        self,
        *,
        max_records: int,
        max_bytes: int,
        linger_s: float,
        group_of: GroupOf | None,
        id_field: str | None = "id",
        lanes: int = 1,
        order_by: str = "key",
        keys_span_groups: bool = False,
        adaptive_lanes: bool = False,
        unique_key_lanes: int = UNIQUE_KEY_LANES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self.group_of = group_of
        self.id_field = id_field
        self.clock = clock
        self.lanes = lanes
        # "id": a record's lane follows its id, not its message key (SINK_ORDER_BY).
        self.by_id = order_by == "id" and lanes > 1
        # Each partition's lane count, chosen from its first records when the user set
        # none (SINK_KEY_LANES): see _learn_lanes.
        self.unique_key_lanes = unique_key_lanes
        self.adaptive = adaptive_lanes and lanes > unique_key_lanes and not self.by_id
        self._lane_count: dict[tuple[str, int], int] = {}
        # Attribute grouping puts one key's records in several groups of a lane: a batch
        # closing there closes the lane's older batches first, which hold earlier records.
        self.keys_span_groups = keys_span_groups
        self._open: dict[_Slot, _Open] = {}  # insertion order = age order
        self.buffered_records = 0
        self.buffered_bytes = 0
        # Records in open batches per partition: a partition holding a full call's worth
        # over its lanes is cut without waiting for the linger (see due()).
        self._tp_records: dict[tuple[str, int], int] = {}
        # The open batches again, per partition (age order): due() fills a partition's
        # call from its own batches without walking every lane of every partition.
        self._by_tp: dict[tuple[str, int], dict[_Slot, _Open]] = {}

    @classmethod
    def for_settings(cls, s: Settings) -> Batcher:
        return cls(
            max_records=s.effective_batch_size,
            max_bytes=s.batch_max_bytes,
            linger_s=s.batch_linger_ms / 1000,
            group_of=grouping_function(s.batch_grouping, s.batch_group_attribute),
            id_field=s.clari_id_field,
            lanes=s.lanes_per_partition,
            order_by=s.order_by,
            keys_span_groups=s.batch_grouping == "attribute",
            adaptive_lanes=s.key_lanes is None,
            # A lane has one call in flight: fewer lanes than calls allowed in flight
            # would cap a topic of one partition below HTTP_MAX_IN_FLIGHT.
            unique_key_lanes=max(UNIQUE_KEY_LANES, s.http_max_in_flight),
        )

    @property
    def needs_data(self) -> bool:
        """Whether placing a record needs its decoded form (attribute or key grouping),
        or only its id (arrival order)."""
        return self.group_of is not None

    def lane_of(self, topic: str, partition: int, key: bytes | None, offset: int) -> Lane:
        """The lane of a record. A key hashes to a fixed slot (CRC-32, the same in every
        process: a key's lane can be found again when reading logs); records without a
        key need no order among them and are spread by runs of ``max_records`` offsets,
        so an unkeyed topic fills its lanes with full batches rather than trickling into
        all of them."""
        lanes = self.lanes
        if self.adaptive:  # a partition not chosen for by _learn_lanes keeps the default
            lanes = self._lane_count.setdefault((topic, partition), lanes)
        return self._lane(topic, partition, key, offset, lanes)

    def _lane(self, topic: str, partition: int, key: bytes | None, offset: int, lanes: int) -> Lane:
        if lanes == 1:
            return (topic, partition, 0)
        if key is None:
            return (topic, partition, (offset // self.max_records) % lanes)
        return (topic, partition, crc32(key) % lanes)

    def _lanes_of(
        self, topics: Iterable[str], partitions: Iterable[int], keys: Iterable[Any],
        offs: Iterable[int],
    ) -> list[Lane]:  # fmt: skip
        """lane_of() for a poll's records. The lane count is looked up once per poll when
        its partitions share one (the usual case): per record, it doubled the cost of
        placing one (0.77 against 0.37 us, 1,000 records over 6 partitions)."""
        if not self.adaptive:
            return list(map(self._lane, topics, partitions, keys, offs, repeat(self.lanes)))
        topics, partitions, keys = list(topics), list(partitions), list(keys)
        tps = set(zip(topics, partitions, strict=True))
        if not tps <= self._lane_count.keys():
            self._learn_lanes(tps, topics, partitions, keys)
        counts = {self._lane_count[tp] for tp in tps}
        each: Iterable[int] = (
            repeat(counts.pop())
            if len(counts) == 1
            else map(self._lane_count.__getitem__, zip(topics, partitions, strict=True))
        )
        return list(map(self._lane, topics, partitions, keys, offs, each))

    def _learn_lanes(
        self, tps: set[tuple[str, int]], topics: list[str], partitions: list[int], keys: list[Any]
    ) -> None:
        """Choose the lane count of partitions seen for the first time (since assigned),
        from the keys of their first records, once: a key must keep its lane.

        Keys that do not repeat (a topic keyed by record, or by far more accounts than a
        poll holds) need no lanes to keep their order, and many lanes make calls smaller:
        a call merges idle lanes, 100 unique keys touch about 70 of 128 lanes, those stay
        busy while it is sent, and with three calls in flight per partition no lane is
        left idle, so calls wait for the linger part full. bench, distinct keys, 200 ms,
        100 calls/s: 128 lanes 7,582-7,823 records/s (87.5 a call), 16 lanes 9,016-9,100
        (98.9 a call), 32 (the default HTTP_MAX_IN_FLIGHT, which a lane count may not go
        under: a lane has one call in flight) 8,784-8,894. Keys that repeat keep the
        lanes that let them pass each other: 200 keys with 16 lanes 7,304, with 128
        8,598-8,786."""
        new = tps.difference(self._lane_count)
        sample: dict[tuple[str, int], list[Any]] = {tp: [] for tp in new}
        for tp, key in zip(zip(topics, partitions, strict=True), keys, strict=True):
            if tp in sample:
                sample[tp].append(key)
        fewer: list[str] = []
        for (topic, partition), seen in sample.items():
            unique = len(seen) >= UNIQUE_SAMPLE and len(set(seen)) >= UNIQUE_SHARE * len(seen)
            self._lane_count[(topic, partition)] = self.unique_key_lanes if unique else self.lanes
            if unique:
                fewer.append(f"{topic}[{partition}]")
        if fewer:  # (the default needs no line: one per partition at every rebalance)
            log.info(
                "keys do not repeat in the first records of %s: %d lanes each, not %d",
                ", ".join(sorted(fewer)), self.unique_key_lanes, self.lanes,
            )  # fmt: skip

    def _order_keys(self, rids: Iterable[Any]) -> list[bytes | None]:
        """What a lane is chosen by under SINK_ORDER_BY=id: the id as text, so that 7 and
        "7" (one record to Clari) share a lane."""
        return [None if rid is None else str(rid).encode() for rid in rids]

    def add(self, record: SinkRecord, data: dict[str, Any]) -> Sequence[Batch]:
        """Add a shaped record (``data`` is its decoded form); return the batches this
        closed (usually none)."""
        group = "" if self.group_of is None else self.group_of(record, data)
        return self._place(record, group, record_id(data, self.id_field))

    def _place(self, record: SinkRecord, group: str, rid: Any) -> Sequence[Batch]:
        """Put ``record`` in its lane's batch for its group."""
        record.group = group
        size = len(record.body)
        if size > self.max_bytes:
            raise RecordError(
                "record-too-large", f"{size} bytes encoded, over BATCH_MAX_BYTES={self.max_bytes}"
            )
        key = self._order_keys([rid])[0] if self.by_id else record.key
        lane = self.lane_of(record.topic, record.partition, key, record.offset)
        slot = (lane, group)
        closed: list[Batch] = []
        current = self._open.get(slot)
        record.rid = rid
        if current is not None and (
            current.batch.nbytes + size > self.max_bytes or (rid is not None and rid in current.ids)
        ):
            closed += self._close_in_order(slot)
            current = None
        if current is None:
            current = self._new(slot)
        batch = current.batch
        batch.extend([record], size)
        if rid is not None:
            current.ids.add(rid)
        self.buffered_records += 1
        self.buffered_bytes += size
        tp = lane[:2]
        self._tp_records[tp] = self._tp_records.get(tp, 0) + 1
        if batch.count >= self.max_records:
            closed += self._close_in_order(slot)
        return closed

    def add_many(
        self,
        records: list[SinkRecord],
        datas: list[dict[str, Any]] | None,
        rids: list[Any] | None = None,
    ) -> tuple[list[Batch], list[tuple[SinkRecord, RecordError]]]:
        """add() for a poll's shaped records, in order: (closed batches, records refused).
        ``datas`` are their decoded forms, needed only when ``needs_data``; ``rids`` their
        ids when already read and set on them, else read here."""
        closed: list[Batch] = []
        refused: list[tuple[SinkRecord, RecordError]] = []
        if rids is None:
            assert datas is not None, "add_many needs the records' data or their ids"
            rids = self._ids(datas)
            for record, rid in zip(records, rids, strict=True):
                record.rid = rid
        sizes = list(map(len, map(BODY_OF, records)))
        if self.group_of is not None:
            assert datas is not None, "grouping by key or attribute needs the records' data"
            for record, data in zip(records, datas, strict=True):
                try:
                    closed.extend(self.add(record, data))
                except RecordError as exc:
                    refused.append((record, exc))
            return closed, refused
        if sizes and max(sizes) > self.max_bytes:
            for record, rid in zip(records, rids, strict=True):
                try:
                    closed.extend(self._place(record, "", rid))
                except RecordError as exc:
                    refused.append((record, exc))
            return closed, refused
        topics, partitions, keys, offs = _record_fields(records)
        if self.by_id:
            keys = iter(self._order_keys(rids))
        lanes = self._lanes_of(topics, partitions, keys, offs)
        for lane, picked in _split(lanes):
            part = [records[i] for i in picked] if isinstance(picked, list) else records[picked]

            def add(batch: Batch, start: int, end: int, added: int, part: Any = part) -> None:
                batch.extend(part[start:end], added)

            closed += self._fill(lane, _pick(sizes, picked), _pick(rids, picked), add)
        return closed, refused

    def add_messages(
        self, msgs: list[Message], rids: list[Any], offsets: Offsets | None = None
    ) -> tuple[list[Batch], list[tuple[SinkRecord, RecordError]]]:
        """add_many() for the hot path: consumed messages sent as their values, with their
        ids (Shaper.probe_messages), in arrival order; no SinkRecord is made for them.
        ``offsets``, if given, are the messages' offsets per partition (message_offsets):
        with one lane per partition, a partition's run of messages is handed over whole."""
        assert self.group_of is None, "grouping by key or attribute needs shaped records"
        sizes: list[int] = list(map(len, map(Message.value, msgs)))  # type: ignore[arg-type]
        if sizes and max(sizes) > self.max_bytes:
            return self.add_many(list(map(message_record, msgs, rids)), None, rids)
        closed: list[Batch] = []
        if self.lanes == 1 and offsets is not None and _one_run_each(msgs, offsets):
            # Kafka hands out records in runs of one partition: a slice per run.
            start = 0
            for (topic, partition), offs in offsets.items():
                run = slice(start, start + len(offs))
                closed += self._fill_messages(
                    (topic, partition, 0), msgs[run], rids[run], sizes[run], offs
                )
                start = run.stop
            return closed, []
        keys = self._order_keys(rids) if self.by_id else map(_MSG_KEY, msgs)
        lanes = self._lanes_of(
            map(_MSG_TOPIC, msgs),  # type: ignore[arg-type]  # consumed messages have all four
            map(_MSG_PARTITION, msgs),  # type: ignore[arg-type]
            keys,
            map(_MSG_OFFSET, msgs),  # type: ignore[arg-type]
        )
        for lane, picked in _split(lanes):
            part = _pick(msgs, picked)
            closed += self._fill_messages(
                lane, part, _pick(rids, picked), _pick(sizes, picked), None
            )
        return closed, []

    def _fill_messages(
        self,
        lane: Lane,
        msgs: list[Message],
        rids: list[Any],
        sizes: list[int],
        offsets: list[int] | None,
    ) -> list[Batch]:
        n = len(msgs)

        def add(batch: Batch, start: int, end: int, added: int) -> None:
            whole = start == 0 and end == n and offsets is not None
            batch.add_messages(
                msgs if whole else msgs[start:end],
                rids if whole else rids[start:end],
                added,
                {lane[:2]: offsets} if whole and offsets is not None else None,
            )

        return self._fill(lane, sizes, rids, add)

    def _fill(
        self,
        lane: Lane,
        sizes: list[int],
        rids: list[Any],
        add: Callable[[Batch, int, int, int], None],
    ) -> list[Batch]:
        """Place one lane's records of a poll, in order, into its batch: whole runs at
        once, their sizes summed and ids compared in C (this runs for every record of a
        backfill). ``add(batch, start, end, nbytes)`` adds records start..end."""
        closed: list[Batch] = []
        start, n = 0, len(sizes)
        slot = (lane, "")
        while start < n:
            opened = self._open.get(slot) or self._new(slot)
            batch = opened.batch
            # As many as the count allows, then as many as the byte cap allows...
            end = min(n, start + self.max_records - batch.count)
            total = list(accumulate(sizes[start:end], initial=batch.nbytes))
            end = start + bisect_right(total, self.max_bytes) - 1
            # ...then up to the first id the batch already holds.
            ids = rids[start:end]
            if not _add_ids(opened.ids, ids):
                end = start + _first_repeat(ids, opened.ids)
                kept = _add_ids(opened.ids, ids[: end - start])
                assert kept, "no id repeats before the first repeat"
            added = total[end - start] - batch.nbytes
            add(batch, start, end, added)
            self.buffered_records += end - start
            self.buffered_bytes += added
            tp = lane[:2]
            self._tp_records[tp] = self._tp_records.get(tp, 0) + end - start
            start = end
            # Full, or the next record does not fit (bytes or a repeated id).
            if batch.count >= self.max_records or start < n:
                closed.append(self._close(slot))
        return closed

    def _ids(self, datas: list[dict[str, Any]]) -> list[Any]:
        """record_id() of each, with the per-record call only where an id is unusual."""
        if not self.id_field:
            return [None] * len(datas)
        rids = list(map(dict.get, datas, repeat(self.id_field)))
        if set(map(type, rids)) <= _PLAIN_IDS:
            return rids
        return [record_id(d, self.id_field) for d in datas]

    def due(
        self,
        may_send: Callable[[Lane], bool] | None = None,
        limit: int | None = None,
        flushing: bool = False,
    ) -> list[Batch]:
        """Batches that have lingered ``linger_s`` (all of them when ``flushing``), oldest
        first, of lanes that ``may_send`` now (every lane if None); at most ``limit``
        calls. A partition whose open batches together fill a call is cut at once.

        With arrival-order batching, the batches of one partition are merged while they
        fit: thin traffic, or keys spread over many lanes, still make full calls (the
        merged call holds all its lanes while it is sent)."""
        now, linger = self.clock(), self.linger_s
        full = set() if flushing else self._full_tps()
        merging = self.group_of is None
        calls: list[_Call] = []
        into: dict[tuple[str, int], _Call] = {}  # per partition, the call still filling
        for slot, opened in list(self._open.items()):  # oldest first
            young = not flushing and now - opened.batch.opened_at < linger
            if young and not full:
                break
            tp = slot[0][:2]
            if (young and tp not in full) or not (may_send is None or may_send(slot[0])):
                continue
            call = into.get(tp) if merging else None
            if call is not None and call.fits(opened, self.max_records, self.max_bytes):
                call.take(self._close(slot), opened.ids)
            elif limit is not None and len(calls) >= limit:
                break  # the calls are made: only their partitions may still fill them
            elif not young or self._idle_records(tp, may_send) >= self.max_records:
                call = _Call(self._close(slot), opened.ids)
                calls.append(call)
                into[tp] = call
        if merging:
            for tp, call in into.items():
                self._fill_call(tp, call, may_send)
        for call in calls:
            call.finish()
        return [call.batch for call in calls]

    def _idle_records(self, tp: tuple[str, int], may_send: Callable[[Lane], bool] | None) -> int:
        """Records in ``tp``'s open batches of lanes that may send: a young call starts
        only if they fill it (a hot key's busy lane holding most of the partition's
        records must not make a stream of small calls from the rest)."""
        opened = self._by_tp.get(tp, {})
        if may_send is None:
            return sum(o.batch.count for o in opened.values())
        return sum(o.batch.count for slot, o in opened.items() if may_send(slot[0]))

    def _fill_call(
        self, tp: tuple[str, int], call: _Call, may_send: Callable[[Lane], bool] | None
    ) -> None:
        """Fill ``call`` up with its partition's younger batches of idle lanes (their
        linger would end a few milliseconds later each, one small call apiece), and with
        the head of the first one that does not fit whole: the merged call holds its
        lane, so the rest of it follows in order."""
        for slot, opened in list(self._by_tp.get(tp, {}).items()):
            if not (may_send is None or may_send(slot[0])):
                continue
            if call.fits(opened, self.max_records, self.max_bytes):
                call.take(self._close(slot), opened.ids)
                continue
            if (head := self._head(slot, call)) is not None:
                call.take(head, ())
            return  # full, or nothing more fits

    def _head(self, slot: _Slot, call: _Call) -> Batch | None:
        """The first records of ``slot``'s batch that fit in ``call`` (count, bytes, and
        no id ``call`` holds), taken from it; None if not even one fits."""
        opened = self._open[slot]
        batch = opened.batch
        room = self.max_records - call.count
        sizes = list(map(len, batch.bodies(room)))
        total = list(accumulate(sizes, initial=call.nbytes))
        count = bisect_right(total, self.max_bytes) - 1
        rids = batch.head_ids(count)
        count = _first_repeat(rids, call.ids)
        if count == 0:
            return None
        head = batch.split(count)
        taken = {r for r in rids[:count] if r is not None}
        call.ids.update(taken)
        opened.ids.difference_update(taken)
        self.buffered_records -= count
        self.buffered_bytes -= head.nbytes
        self._tp_records[slot[0][:2]] -= count
        return head

    def flush(self, keep: Callable[[Batch], bool] | None = None) -> list[Batch]:
        """Close every open batch (or those ``keep`` selects) regardless of linger."""
        slots = [s for s, o in self._open.items() if keep is None or keep(o.batch)]
        return [self._close(s) for s in slots]

    def drop(self, partitions: set[tuple[str, int]]) -> int:
        """Forget buffered records of revoked partitions: their new owner consumes them again."""
        dropped = 0
        for slot in [s for s in self._open if s[0][:2] in partitions]:
            del self._by_tp[slot[0][:2]][slot]
            batch = self._open.pop(slot).batch
            dropped += batch.count
            self.buffered_records -= batch.count
            self.buffered_bytes -= batch.nbytes
        for tp in partitions:
            self._tp_records.pop(tp, None)
            self._by_tp.pop(tp, None)
            self._lane_count.pop(tp, None)  # chosen again from the next owner's records
        return dropped

    def next_deadline(self) -> float | None:
        """When the next open batch that has not lingered yet is due (monotonic seconds),
        or None. Lingered batches whose lanes are busy are not counted: their lane's
        answer, not a timer, lets them go."""
        now = self.clock()
        for opened in self._open.values():  # oldest first
            due_at = opened.batch.opened_at + self.linger_s
            if due_at > now:
                return due_at
        return None

    def lingering(self) -> bool:
        """Whether an open batch may be cut now, its lane permitting: the oldest has
        lingered, or a partition holds a full call's worth (see due())."""
        first = next(iter(self._open.values()), None)
        if first is None:
            return False
        return self.clock() - first.batch.opened_at >= self.linger_s or bool(self._full_tps())

    def _full_tps(self) -> set[tuple[str, int]]:
        """Partitions whose open batches together fill a call: under load their keys are
        spread over many lanes, none of them full, and waiting for the linger would leave
        calls unsent while records wait (measured in bench/README.md)."""
        if self.group_of is not None or self.lanes == 1:
            return set()  # one batch per lane and group: it closes itself when full
        most = self.max_records
        return {tp for tp, n in self._tp_records.items() if n >= most}

    def holds_any(self, topics: set[str]) -> bool:
        """Whether open batches hold records of ``topics``."""
        return any(batches for (topic, _), batches in self._by_tp.items() if topic in topics)

    @property
    def open_batches(self) -> int:
        return len(self._open)

    def _new(self, slot: _Slot) -> _Open:
        opened = _Open(Batch(id="", group=slot[1], opened_at=self.clock()))
        opened.batch.lanes = (slot[0],)
        self._open[slot] = opened
        self._by_tp.setdefault(slot[0][:2], {})[slot] = opened
        return opened

    def _close_in_order(self, slot: _Slot) -> list[Batch]:
        """Close ``slot``'s batch, and before it, where one key's records may sit in
        several groups of a lane, the lane's older batches."""
        if not self.keys_span_groups:
            return [self._close(slot)]
        older: list[_Slot] = []
        for other in self._open:  # oldest first, up to this one
            if other == slot:
                break
            if other[0] == slot[0]:
                older.append(other)
        return [self._close(s) for s in [*older, slot]]

    def _close(self, slot: _Slot) -> Batch:
        opened = self._open.pop(slot)
        del self._by_tp[slot[0][:2]][slot]
        batch = opened.batch
        batch.id = _name(batch)
        self.buffered_records -= batch.count
        self.buffered_bytes -= batch.nbytes
        self._tp_records[slot[0][:2]] -= batch.count
        return batch


def _name(batch: Batch) -> str:
    """Named after its first record: a reader can find it in Kafka from the id alone."""
    first = batch.first_record()
    assert first is not None, "a batch is opened by its first record"
    return f"{first.topic}-{first.partition}-{first.offset}-n{batch.count}"


_REC_TOPIC, _REC_PARTITION = attrgetter("topic"), attrgetter("partition")
_REC_KEY, _REC_OFFSET = attrgetter("key"), attrgetter("offset")


def _record_fields(records: list[SinkRecord]) -> tuple[Iterator[Any], ...]:
    return (
        map(_REC_TOPIC, records),
        map(_REC_PARTITION, records),
        map(_REC_KEY, records),
        map(_REC_OFFSET, records),
    )


def _one_run_each(msgs: list[Message], offsets: Offsets) -> bool:
    """Whether each partition's messages are one run, in the order of ``offsets``: its
    first and last messages sit where the run's length puts them (the offsets of a
    partition ascend and are unique, so nothing else can sit between)."""
    start = 0
    for tp, offs in offsets.items():
        first, last = msgs[start], msgs[start + len(offs) - 1]
        # The topic too: two topics' partitions of one number may interleave in a poll.
        head = (first.topic(), first.partition(), first.offset())
        tail = (last.topic(), last.partition(), last.offset())
        if head != (*tp, offs[0]) or tail != (*tp, offs[-1]):
            return False
        start += len(offs)
    return True


def _split(lanes: list[Lane]) -> Iterator[tuple[Lane, slice | list[int]]]:
    """Each lane of a poll with its records' indexes, in order: a slice when they are one
    run (always so with one lane per partition), else a list."""
    if len(set(lanes)) == len(list(groupby(lanes))):
        start = 0
        for lane, run in groupby(lanes):
            end = start + sum(1 for _ in run)
            yield lane, slice(start, end)
            start = end
        return
    picked: dict[Lane, list[int]] = {}
    for i, lane in enumerate(lanes):
        at = picked.get(lane)
        if at is None:
            picked[lane] = [i]
        else:
            at.append(i)
    yield from picked.items()


def _pick(items: list[Any], picked: slice | list[int]) -> list[Any]:
    if isinstance(picked, slice):
        return items[picked]
    return [items[i] for i in picked]

"""Group records into batches: by arrival order, by message key, or by a record attribute.

A batch closes when it holds ``max_records``, when one more record would pass
``max_bytes``, when a record repeats an id already in it (Clari rejects a request that
holds the same id twice, and the later record must follow the earlier one), or when it
has lingered ``linger_s`` since its first record.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate, repeat
from typing import Any

from confluent_kafka import Message

from sink.decoding import RecordError, lookup, record_id
from sink.records import BODY_OF, Batch, Offsets, SinkRecord, message_record

GroupOf = Callable[[SinkRecord, dict[str, Any]], str]


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


_PLAIN_IDS = {str, int, type(None)}


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


class Batcher:
    def __init__(
        self,
        *,
        max_records: int,
        max_bytes: int,
        linger_s: float,
        group_of: GroupOf | None,
        id_field: str | None = "id",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self.group_of = group_of
        self.id_field = id_field
        self.clock = clock
        self._open: dict[str, _Open] = {}  # insertion order = age order
        self.buffered_records = 0
        self.buffered_bytes = 0

    @property
    def needs_data(self) -> bool:
        """Whether placing a record needs its decoded form (attribute or key grouping),
        or only its id (arrival order)."""
        return self.group_of is not None

    def add(self, record: SinkRecord, data: dict[str, Any]) -> Sequence[Batch]:
        """Add a shaped record (``data`` is its decoded form); return the batches this
        closed (usually none)."""
        group = "" if self.group_of is None else self.group_of(record, data)
        return self._place(record, group, record_id(data, self.id_field))

    def _place(self, record: SinkRecord, group: str, rid: Any) -> Sequence[Batch]:
        """Put ``record`` in its group's batch. No allocation unless a batch closes."""
        record.group = group
        size = len(record.body)
        if size > self.max_bytes:
            raise RecordError(
                "record-too-large", f"{size} bytes encoded, over BATCH_MAX_BYTES={self.max_bytes}"
            )
        closed: Sequence[Batch] = ()
        current = self._open.get(group)
        record.rid = rid
        if current is not None and (
            current.batch.nbytes + size > self.max_bytes or (rid is not None and rid in current.ids)
        ):
            closed = [self._close(group)]
            current = None
        if current is None:
            current = self._new(group)
        batch = current.batch
        batch.extend([record], size)
        if rid is not None:
            current.ids.add(rid)
        self.buffered_records += 1
        self.buffered_bytes += size
        if batch.count >= self.max_records:
            closed = [*closed, self._close(group)]
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
        closed = self._fill(
            sizes, rids, lambda batch, start, end, added: batch.extend(records[start:end], added)
        )
        return closed, refused

    def add_messages(
        self, msgs: list[Message], rids: list[Any], offsets: Offsets | None = None
    ) -> tuple[list[Batch], list[tuple[SinkRecord, RecordError]]]:
        """add_many() for the hot path: consumed messages sent as their values, with their
        ids (Shaper.probe_messages), in arrival order; no SinkRecord is made for them.
        ``offsets``, if given, are the messages' offsets (message_offsets), handed over:
        used as they are when all the messages go to one batch."""
        assert self.group_of is None, "grouping by key or attribute needs shaped records"
        sizes: list[int] = list(map(len, map(Message.value, msgs)))  # type: ignore[arg-type]
        if sizes and max(sizes) > self.max_bytes:
            return self.add_many(list(map(message_record, msgs, rids)), None, rids)
        n = len(msgs)

        def add(batch: Batch, start: int, end: int, added: int) -> None:
            whole = start == 0 and end == n
            batch.add_messages(
                msgs if whole else msgs[start:end],
                rids if whole else rids[start:end],
                added,
                offsets if whole else None,
            )

        return self._fill(sizes, rids, add), []

    def _fill(
        self, sizes: list[int], rids: list[Any], add: Callable[[Batch, int, int, int], None]
    ) -> list[Batch]:
        """Place a poll's records, in order, into the arrival-order batch: whole runs at
        once, their sizes summed and ids compared in C (this runs for every record of a
        backfill). ``add(batch, start, end, nbytes)`` adds records start..end."""
        closed: list[Batch] = []
        start, n = 0, len(sizes)
        while start < n:
            opened = self._open.get("") or self._new("")
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
            start = end
            # Full, or the next record does not fit (bytes or a repeated id).
            if batch.count >= self.max_records or start < n:
                closed.append(self._close(""))
        return closed

    def _ids(self, datas: list[dict[str, Any]]) -> list[Any]:
        """record_id() of each, with the per-record call only where an id is unusual."""
        if not self.id_field:
            return [None] * len(datas)
        rids = list(map(dict.get, datas, repeat(self.id_field)))
        if set(map(type, rids)) <= _PLAIN_IDS:
            return rids
        return [record_id(d, self.id_field) for d in datas]

    def due(self) -> list[Batch]:
        """Batches whose linger time has passed."""
        now = self.clock()
        ready = [g for g, o in self._open.items() if now - o.batch.opened_at >= self.linger_s]
        return [self._close(g) for g in ready]

    def flush(self, keep: Callable[[Batch], bool] | None = None) -> list[Batch]:
        """Close every open batch (or those ``keep`` selects) regardless of linger."""
        groups = [g for g, o in self._open.items() if keep is None or keep(o.batch)]
        return [self._close(g) for g in groups]

    def drop(self, partitions: set[tuple[str, int]]) -> int:
        """Forget buffered records of revoked partitions: their new owner consumes them again."""
        dropped = 0
        for group in list(self._open):
            opened = self._open[group]
            batch = opened.batch
            kept = [r for r in batch.records if (r.topic, r.partition) not in partitions]
            gone = len(batch.records) - len(kept)
            if not gone:
                continue
            dropped += gone
            self.buffered_records -= gone
            self.buffered_bytes -= batch.nbytes
            batch.records = kept
            batch.nbytes = sum(r.nbytes for r in kept)
            batch.key_set = None  # found again from what is left (as the offsets are)
            self.buffered_bytes += batch.nbytes
            opened.ids = {r.rid for r in kept if r.rid is not None}
            if not kept:
                del self._open[group]
        return dropped

    def next_deadline(self) -> float | None:
        """When the oldest open batch is due (monotonic seconds), or None if nothing is open."""
        if not self._open:
            return None
        oldest = min(o.batch.opened_at for o in self._open.values())
        return oldest + self.linger_s

    @property
    def open_batches(self) -> int:
        return len(self._open)

    def _new(self, group: str) -> _Open:
        opened = _Open(Batch(id="", group=group, opened_at=self.clock()))
        self._open[group] = opened
        return opened

    def _close(self, group: str) -> Batch:
        opened = self._open.pop(group)
        batch = opened.batch
        first = batch.first_record()
        assert first is not None, "a batch is opened by its first record"
        # Named after its first record: a reader can find it in Kafka from the id alone.
        batch.id = f"{first.topic}-{first.partition}-{first.offset}-n{batch.count}"
        self.buffered_records -= batch.count
        self.buffered_bytes -= batch.nbytes
        return batch

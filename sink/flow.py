"""Flow control: order per key without serialising the sink, concurrency, pace, backpressure.

*Order.* Every batch belongs to one lane (a partition and a key's slot, see
sink/batching.py). A lane has at most one batch being sent, and sends its batches in
the order they closed, so every key reaches the API in offset order, through retries.
Lanes are independent: a slow or hot key holds back only its own lane, and as many
calls are in flight as there are lanes with work, up to the concurrency limit. (This
is Confluent's Parallel Consumer's key order, with lanes so that calls stay full.)

*Concurrency.* At most ``limit.current`` batches wait for the API's final answer. The
limit starts at 8, grows by one for each call that succeeds while batches wait for a
slot, and halves while the API is overloaded (503; a 429 slows the rate instead, see
sink/rate_share.py). It never passes
HTTP_MAX_IN_FLIGHT. So at any latency the sink has enough calls in flight to reach the
rate limit, and no more.

*Pace.* A batch is cut and started only when the rate limit allows a call now: a batch
that would wait for the rate keeps filling instead, so calls stay full when the rate,
not the data, is the bound. (The HTTP client paces every call again, retries and job
polls included; this pace only decides when to cut.)

*Backpressure.* A partition is paused while its unresolved records pass its share of
SINK_MAX_BUFFERED_RECORDS, so a hot key's partition stops without stopping the others;
every partition is paused while the bytes held pass SINK_MAX_BUFFERED_BYTES.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from sink.batching import Batcher
from sink.consumer import KafkaSource
from sink.http_client import RateLimiter, next_slot
from sink.records import Batch, Lane

log = logging.getLogger(__name__)
TP = tuple[str, int]

Deliver = Callable[[Batch, Callable[[], None]], Coroutine[Any, Any, None]]


class ConcurrencyLimit:
    """Requests allowed in flight now: grown while batches wait for a slot, halved when
    the API pushes back."""

    INITIAL = 8
    CALM_S = 30.0  # after a push-back, grow back one step per `current` successes

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.current = min(maximum, self.INITIAL)
        self.wanted = False  # a batch waited for a slot since the last growth
        self._credit = 0
        self._last_cut = -1e9

    def pushback(self) -> None:
        now = time.monotonic()
        if now - self._last_cut > 1.0:  # one cut per burst of 429s, not one per request
            self.current = max(1, self.current // 2)
            self._last_cut = now
            self._credit = 0

    def success(self) -> None:
        if not self.wanted or self.current >= self.maximum:
            return
        self._credit += 1
        calm = time.monotonic() - self._last_cut > self.CALM_S
        if calm or self._credit >= self.current:
            self.current += 1
            self._credit = 0
            self.wanted = False


class Pace:
    """When the next call may start: ``rate`` calls a second, evenly spaced (the same
    spacing as sink.http_client.RateLimiter, which enforces it on every call)."""

    MARGIN = RateLimiter.MARGIN

    def __init__(self, rate: float) -> None:
        self.spacing_s = self.MARGIN / rate
        self._next = 0.0

    def set_rate(self, rate: float) -> None:
        self.spacing_s = self.MARGIN / rate

    def wait_s(self, now: float) -> float:
        return self._next - now

    def burst(self, slots: int) -> int:
        """How many of ``slots`` calls may start back to back: all of them where calls are
        under a millisecond apart (the pace does not bind), else one."""
        return slots if self.spacing_s < 0.001 else 1

    def take(self, now: float) -> None:
        self._next = next_slot(self._next, now, self.spacing_s)


class Dispatcher:
    """Starts batches: one at a time per lane, in order, within the limit and the pace."""

    def __init__(
        self,
        batcher: Batcher,
        limit: ConcurrencyLimit,
        pace: Pace,
        deliver: Deliver,
        prepare: Callable[[Batch], None],
        finished: Callable[[Batch, asyncio.Task[None]], None],
    ) -> None:
        self.batcher = batcher
        self.limit = limit
        self.pace = pace
        self._deliver = deliver
        self._prepare = prepare  # fixes what depends on the moment of sending
        self._finished = finished  # resolves the batch's offsets, or stops the sink
        self.queues: dict[Lane, deque[Batch]] = {}  # closed batches waiting for their lane
        self.ready: deque[Lane] = deque()  # idle lanes with a queued batch, oldest first
        # Lanes with a batch waiting for its final answer, and that batch.
        self.busy: dict[Lane, Batch] = {}
        self.in_flight: dict[asyncio.Task[None], Batch] = {}
        self.sending = 0
        self.active = True
        # Cut batches without waiting for their linger: the topic is caught up (a one-off
        # load ends) or the sink stops. They still wait for their lanes, and merge.
        self.flushing = False
        # Batches cut from the batcher to start now, during pump() (seen by `holds`).
        self.cut: deque[Batch] = deque()
        # Whether a batch must not start yet though its lane and a slot are free (an
        # initial load's closing call, see sink/last_batch.py); it stays first in its lane.
        # One may be held per entity: each waits for its own entity only, and other lanes
        # go on meanwhile.
        self.holds: Callable[[Batch], bool] = lambda batch: False
        self.held: list[Batch] = []
        self._timer: asyncio.TimerHandle | None = None

    # -- queueing ------------------------------------------------------------------------
    def add(self, batches: Iterable[Batch]) -> None:
        for batch in batches:
            lane = batch.lane
            # Merged batches (several lanes) are only ever cut to start at once.
            assert lane is not None and len(batch.lanes) == 1, "one lane to queue in"
            queue = self.queues.get(lane)
            if queue is None:
                queue = self.queues[lane] = deque()
                if lane not in self.busy:
                    self.ready.append(lane)
            queue.append(batch)

    def idle(self, lane: Lane) -> bool:
        """Whether a lingered batch of ``lane`` may be cut now: nothing ahead of it."""
        return lane not in self.busy and lane not in self.queues

    @property
    def waiting(self) -> int:
        """Closed batches waiting for their lane or a slot."""
        return sum(map(len, self.queues.values()))

    def waiting_work(self) -> bool:
        """Batches wait for their lane, or are still open."""
        return bool(self.queues) or bool(self.held) or self.batcher.open_batches > 0

    def held_bytes(self) -> int:
        """Bytes of the batches waiting and in flight."""
        waiting = sum(b.nbytes for q in self.queues.values() for b in q)
        waiting += sum(b.nbytes for b in self.held)
        return waiting + sum(b.nbytes for b in self.in_flight.values())

    # -- starting ------------------------------------------------------------------------
    def pump(self) -> None:
        """Start what may start: queued batches of idle lanes first (oldest lane first),
        then lingered open batches of idle lanes."""
        if not self.active:
            return
        cut = self.cut
        asked = False
        while self.sending < self.limit.current:
            now = time.monotonic()
            wait = self.pace.wait_s(now)
            if wait > 0:
                if self.ready or cut or self.held or self.flushing or self.batcher.lingering():
                    self._wake_in(wait)
                break
            released = self._released()
            if released is not None:
                batch = released
            elif self.ready:
                lane = self.ready.popleft()
                queue = self.queues[lane]
                batch = queue.popleft()
                if not queue:
                    del self.queues[lane]
            else:
                if not cut and not asked:
                    # Cut no more than may start now: at most one while the pace binds
                    # (a batch cut too early would stop filling while it waits); those
                    # cut all start, whatever the pace says meanwhile.
                    slots = self.limit.current - self.sending
                    burst = self.pace.burst(slots)
                    cut.extend(self.batcher.due(self.idle, burst, self.flushing))
                    asked = True
                if not cut:
                    break
                batch = cut.popleft()
                if not all(map(self.idle, batch.lanes)):  # two groups of one lane lingered
                    self.add([batch])
                    continue
            if self._hold(batch):
                continue  # its lanes wait; other lanes go on
            self._start(batch, now)
            while cut and self.sending < self.limit.current:
                batch = cut.popleft()
                if not all(map(self.idle, batch.lanes)):
                    self.add([batch])
                elif not self._hold(batch):
                    self._start(batch, now)
        else:
            if self.ready or self.batcher.lingering() or self.flushing:
                self.limit.wanted = True  # work waits for a slot: let the limit grow
        self.add(cut)  # cut, then no slot left: first in their lanes
        cut.clear()

    def _released(self) -> Batch | None:
        """The first held batch that need not wait any longer, taken from ``held``."""
        for i, batch in enumerate(self.held):
            if not self.holds(batch):
                del self.held[i]
                return batch
        return None

    def _hold(self, batch: Batch) -> bool:
        """Keep ``batch`` from starting while ``holds`` says so: its lanes stay taken,
        so nothing of theirs overtakes it."""
        if not self.holds(batch):
            return False
        self.held.append(batch)
        for lane in batch.lanes:
            self.busy[lane] = batch
        return True

    def _wake_in(self, seconds: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self.pump()

    def _start(self, batch: Batch, now: float) -> None:
        for lane in batch.lanes:
            self.busy[lane] = batch
        self.sending += 1
        self.pace.take(now)
        self._prepare(batch)
        task = asyncio.create_task(
            self._deliver(batch, lambda: self._sent(batch)), name=f"deliver {batch.id}"
        )
        self.in_flight[task] = batch
        task.add_done_callback(self._done)

    def _sent(self, batch: Batch) -> None:
        """The API's final answer is in: the lane and the slot are free for the next
        batches, while the answer is published and the offsets wait for that."""
        # Called again when the task ends, maybe after the lane's next batch started.
        if self.busy.get(batch.lanes[0]) is not batch:
            return
        for lane in batch.lanes:
            del self.busy[lane]
            if lane in self.queues:
                self.ready.append(lane)
        self.sending -= 1
        self.pump()

    def _done(self, task: asyncio.Task[None]) -> None:
        batch = self.in_flight.pop(task, None)
        if batch is None:
            return
        self._sent(batch)
        self._finished(batch, task)
        if self.held:
            self.pump()  # a held closing call may go now: its entity's records resolved

    # -- rebalances and stopping -------------------------------------------------------
    def drop(self, tps: set[TP]) -> list[asyncio.Task[None]]:
        """Forget queued batches of ``tps``; return the tasks of theirs in flight."""
        for lane in [lane for lane in self.queues if lane[:2] in tps]:
            del self.queues[lane]
        self.ready = deque(lane for lane in self.ready if lane[:2] not in tps)
        for batch in [b for b in self.held if any(lane[:2] in tps for lane in b.lanes)]:
            self.held.remove(batch)
            for lane in batch.lanes:
                del self.busy[lane]
        return [t for t, b in self.in_flight.items() if b.lane is not None and b.lane[:2] in tps]

    async def finish(
        self, deadline: float, others: set[asyncio.Task[None]], failed: Callable[[], bool]
    ) -> list[asyncio.Task[None]]:
        """Send what is queued (if active) and let deliveries and ``others`` end, until
        ``deadline`` (monotonic) or ``failed()``; cancel what is left and return it."""
        self.flushing = True
        while (self.in_flight or others or (self.waiting_work() and self.active)) and (
            not failed() and time.monotonic() < deadline
        ):
            self.pump()
            pending = set(self.in_flight) | others
            if pending:
                await asyncio.wait(
                    pending,
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            else:  # waiting for the pace only
                await asyncio.sleep(max(0.001, self.pace.wait_s(time.monotonic())))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        abandoned = [*self.in_flight, *others]
        for task in abandoned:
            task.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)
        return abandoned

    def parked(self) -> dict[TP, int]:
        """Records of bulk jobs in progress, dropped from memory (see sink/replay.py)."""
        out: dict[TP, int] = {}
        for batch in self.in_flight.values():
            if batch.parked is not None:
                for tp, offs in batch.parked.items():
                    out[tp] = out.get(tp, 0) + len(offs)
        return out


class Backpressure:
    """Which partitions to pause: those over their share of the records that may be
    held, released below half of it; all of them while the bytes held are over the cap."""

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.full: set[TP] = set()
        self.bytes_full = False

    def update(self, unresolved: dict[TP, int], nbytes: int) -> set[TP]:
        share = max(1, self.max_records // max(1, len(unresolved)))
        before = bool(self.full) or self.bytes_full
        for tp, held in unresolved.items():
            if held >= share:
                self.full.add(tp)
            elif held < max(1, share // 2):  # a share of 1: resumed once it holds none
                self.full.discard(tp)
        self.full.intersection_update(unresolved)
        if nbytes >= self.max_bytes:
            self.bytes_full = True
        elif nbytes < self.max_bytes // 2:
            self.bytes_full = False
        paused = set(unresolved) if self.bytes_full else set(self.full)
        if bool(paused) != before:
            held_total = sum(unresolved.values())
            if paused:
                log.info(
                    "backpressure: pausing %d partition(s) (%d records, %d bytes held)",
                    len(paused),
                    held_total,
                    nbytes,
                )
            else:
                log.info("backpressure released: resuming partitions")
        return paused

    async def apply(
        self, source: KafkaSource, held: dict[TP, int], nbytes: int, active: bool
    ) -> set[TP]:
        """Pause and resume ``source``'s partitions as ``update`` (or inactivity) says."""
        paused = self.update(held, nbytes) if active else set(source.assignment)
        source.pause_new = not active or self.bytes_full
        await source.pause(paused)
        if resume := source.paused - paused:
            await source.resume(list(resume))
        return paused

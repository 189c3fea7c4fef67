"""The emulator's memory: accepted records, bulk jobs, request log, faults, rate limits,
and what the benchmark reads: calls in flight, calls per second per token, and the
delivery check of tracked records (lost, duplicated, out of order per key)."""

from __future__ import annotations

import random
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Faults:
    """Injected trouble. Rates are shares of API calls (0..1)."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    reset_rate: float = 0.0  # the connection is dropped without an answer
    reset_next: float = 0.0  # this many of the next API calls are dropped that way
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    down_until: float = 0.0  # epoch seconds; until then every API call gets 503
    job_failure_rate: float = 0.0  # bulk jobs that end FAILED
    fail_next_jobs: float = 0.0  # this many of the next jobs end FAILED
    retry_after_s: float | None = None  # sent with injected 429/503 when set

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key == "down_for_s":
                self.down_until = time.time() + float(value)
            elif key in self.__dataclass_fields__:
                setattr(self, key, None if value is None else float(value))
            else:
                raise KeyError(key)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["down_for_s"] = max(0.0, self.down_until - time.time())
        return data


# A tracked record as the delivery check needs it: (id as text, key, sequence number).
Mark = tuple[str, Any, Any]


@dataclass(slots=True)
class Received:
    """What a request brings to accept: its record count, the producers' stamps (for the
    benchmark's latency), the data sets themselves when records are stored, and the marks
    of its records when they are tracked."""

    count: int
    stamps: list[int]
    datasets: list[dict[str, Any]] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)

    @classmethod
    def of(cls, datasets: list[dict[str, Any]], track: tuple[str, str] | None = None) -> Received:
        records = [rec for ds in datasets for rec in ds.get("records", [])]
        stamps = [r.get("producedAt") for r in records if isinstance(r, dict)]
        marks: list[Mark] = []
        if track is not None:
            key_field, seq_field = track
            marks = [
                (str(r.get("id")), _hashable(r.get(key_field)), _hashable(r.get(seq_field)))
                for r in records
                if isinstance(r, dict)
            ]
        return cls(len(records), [p for p in stamps if type(p) is int], datasets, marks)


def _hashable(value: Any) -> Any:
    """A key as the delivery check can hold it: objects and arrays by their text."""
    return str(value) if isinstance(value, dict | list) else value


@dataclass
class Tracking:
    """The delivery check of a run, kept as records are accepted (stored or not): distinct
    ids, ids accepted again, and records whose per-key sequence number is lower than one
    already accepted for their key. Memory grows with the distinct ids and keys of one
    run (a set entry each), not with the records' bodies."""

    key_field: str = "key"
    seq_field: str = "seq"
    ids: set[str] = field(default_factory=set)
    last_seq: dict[Any, Any] = field(default_factory=dict)
    duplicates: int = 0
    reordered: int = 0
    unkeyed: int = 0  # no key or no sequence number: counted, not checked for order

    @property
    def fields(self) -> tuple[str, str]:
        return self.key_field, self.seq_field

    def add(self, marks: list[Mark]) -> None:
        ids, last_seq = self.ids, self.last_seq
        for rid, key, seq in marks:
            if rid in ids:  # a replay of an old record: not an ordering fault
                self.duplicates += 1
                continue
            ids.add(rid)
            if key is None or type(seq) is not int:
                self.unkeyed += 1
                continue
            last = last_seq.get(key)
            if last is not None and seq < last:
                self.reordered += 1
            else:
                last_seq[key] = seq

    def summary(self) -> dict[str, Any]:
        return {
            "keyField": self.key_field,
            "seqField": self.seq_field,
            "distinct": len(self.ids),
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "keys": len(self.last_seq),
            "unkeyed": self.unkeyed,
        }


@dataclass
class Concurrency:
    """API calls being served at once: the maximum, and the mean over the time from the
    first call's arrival to the last call's answer (the integral of the count over time)."""

    now: int = 0
    max: int = 0
    area: float = 0.0
    first: float = 0.0
    changed: float = 0.0

    def _move(self, step: int) -> None:
        t = time.monotonic()
        if not self.first:
            self.first = self.changed = t
        self.area += self.now * (t - self.changed)
        self.changed = t
        self.now += step
        self.max = max(self.max, self.now)

    def enter(self) -> None:
        self._move(1)

    def leave(self) -> None:
        self._move(-1)

    def summary(self) -> dict[str, Any]:
        span = self.changed - self.first
        return {
            "now": self.now,
            "max": self.max,
            "mean": round(self.area / span, 3) if span > 0 else None,
            "seconds": round(span, 3),
        }


@dataclass
class Job:
    id: str
    entity: str
    mode: str
    is_last: bool
    received: Received
    errors: list[dict[str, str]]
    will_fail: bool
    submitted: float
    request: dict[str, Any]
    settled: bool = False
    record_count: int = 0

    def __post_init__(self) -> None:
        self.record_count = self.received.count

    def state(self, queued_s: float, running_s: float) -> str:
        age = time.time() - self.submitted
        if age < queued_s:
            return "QUEUED"
        if age < queued_s + running_s:
            return "IN_PROGRESS"
        if self.will_fail:
            return "FAILED"
        return "VALIDATION_ERROR" if self.errors else "SUCCESS"


@dataclass
class EmulatorState:
    api_token: str = "demo-token"
    partner_key: str = "demo-partner"
    rate_limit: float = 100.0
    job_queued_s: float = 0.2
    job_running_s: float = 0.3
    max_active_jobs: int = 20
    store_records: bool = True
    request_log_size: int = 5_000
    faults: Faults = field(default_factory=Faults)
    records: list[dict[str, Any]] = field(default_factory=list)
    requests: deque[dict[str, Any]] = field(default_factory=deque)
    jobs: dict[str, Job] = field(default_factory=dict)
    initial_done: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    # Records accepted per entity of the path, and per data set's sourceEntity (known
    # only when bodies are read, not with --no-store): several entities in one sink.
    by_entity: dict[str, int] = field(default_factory=dict)
    by_source_entity: dict[str, int] = field(default_factory=dict)
    _windows: dict[str, deque[float]] = field(default_factory=dict)
    # Every call with a valid token in the last second (refused ones too), and the most
    # seen in any one-second window: what Clari's 100 calls/s per token is judged on.
    _calls: dict[str, deque[float]] = field(default_factory=dict)
    max_calls_in_second: dict[str, int] = field(default_factory=dict)
    # Calls per wall-clock second (epoch s → calls), the last hour: where a run lost its
    # pace, at its start, its end or all along (bench reports it).
    calls_by_second: dict[int, int] = field(default_factory=dict)
    in_flight: Concurrency = field(default_factory=Concurrency)
    tracking: Tracking | None = None
    last_response: float = 0.0  # when the last API call was answered
    rng: random.Random = field(default_factory=random.Random)
    latencies_ms: list[int] = field(default_factory=list)
    first_request: float = 0.0  # when the first API call began to arrive
    first_accept: float = 0.0
    last_accept: float = 0.0
    # The first and last calls that handed records over (an upload, or a file whose job
    # was made): the rate the API received records at, its job turnaround aside.
    first_receipt: float = 0.0
    first_receipt_records: int = 0
    last_receipt: float = 0.0

    def reset(self) -> None:
        self.records.clear()
        self.requests.clear()
        self.jobs.clear()
        self.initial_done.clear()
        self.counters.clear()
        self.by_entity.clear()
        self.by_source_entity.clear()
        self._windows.clear()
        self._calls.clear()
        self.max_calls_in_second.clear()
        self.calls_by_second.clear()
        self.in_flight = Concurrency()
        if self.tracking is not None:
            self.tracking = Tracking(*self.tracking.fields)
        self.last_response = 0.0
        self.faults = Faults()
        self.latencies_ms.clear()
        self.first_request = self.first_accept = self.last_accept = 0.0
        self.first_receipt = self.last_receipt = 0.0
        self.first_receipt_records = 0

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def log_request(self, entry: dict[str, Any]) -> None:
        self.requests.append(entry)
        while len(self.requests) > self.request_log_size:
            self.requests.popleft()

    def over_rate(self, token: str) -> bool:
        """Sliding one-second window per token, as Clari's 100 requests/s per API token."""
        now = time.monotonic()
        second = int(time.time())
        seen = self.calls_by_second
        seen[second] = seen.get(second, 0) + 1
        if len(seen) > 3_600:
            del seen[next(iter(seen))]  # the oldest: seconds are inserted in order
        calls = self._calls.setdefault(token, deque())
        calls.append(now)
        while now - calls[0] >= 1.0:
            calls.popleft()
        if len(calls) > self.max_calls_in_second.get(token, 0):
            self.max_calls_in_second[token] = len(calls)
        window = self._windows.setdefault(token, deque())
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= self.rate_limit:
            self.count("rate_limited")
            return True
        window.append(now)
        return False

    def track_fields(self) -> tuple[str, str] | None:
        """The key and sequence fields to read from each record, when records are tracked."""
        return self.tracking.fields if self.tracking is not None else None

    def accept(self, received: Received, meta: dict[str, Any]) -> int:
        now_ms = int(time.time() * 1000)
        n = received.count
        # Benchmarks stamp records: time from the Kafka timestamp to arrival here.
        self.latencies_ms.extend([now_ms - p for p in received.stamps])
        if self.store_records:
            for ds in received.datasets:
                for rec in ds.get("records", []):
                    self.records.append(
                        {
                            **meta,
                            "sourceEntity": ds.get("sourceEntity"),
                            "receivedAt": now_ms,
                            "record": rec,
                        }
                    )
        if self.tracking is not None:
            self.tracking.add(received.marks)
        self.count("records_accepted", n)
        entity = str(meta.get("entity"))
        self.by_entity[entity] = self.by_entity.get(entity, 0) + n
        for ds in received.datasets:
            source = str(ds.get("sourceEntity"))
            count = len(ds.get("records") or ())
            self.by_source_entity[source] = self.by_source_entity.get(source, 0) + count
        if n:
            self.first_accept = self.first_accept or time.time()
            self.last_accept = time.time()
        return n

    def receive(self, n: int) -> None:
        """Note a call that handed over ``n`` records, accepted now or by a job later."""
        if not n:
            return
        now = time.time()
        if not self.first_receipt:
            self.first_receipt, self.first_receipt_records = now, n
        self.last_receipt = now

    def active_jobs(self) -> int:
        return sum(
            1
            for j in self.jobs.values()
            if j.state(self.job_queued_s, self.job_running_s) in ("QUEUED", "IN_PROGRESS")
        )

    def new_job(self, **kwargs: Any) -> Job:
        fail = self.rng.random() < self.faults.job_failure_rate or self.faults.fail_next_jobs >= 1
        if self.faults.fail_next_jobs >= 1:
            self.faults.fail_next_jobs -= 1
        job = Job(id=secrets.token_hex(12), submitted=time.time(), will_fail=fail, **kwargs)
        self.jobs[job.id] = job
        self.receive(job.record_count)
        return job

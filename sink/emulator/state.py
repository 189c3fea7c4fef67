"""The emulator's memory: accepted records, bulk jobs, request log, faults, rate limits."""

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


@dataclass(slots=True)
class Received:
    """What a request brings to accept: its record count, the producers' stamps (for the
    benchmark's latency), and the data sets themselves when records are stored."""

    count: int
    stamps: list[int]
    datasets: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, datasets: list[dict[str, Any]]) -> Received:
        records = [rec for ds in datasets for rec in ds.get("records", [])]
        stamps = [r.get("producedAt") for r in records if isinstance(r, dict)]
        return cls(len(records), [p for p in stamps if type(p) is int], datasets)  # not bools


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
    _windows: dict[str, deque[float]] = field(default_factory=dict)
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
        self._windows.clear()
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
        window = self._windows.setdefault(token, deque())
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= self.rate_limit:
            return True
        window.append(now)
        return False

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
        self.count("records_accepted", n)
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

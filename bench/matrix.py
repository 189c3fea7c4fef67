"""The benchmark's matrix: key distributions x API latency x rate limit, sink and peer.

Each scenario runs the sink with its defaults (only the connection, quiet logs and, where
the limit is lifted, ``HTTP_RATE_LIMIT``) on one preloaded topic per key distribution,
against a fresh emulator that answers after the scenario's latency and enforces either
Clari's 100 calls/s per token or no limit; then the peer (bench/peer.py) on the same
topic against a fresh emulator with the same settings. Every figure is read at the
emulator (what the API saw) or from the kernel (what each process cost).
"""

from __future__ import annotations

import fnmatch
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench import ceiling, keys
from bench.peer import Peer
from bench.procs import LIFTED, RESULTS, Emulator, Measured, Sink, sink_env

CLARI_LIMIT = 100  # calls/s per token
BATCH = 100  # records a call: Upload Entity Data's maximum, the sink's default BATCH_SIZE
LATENCIES = (0, 50, 200)
PEER_RETRIES = 1_000_000  # against a rate limit; see bench/peer.py
PEER_WORKDIR = Path(__file__).resolve().parents[1] / ".local" / "bench-peer"


@dataclass(frozen=True)
class Scenario:
    name: str
    distribution: str
    latency_ms: int
    limited: bool  # Clari's 100 calls/s at the emulator, the sink's default HTTP_RATE_LIMIT
    in_flight: int = 32  # the sink's HTTP_MAX_IN_FLIGHT (32 is its default)
    members: int = 1
    peer: bool = False  # run the peer on it too
    ceiling: bool = False  # and a bare client with as many calls in flight (bench/ceiling.py)
    env: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def limit_label(self) -> str:
        return f"{CLARI_LIMIT}/s" if self.limited else "lifted"

    def expected_rate(self) -> float:
        """What the sink should reach (records/s): its calls in flight over the latency,
        Clari's limit, and about 100,000/s for the machine at no latency."""
        rate = 100_000.0
        if self.latency_ms:
            rate = min(rate, self.in_flight * BATCH / (self.latency_ms / 1000))
        if self.limited:
            rate = min(rate, CLARI_LIMIT * BATCH)
        return rate

    def finish_rate(self) -> float:
        """What the sink can reach on this topic: expected_rate(), and with per-key order
        on hot20 no more than the hot key's lane, one call at a time (README
        "Performance"). It sets the run's time limit, not its records: without it the
        hot key's 200 ms run was cut at its limit before it could finish."""
        rate = self.expected_rate()
        by_key = self.env.get("SINK_ORDER_BY", "key") == "key"
        if self.latency_ms and self.distribution == "hot20" and by_key:
            rate = min(rate, BATCH / (self.latency_ms / 1000) / keys.HOT_SHARE)
        return rate

    def records(self, quick: bool) -> int:
        """About 20 s of records at the expected rate (3 s when quick), within bounds."""
        low, high, seconds = (5_000, 30_000, 3) if quick else (20_000, 200_000, 20)
        return int(min(high, max(low, self.expected_rate() * seconds)) // 1_000 * 1_000)


def matrix() -> list[Scenario]:
    """Every scenario of the full run, in running order (grouped by topic)."""
    out: list[Scenario] = []
    for dist in keys.DISTRIBUTIONS:
        for limited in (False, True):
            for latency in LATENCIES:
                label = f"limit{CLARI_LIMIT}" if limited else "lifted"
                # The peer too: against the limit it meets 429s (it has no rate limiter of
                # its own), each blocking its task for retry.backoff.ms (3 s).
                out.append(
                    Scenario(f"{dist}-{latency}ms-{label}", dist, latency, limited, peer=True)
                )
        if dist == "uniform200":
            # The first target: 8 in flight at 50 ms, limit lifted.
            out.append(
                Scenario(
                    "uniform200-50ms-inflight8",
                    dist,
                    50,
                    False,
                    in_flight=8,
                    env={"HTTP_MAX_IN_FLIGHT": "8"},
                    ceiling=True,
                )
            )
            # Two members sharing one token at Clari's limit, defaults.
            out.append(Scenario("uniform200-200ms-two-members", dist, 200, True, members=2))
        if dist == "hot20":
            # Order per record id: a hot key is no longer one lane (its records have ids
            # of their own). Records of one key may then be reordered, by design.
            for latency, limited in ((200, True), (50, False)):
                label = f"limit{CLARI_LIMIT}" if limited else "lifted"
                out.append(
                    Scenario(
                        f"hot20-{latency}ms-{label}-order-id",
                        dist,
                        latency,
                        limited,
                        env={"SINK_ORDER_BY": "id"},
                    )
                )
    return out


QUICK = (
    "uniform200-50ms-lifted",
    "uniform200-50ms-inflight8",
    "uniform200-200ms-limit100",
    "hot20-200ms-limit100",
    "uniform200-200ms-two-members",
)


def select(only: Iterable[str] | None, quick: bool) -> list[Scenario]:
    """The scenarios named by ``only`` (names or shell patterns), else all (quick: a few)."""
    scenarios = matrix()
    if only:
        patterns = list(only)
        return [s for s in scenarios if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    if quick:
        return [s for s in scenarios if s.name in QUICK]
    return scenarios


# --- data ------------------------------------------------------------------------------------
def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result(30)


def partition_counts(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        return [
            high - low
            for low, high in (
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in range(partitions)
            )
        ]
    finally:
        consumer.close()


@dataclass
class Topics:
    """One topic per key distribution and record count, loaded on first use."""

    bootstrap: str
    partitions: int
    record_bytes: int
    loaded: dict[tuple[str, int], str] = field(default_factory=dict)
    described: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, distribution: str, n: int) -> str:
        if (distribution, n) in self.loaded:
            return self.loaded[(distribution, n)]
        topic = f"bench.{distribution}.{n}.{time.time():.0f}"
        create_topic(self.bootstrap, topic, self.partitions)
        began = time.monotonic()
        keys.load(self.bootstrap, topic, distribution, n, self.record_bytes)
        counts = partition_counts(self.bootstrap, topic, self.partitions)
        self.loaded[(distribution, n)] = topic
        self.described[topic] = {
            "distribution": distribution,
            "records": n,
            "records_per_partition": counts,
            # As Kafka's default partitioner places them (murmur2): what the Java clients
            # producing a real topic would do.
            "as_kafka_default_partitioner": counts
            == keys.partition_counts(distribution, n, self.partitions),
            "largest_partition_share": round(max(counts) / max(1, sum(counts)), 3),
        }
        print(
            f"loaded {n:,} records ({distribution}, ~{self.record_bytes} B) in "
            f"{time.monotonic() - began:.1f}s; per partition {counts}",
            flush=True,
        )
        return topic


# --- runs ------------------------------------------------------------------------------------
@dataclass
class Watched:
    cpu_at_first_call: float | None  # start-up: CPU spent before the API saw a call
    timed_out: bool
    wall_s: float
    delivered: int  # distinct records at the API when the watch ended


def watch(
    emu: Emulator, procs: list[Measured], n: int, max_s: float, until_delivered: bool
) -> Watched:
    """Poll the emulator until the processes end (the sink stops once drained), or, with
    ``until_delivered``, until ``n`` distinct records arrived (the peer never stops by
    itself); at most ``max_s``."""
    began = time.monotonic()
    cpu_first: float | None = None
    while True:
        progress = emu.progress()
        delivered = (progress["tracking"] or {}).get("distinct", 0)
        if cpu_first is None and progress["firstRequestAt"]:
            cpu_first = sum(p.cpu_seconds() for p in procs)
        if all(p.exited() for p in procs) or (until_delivered and delivered >= n):
            return Watched(cpu_first, False, time.monotonic() - began, delivered)
        if time.monotonic() - began > max_s:
            return Watched(cpu_first, True, time.monotonic() - began, delivered)
        time.sleep(0.25)


def _seconds(by_second: dict[str, int]) -> list[int]:
    """Calls per second from the first second with a call to the last, gaps as 0."""
    if not by_second:
        return []
    seen = {int(k): v for k, v in by_second.items()}
    return [seen.get(s, 0) for s in range(min(seen), max(seen) + 1)]


def median_second(side: dict[str, Any]) -> float | None:
    """Calls in the run's median whole second: its pace while every member had work,
    whatever a rebalance or the last members' tail cost (the first and last seconds,
    partly outside the run, are left out)."""
    seconds = (side.get("calls_by_second") or [])[1:-1]
    return statistics.median(seconds) if seconds else None


def figures(
    stats: dict[str, Any],
    n: int,
    cpu: float,
    watched: Watched,
    rss: float,
    ended: bool,
) -> dict[str, Any]:
    """One side's figures from the emulator's stats and the processes' cost."""
    counters = stats["counters"]
    accepted = counters.get("records_accepted", 0)
    ok = counters.get("status_200", 0)
    calls = counters.get("requests", 0)
    track = stats.get("tracking") or {}
    delivered = track.get("distinct", 0)
    first, last = stats.get("firstReceiptAt"), stats.get("lastReceiptAt")
    # The rate the API received records at: from the first call that handed records over
    # to the last, counting those after the first (consumed before the window opened).
    span = (last - first) if first and last and last > first else None
    rate = (accepted - stats.get("firstReceiptRecords", 0)) / span if span else None
    call_span = (stats.get("lastResponseAt") or 0) - (stats.get("firstRequestAt") or 0)
    flight = stats.get("callsInFlight") or {}
    errors = sum(v for k, v in counters.items() if k.startswith("status_") and k != "status_200")
    startup = watched.cpu_at_first_call
    per_100k = 100_000 / delivered if delivered else None
    return {
        "records": n,
        "delivered": delivered,
        "complete": delivered >= n and not watched.timed_out,
        "timed_out": watched.timed_out,
        "delivered_in_time": watched.delivered,  # when cut: the rest came while stopping
        "wall_s": round(watched.wall_s, 1),  # from start to the end of the run (or its cut)
        "seconds": round(span, 2) if span else None,
        "records_per_s": round(rate) if rate else None,
        "calls": calls,
        "calls_per_s": round(calls / call_span, 1) if call_span > 0 else None,
        "ok_calls_per_s": round(ok / call_span, 1) if call_span > 0 else None,
        "max_calls_in_any_second": stats.get("maxCallsInAnySecond"),
        # Each whole second's calls, first to last: a run's ramp, its pace, its tail.
        "calls_by_second": _seconds(stats.get("callsBySecond") or {}),
        "records_per_call": round(accepted / ok, 1) if ok else None,
        "in_flight_mean": flight.get("mean"),
        "in_flight_max": flight.get("max"),
        "http_429": counters.get("status_429", 0),
        "http_errors": errors,
        "cpu_s": round(cpu, 2),
        "cpu_s_startup": round(startup, 2) if startup is not None else None,
        "cpu_s_per_100k": round(cpu * per_100k, 2) if per_100k else None,
        # The same without the start-up (imports, JVM and Connect's boot, group join).
        "cpu_s_per_100k_run": round((cpu - (startup or 0)) * per_100k, 2) if per_100k else None,
        "peak_rss_mib": round(rss, 1) if rss else None,
        # A run cut short by its time limit has not lost what it did not deliver yet.
        "lost": (n - delivered) if ended and not watched.timed_out else None,
        "duplicates": track.get("duplicates"),
        "reordered": track.get("reordered"),
    }


def run_sink(
    sc: Scenario, bootstrap: str, topic: str, n: int, max_s: float, tag: str
) -> dict[str, Any]:
    emu = Emulator(sc.latency_ms, CLARI_LIMIT if sc.limited else LIFTED)
    sinks: list[Sink] = []
    try:
        emu.track()
        extra = dict(sc.env)
        if not sc.limited:
            extra.setdefault("HTTP_RATE_LIMIT", str(LIFTED))
        env = sink_env(bootstrap, topic, emu, f"{sc.name}-{tag}", defaults=True, **extra)
        # More than one member: one consumer group, as the pods of one Deployment (each
        # drains its own partitions, then leaves).
        for i in range(sc.members):
            sinks.append(Sink(env, until_drained=True, log=f"sink-{sc.name}-{i}.log"))
        watched = watch(emu, list(sinks), n, max_s, until_delivered=False)
        finished = [s.finish(stop=watched.timed_out, timeout=120) for s in sinks]
        stats = emu.stats()
        cpu = sum(c for c, _ in finished)
        rss = max(r for _, r in finished)  # per member (per pod)
        out = figures(stats, n, cpu, watched, rss, ended=True)
        out["members"] = sc.members
        return out
    finally:
        for s in sinks:
            s.kill()
        emu.stop()


def run_peer(
    sc: Scenario, bootstrap: str, topic: str, n: int, partitions: int, max_s: float
) -> dict[str, Any]:
    emu = Emulator(sc.latency_ms, CLARI_LIMIT if sc.limited else LIFTED)
    peer: Peer | None = None
    try:
        emu.track()
        peer = Peer(
            PEER_WORKDIR / sc.name,
            bootstrap,
            topic,
            partitions,
            emu,
            sc.name,
            max_retries=PEER_RETRIES if sc.limited else None,
        )
        watched = watch(emu, [peer], n, max_s, until_delivered=True)
        if peer.exited():
            raise RuntimeError(f"Kafka Connect exited early:\n{peer.log_tail()}")
        cpu = peer.cpu_seconds()  # before stopping it: shutting down is not the run's work
        tasks = peer.task_states()
        stats = emu.stats()
        _, rss = peer.finish(stop=True, timeout=60)
        out = figures(stats, n, cpu, watched, rss, ended=True)
        out["tasks"] = tasks
        return out
    finally:
        if peer is not None:
            peer.kill()
        emu.stop()


FIELDS = tuple(figures({"counters": {}}, 0, 0.0, Watched(None, False, 0.0, 0), 0.0, ended=False))


def attempt(n: int, runner: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``runner(*args)``, or figures that say it failed and why."""
    try:
        return runner(*args)
    except Exception as exc:
        print(f"  failed: {exc!r}", flush=True)
        failed: dict[str, Any] = dict.fromkeys(FIELDS)
        failed |= {"records": n, "delivered": 0, "complete": False, "timed_out": False}
        return failed | {"wall_s": 0.0, "http_429": None, "error": repr(exc)[:2000]}


def bare_client_or_error(sc: Scenario, record_bytes: int) -> dict[str, Any]:
    """What a bare client reaches with the scenario's calls in flight, or why it failed."""
    try:
        return ceiling.bare_client(sc.latency_ms, sc.in_flight, record_bytes)
    except Exception as exc:
        print(f"  bare client failed: {exc!r}", flush=True)
        return {"error": repr(exc)[:2000]}


def sink_max_s(sc: Scenario, n: int, limit: float | None) -> float:
    """Five times the expected duration, at least 90 s: a broken sink cannot stall the run."""
    return limit or max(90.0, 5 * n / sc.finish_rate())


def run(
    scenarios: list[Scenario],
    bootstrap: str,
    *,
    partitions: int,
    record_bytes: int,
    quick: bool,
    records: int | None,
    sink: bool,
    peer: bool,
    max_run_s: float | None,
    peer_max_s: float,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``scenarios`` in order; return each one's row and the topics it loaded."""
    topics = Topics(bootstrap, partitions, record_bytes)
    results: list[dict[str, Any]] = []
    tag = f"{time.time():.0f}"
    for sc in scenarios:
        n = records or sc.records(quick)
        topic = topics.get(sc.distribution, n)
        row: dict[str, Any] = {
            "scenario": sc.name,
            "distribution": sc.distribution,
            "latency_ms": sc.latency_ms,
            "rate_limit": CLARI_LIMIT if sc.limited else None,
            "http_max_in_flight": sc.in_flight,
            "members": sc.members,
            "order_by": sc.env.get("SINK_ORDER_BY", "key"),
            "topic": topic,
            "records": n,
            "sink": None,
            "peer": None,
            "ceiling": None,
        }
        # A side that fails is reported as failed: the other scenarios still run.
        if sink:
            row["sink"] = attempt(
                n, run_sink, sc, bootstrap, topic, n, sink_max_s(sc, n, max_run_s), tag
            )
        if peer and sc.peer:
            row["peer"] = attempt(
                n, run_peer, sc, bootstrap, topic, n, partitions, max_run_s or peer_max_s
            )
        if sink and sc.ceiling:
            row["ceiling"] = bare_client_or_error(sc, record_bytes)
        results.append(row)
        if on_result is not None:
            on_result(row)
    return results, topics.described


# --- report ----------------------------------------------------------------------------------
def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{round(value):,}" if isinstance(value, int | float) else str(value)


def _label(row: dict[str, Any]) -> tuple[str, str, str]:
    keys_ = row["distribution"]
    if row["members"] > 1:
        keys_ += f", {row['members']} members"
    if row["http_max_in_flight"] != 32:
        keys_ += f", `HTTP_MAX_IN_FLIGHT={row['http_max_in_flight']}`"
    if row.get("order_by", "key") != "key":
        keys_ += f", `SINK_ORDER_BY={row['order_by']}`"
    limit = f"{row['rate_limit']}/s" if row["rate_limit"] else "lifted"
    return keys_, f"{row['latency_ms']} ms", limit


Figures = dict[str, Any]


def _cell(row: dict[str, Any], show: Callable[[Figures], str]) -> str:
    """``sink · peer`` (a side that did not run: ``-``; no peer in the row: the sink alone)."""
    sink, peer = row["sink"], row["peer"]
    if peer is None:
        return show(sink) if sink else "-"
    return f"{show(sink) if sink else '-'} · {show(peer)}"


def _rate(f: Figures) -> str:
    if f.get("error"):
        return "failed"
    return _n(f["records_per_s"]) + ("" if f["complete"] else "*")


def _flight(f: Figures) -> str:
    return f"{_n(f['in_flight_mean'], 1)}/{_n(f['in_flight_max'])}"


def _cpu(f: Figures) -> str:
    return f"{_n(f['cpu_s_per_100k'], 2)} ({_n(f['cpu_s_per_100k_run'], 2)})"


def _check(f: Figures) -> str:
    return f"{_n(f['lost'])} / {_n(f['reordered'])}"


def line(row: dict[str, Any]) -> str:
    """Console lines for a scenario's results, one a side."""

    def side(f: Figures) -> str:
        if f.get("error"):
            return f"failed: {f['error'][:300]}"
        cut = (
            f" (cut after {f['wall_s']:.0f} s at {f['delivered_in_time']:,} of {f['records']:,})"
            if f["timed_out"]
            else ""
        )
        return (
            f"{_n(f['records_per_s']):>8} rec/s{cut}  in flight {_flight(f)}  "
            f"{_n(f['records_per_call'], 1)} rec/call  429s {f['http_429']}  "
            f"max {_n(f['max_calls_in_any_second'])} calls/1s  cpu {_cpu(f)} s/100k  "
            f"rss {_n(f['peak_rss_mib'])} MiB  lost/reordered {_check(f)}  ({f['wall_s']:.0f} s)"
        )

    lines = [f"{name} {side(row[name])}" for name in ("sink", "peer") if row[name]]
    if bare := row.get("ceiling"):
        lines.append(f"bare client {_bare(bare)}")
    return "\n".join(
        f"{row['scenario'] if i == 0 else '':30} {text}" for i, text in enumerate(lines)
    )


def _bare(f: Figures) -> str:
    if f.get("error"):
        return f"failed: {f['error'][:300]}"
    return (
        f"{_n(f['records_per_s']):>8} rec/s  {f['calls_per_s']} calls/s with {f['in_flight']} "
        f"in flight, {f['call_ms_mean']} ms a call"
    )


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| keys | latency | limit | records/s | sink ÷ peer | calls in flight mean/max "
        "| records a call | 429s | CPU s / 100k (run only) | peak RSS MiB | lost / reordered |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for row in results:
        s, p = row["sink"], row["peer"]
        ratio = (
            f"{s['records_per_s'] / p['records_per_s']:.1f}x"
            if s and p and s["records_per_s"] and p["records_per_s"]
            else "-"
        )
        cells = [
            *_label(row),
            _cell(row, _rate),
            ratio,
            _cell(row, _flight),
            _cell(row, lambda f: _n(f["records_per_call"], 1)),
            _cell(row, lambda f: _n(f["http_429"])),
            _cell(row, _cpu),
            _cell(row, lambda f: _n(f["peak_rss_mib"])),
            _cell(row, _check),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def targets(results: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """The issue's targets, judged on this run's figures: (target, measured, met)."""
    by = {r["scenario"]: r for r in results}
    out: list[tuple[str, str, bool | None]] = []

    def rate(name: str, side: str = "sink") -> float | None:
        row = by.get(name)
        f = row and row[side]
        return f["records_per_s"] if f else None

    r8, peer50 = rate("uniform200-50ms-inflight8"), rate("uniform200-50ms-lifted", "peer")
    if r8 is not None:
        met = r8 >= 14_400 and (peer50 is None or r8 >= 2 * peer50)
        vs = f", {r8 / peer50:.1f}x the peer ({peer50:,.0f})" if peer50 else ""
        bare = by["uniform200-50ms-inflight8"].get("ceiling")
        if bare and not bare.get("error"):
            # Read against what the machine allows any client (bench/ceiling.py).
            vs += (
                f"; a bare client with 8 in flight reaches {bare['records_per_s']:,} here "
                f"({bare['call_ms_mean']} ms a call): the sink {r8 / bare['records_per_s']:.0%}"
                " of it"
            )
        goal = "200 keys, 50 ms, lifted, 8 in flight: >= 14,400 rec/s and >= 2x the peer"
        out.append((goal, f"{r8:,.0f}{vs}", met))
    for dist in keys.DISTRIBUTIONS:
        r = rate(f"{dist}-200ms-limit{CLARI_LIMIT}")
        if r is not None:
            goal = f"{dist}, 200 ms, 100 calls/s, defaults: >= 9,000 rec/s"
            out.append((goal, f"{r:,.0f}", r >= 9_000))
    for latency in LATENCIES:
        for label in ("lifted", f"limit{CLARI_LIMIT}"):
            hot, uni = rate(f"hot20-{latency}ms-{label}"), rate(f"uniform200-{latency}ms-{label}")
            if hot is not None and uni:
                goal = f"hot key, {latency} ms, {label}: >= 80 % of uniform200"
                measured = f"{hot / uni:.0%} ({hot:,.0f} of {uni:,.0f})"
                out.append((goal, measured, hot >= 0.8 * uni))
            by_id = rate(f"hot20-{latency}ms-{label}-order-id")
            if by_id is not None and uni:
                goal = f"hot key, {latency} ms, {label}, SINK_ORDER_BY=id: >= 80 % of uniform200"
                measured = f"{by_id / uni:.0%} ({by_id:,.0f} of {uni:,.0f})"
                out.append((goal, measured, by_id >= 0.8 * uni))
    two = by.get("uniform200-200ms-two-members")
    if two is not None and two["sink"] is not None:
        s = two["sink"]
        busiest, per_s = s["max_calls_in_any_second"], s["ok_calls_per_s"]
        met = busiest is not None and busiest <= CLARI_LIMIT and (per_s or 0) >= 0.9 * CLARI_LIMIT
        goal = "two members, one token, 200 ms: <= 100 calls in every second, >= 90 % used"
        measured = (
            f"busiest second {busiest} calls, {per_s} calls/s answered 200, {s['http_429']} 429s"
            f"; median second {_n(median_second(s))} calls (the run without its rebalance "
            "and its tail)"
        )
        out.append((goal, measured, met))
    sinks = [r["sink"] for r in results if r["sink"]]
    if sinks:
        cpu = max(f["cpu_s_per_100k"] or 0 for f in sinks)
        rss = max(f["peak_rss_mib"] or 0 for f in sinks)
        goal = "CPU and memory no worse than before (2.0-4.0 CPU s / 100k, 120 MiB)"
        measured = f"worst {cpu:.2f} CPU s / 100k, {rss:.0f} MiB peak RSS"
        out.append((goal, measured, cpu <= 4.0 and rss <= 120))
        lost = sum(f["lost"] or 0 for f in sinks)
        # Per key: runs ordered by id may reorder a key's records, by design.
        reordered = sum(
            r["sink"]["reordered"] or 0
            for r in results
            if r["sink"] and r.get("order_by", "key") == "key"
        )
        cut = sum(1 for f in sinks if not f["complete"])
        measured = f"{lost} lost, {reordered} reordered" + (f", {cut} incomplete" if cut else "")
        out.append(("every run: 0 lost, 0 reordered", measured, not (lost or reordered or cut)))
    return out


def targets_table(rows: list[tuple[str, str, bool | None]]) -> str:
    marks = {True: "met", False: "**not met**", None: ""}
    body = "".join(f"| {t} | {m} | {marks[ok]} |\n" for t, m, ok in rows)
    return "| target | measured | |\n|---|---|---|\n" + body


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter

    names = [r["scenario"] for r in results]
    y = list(range(len(results)))
    height = 0.4
    fig, axes = plt.subplots(1, 3, figsize=(15, 1.2 + 0.42 * len(results)), sharey=True)
    ax1, ax2, ax3 = axes
    sides = (("sink", "#3b7dd8", -height / 2), ("peer", "#d8873b", height / 2))
    for side, color, shift in sides:
        rows = [(i, r[side]) for i, r in enumerate(results) if r[side] is not None]
        if not rows:
            continue
        label = "clari-sink" if side == "sink" else "Kafka Connect + Aiven HTTP sink"
        ys = [i + shift for i, _ in rows]
        rates = [f["records_per_s"] or 0 for _, f in rows]
        ax1.barh(ys, rates, height, color=color, label=label)
        for yy, rate in zip(ys, rates, strict=True):
            ax1.text(rate, yy, f" {rate:,}", va="center", fontsize=7)
        run = [f["cpu_s_per_100k_run"] or 0 for _, f in rows]
        start = [(f["cpu_s_per_100k"] or 0) - (f["cpu_s_per_100k_run"] or 0) for _, f in rows]
        ax2.barh(ys, run, height, color=color)
        ax2.barh(ys, start, height, left=run, color=color, alpha=0.35, hatch="//")
        ax3.barh(ys, [f["peak_rss_mib"] or 0 for _, f in rows], height, color=color)
    ax1.set_xscale("log")
    ax1.xaxis.set_major_locator(FixedLocator([1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6]))
    ax1.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}k")
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.set_xlabel("records/s received by the API (log scale, higher is better)")
    ax1.set_title("Throughput, same topic and emulator settings")
    fig.legend(*ax1.get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=9)
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    rates = [r[s]["records_per_s"] or 1 for r in results for s in ("sink", "peer") if r[s]]
    ax1.set_xlim(min(rates) / 2, max(rates) * 4)  # room for the labels
    ax2.set_xlabel("CPU s per 100k records (hatched: start-up)")
    ax2.set_title("CPU cost (lower is better)")
    ax3.set_xlabel("peak RSS, MiB")
    ax3.set_title("Memory (lower is better)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # the legend's room
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_report(results: list[dict[str, Any]], path: Path, with_chart: bool) -> tuple[str, str]:
    """Write table.md (and chart.png) next to ``path``; return (table, targets) as text."""
    text = table(results)
    goals = targets_table(targets(results))
    path.with_name("table.md").write_text(
        "# Benchmark: clari-sink and the peer, side by side\n\n"
        "Each cell: sink · peer. `*` marks a run cut at its time limit (rate so far). "
        "CPU in parentheses leaves out start-up (before the first API call).\n\n"
        + text
        + "\n## Against the targets of issue 12\n\n"
        + goals
    )
    if with_chart:
        chart(results, path.with_name("chart.png"))
    return text, goals


RESULTS_DIR = RESULTS

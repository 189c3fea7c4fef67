"""The benchmark: clari-sink and the peer on realistic keys, side by side.

    python -m bench.run                     # the full matrix with the peer (about 35 minutes)
    python -m bench.run --quick             # five scenarios, fewer records (about 3 minutes)
    python -m bench.run --only 'hot20-*,uniform200-50ms-inflight8' [--no-peer] [--records N]
    python -m bench.run --plan              # the scenarios, their records and expected times

Starts the local broker (unless KAFKA_BOOTSTRAP_SERVERS names one), loads one topic of
about 1.5 KB records over 6 partitions per key distribution (bench/keys.py: uniform200,
hot20, distinct), and runs each scenario of bench/matrix.py: the sink with its defaults,
then Kafka Connect with Aiven's HTTP sink (bench/peer.py) on the same topic, each against
a fresh emulator answering after 0, 50 or 200 ms, with Clari's 100 calls/s per token or
the limit lifted. Results go to bench/results/latest.json, table.md and chart.png.

The old benchmark's scenarios (distinct keys, 1 KB records, limits lifted, 100 ms linger)
run when named with --only: baseline, upload-0ms, upload-50ms, bulk, bulk-2-members,
live-10k, live-half-max, api-down-60s; their results go to latest-legacy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from bench import ceiling, keys, matrix
from bench.procs import RESULTS, Emulator, Sink, sink_env
from devkit import kafka_local
from devkit.sample_data import crm_record

LEGACY = (
    "baseline",
    "upload-0ms",
    "upload-50ms",
    "bulk",
    "bulk-2-members",
    "live-10k",
    "live-half-max",
    "api-down-60s",
)
PAD = "Notes from the quarterly business review: renewal risk discussed, champion engaged. "


# --- data ------------------------------------------------------------------------------
def record(i: int, size: int) -> bytes:
    rec = crm_record("account", i) | {"producedAt": int(time.time() * 1000)}
    body = orjson.dumps(rec)
    pad = max(0, size - len(body) - 12)
    rec["notes"] = (PAD * (pad // len(PAD) + 1))[:pad]
    return orjson.dumps(rec)


def load(
    bootstrap: str, topic: str, start: int, n: int, size: int, rate: float | None = None
) -> None:
    """Produce records ``start..start+n``; at ``rate`` per second when given."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.kbytes": 512_000,
        }
    )
    began = time.monotonic()
    for k, i in enumerate(range(start, start + n)):
        while True:
            try:
                producer.produce(topic, key=f"ACC{i:012d}".encode(), value=record(i, size))
                break
            except BufferError:
                producer.poll(0.05)
        if k % 500 == 499:
            producer.poll(0)
            if rate is not None:
                ahead = began + (k + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    assert producer.flush(120) == 0


create_topic = matrix.create_topic


# --- the old benchmark's scenarios ------------------------------------------------------
# The bulk runs: files of up to 20,000 records and 9 MB (Clari takes 10 MB), job status
# polled from 50 ms (the emulator's jobs take 150 ms), 16 jobs in progress at once.
BULK: dict[str, Any] = {
    "CLARI_TEMPLATE": "ingest-bulk-entities",
    "BATCH_SIZE": 20_000,
    "BATCH_MAX_BYTES": 9_000_000,
    "JOB_POLL_INITIAL_MS": 50,
    "JOB_POLL_MAX_MS": 200,
    "HTTP_MAX_IN_FLIGHT": 16,
}


def result(
    name: str,
    n: int,
    seconds: float,
    cpu: float | None,
    rss: float | None,
    latency: dict[str, Any] | None,
    counted: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One scenario's figures; ``counted`` records (default ``n``) went by in ``seconds``."""
    return {
        "scenario": name,
        "records": n,
        "seconds": round(seconds, 2),
        "records_per_s": round((n if counted is None else counted) / seconds)
        if seconds > 0
        else None,
        "cpu_s_per_100k": round(cpu / n * 100_000, 2) if cpu is not None else None,
        "latency_ms": latency,
        "peak_rss_mib": round(rss, 1) if rss else None,
        **extra,
    }


def run_baseline(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    before = os.times()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.baseline",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--records",
            str(n),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    after = os.times()
    out = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return result("baseline", n, out["last"] - out["first"], cpu, None, None)


def run_backlog(
    name: str,
    bootstrap: str,
    topic: str,
    n: int,
    latency_ms: float = 0,
    down_s: float = 0,
    members: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    emu = Emulator(latency_ms)
    try:
        if down_s:
            emu.faults(down_for_s=down_s)
        env = sink_env(bootstrap, topic, emu, name, **extra)
        # More than one member: consumer-group members sharing the partitions, as pods
        # of one Deployment would (each drains its own partitions, then leaves).
        sinks = [Sink(env, until_drained=True, log=f"sink-{i}.log") for i in range(members)]
        finished = [sink.finish() for sink in sinks]
        cpu = sum(c for c, _ in finished)
        rss = max(r for _, r in finished)  # per member (per pod)
        stats = emu.stats()
        accepted = stats["counters"].get("records_accepted", 0)
        assert accepted >= n, f"{name}: {accepted} of {n} records reached the emulator"
        # The rate the API received records at: from the first call that handed records
        # over to the last, counting those after the first (consumed before the window
        # opened). A bulk file counts when its job is made: the job's turnaround at Clari
        # (150 ms here, minutes at Clari) is the API's latency, not the sink's throughput.
        # Also from the first call's arrival to the last record accepted, which for bulk
        # holds the last job's turnaround, and for api-down-60s the outage.
        accepted_s = stats["lastAcceptAt"] - stats["firstRequestAt"]
        seconds, counted = accepted_s, n  # one call carried them all: no window between calls
        if stats["lastReceiptAt"] > stats["firstReceiptAt"]:
            seconds = stats["lastReceiptAt"] - stats["firstReceiptAt"]
            counted = n - stats["firstReceiptRecords"]
        return result(
            name,
            n,
            seconds,
            cpu,
            rss,
            stats["latencyMs"],
            counted=counted,
            accepted_per_s=round(n / accepted_s) if accepted_s > 0 else None,
            api_calls=stats["counters"].get("requests", 0),
            members=members,
        )
    finally:
        emu.stop()


def run_live(
    name: str, bootstrap: str, partitions: int, n: int, rate: float, size: int, **extra: Any
) -> dict[str, Any]:
    topic = f"bench.live.{name}.{time.time():.0f}"
    create_topic(bootstrap, topic, partitions)
    emu = Emulator(0)
    try:
        sink = Sink(sink_env(bootstrap, topic, emu, name, **extra), until_drained=False)
        time.sleep(3)  # joined and assigned before the clock starts
        cpu0 = sink.cpu_seconds()
        t0 = time.monotonic()
        load(bootstrap, topic, 0, n, size, rate)
        deadline = time.monotonic() + 120
        while emu.stats()["counters"].get("records_accepted", 0) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: records did not all arrive")
            time.sleep(0.2)
        wall = time.monotonic() - t0
        cpu_live = sink.cpu_seconds() - cpu0
        stats = emu.stats()
        _, rss = sink.finish(stop=True)
        return result(
            name,
            n,
            wall,
            cpu_live,
            rss,
            stats["latencyMs"],
            offered_rate=round(rate),
            cores=round(cpu_live / wall, 3),
        )
    finally:
        emu.stop()


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median records/s (the lower middle of an even count), naming all."""
    ordered = sorted(runs, key=lambda r: r["records_per_s"] or 0)
    middle = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        middle["runs"] = [r["records_per_s"] for r in runs]
    return middle


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backlog = [
        r
        for r in results
        if r["scenario"] in ("baseline", "upload-0ms", "upload-50ms", "bulk", "api-down-60s")
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [r["scenario"] for r in backlog]
    ax1.barh(names, [r["records_per_s"] or 0 for r in backlog], color="#3b7dd8")
    ax1.set_xlim(0, max(r["records_per_s"] or 0 for r in backlog) * 1.2)  # room for labels
    ax1.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:,.0f}k")
    ax1.set_xlabel("records/s (higher is better)")
    ax1.set_title("Throughput on a 1 KB-record backlog")
    ax1.invert_yaxis()
    for i, r in enumerate(backlog):
        rate = r["records_per_s"] or 0
        ax1.text(rate, i, f" {rate:,}", va="center", fontsize=8)
    ax2.barh(names, [r["cpu_s_per_100k"] for r in backlog], color="#d8873b")
    ax2.set_xlabel("CPU seconds per 100,000 records (lower is better)")
    ax2.set_title("CPU cost")
    ax2.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def legacy(args: argparse.Namespace, names: list[str], bootstrap: str) -> list[dict[str, Any]]:
    """The old benchmark (distinct keys, limits lifted), for the scenarios in ``names``."""
    n = args.records or 1_000_000
    size = args.record_bytes or 1_000
    results: list[dict[str, Any]] = []

    def show(res: dict[str, Any]) -> None:
        lat = res["latency_ms"] or {}
        print(
            f"{res['scenario']:14} {res['records_per_s'] or 0:>9,} rec/s  "
            f"cpu {res['cpu_s_per_100k'] or 0:>6} s/100k  p50 {lat.get('p50')} "
            f"p99 {lat.get('p99')} p99.9 {lat.get('p99.9')} ms  rss {res['peak_rss_mib']} MiB"
            + (f"  cores {res['cores']}" if "cores" in res else "")
            + (
                f"  ({res['accepted_per_s']:,}/s to the last job's end)"
                if res["scenario"].startswith("bulk") and res.get("accepted_per_s")
                else ""
            )
            + (f"  (median of {res['runs']})" if "runs" in res else ""),
            flush=True,
        )

    def report(res: dict[str, Any]) -> None:
        results.append(res)
        show(res)

    topic = f"bench.backlog.{time.time():.0f}"
    create_topic(bootstrap, topic, args.partitions)
    t0 = time.monotonic()
    load(bootstrap, topic, 0, n, size)
    print(f"loaded {n:,} records of ~{size} B in {time.monotonic() - t0:.1f}s", flush=True)
    baselines = [run_baseline(bootstrap, topic, n)]
    show(baselines[0])
    results.append(baselines[0])  # the median of all its runs once they are in

    def want(name: str) -> bool:
        return name in names

    if want("upload-0ms"):
        report(run_backlog("upload-0ms", bootstrap, topic, n))
    if want("upload-50ms"):
        report(run_backlog("upload-50ms", bootstrap, topic, n, latency_ms=50))
    if want("bulk"):
        bulks = []
        for i in range(max(1, args.repeat)):
            if i:  # alternately, so that a slow spell of the VM weighs on both
                baselines.append(run_baseline(bootstrap, topic, n))
                show(baselines[-1])
            bulks.append(
                run_backlog(
                    "bulk",
                    bootstrap,
                    topic,
                    n,
                    **BULK,
                    SINK_MAX_BUFFERED_BYTES=args.bulk_buffer_mib * 1024 * 1024,
                )
            )
            show(bulks[-1])
        results.append(median(bulks))
        results[0] = median(baselines)
        if len(bulks) > 1:
            show(results[0])
            show(results[-1])
    if want("bulk-2-members"):
        report(run_backlog("bulk-2-members", bootstrap, topic, n, members=2, **BULK))
    live_n = int(10_000 * args.live_seconds)
    if want("live-10k"):
        report(run_live("live-10k", bootstrap, args.partitions, live_n, 10_000, size))
    if want("live-half-max"):
        upload = [r for r in results if r["scenario"] == "upload-0ms"]
        half = upload[0]["records_per_s"] / 2 if upload else 10_000
        report(
            run_live(
                "live-half-max",
                bootstrap,
                args.partitions,
                int(half * args.live_seconds),
                half,
                size,
            )
        )
    if want("api-down-60s"):
        report(run_backlog("api-down-60s", bootstrap, topic, n, down_s=60))
    base = results[0]["records_per_s"]
    for res in results:
        rate = res["records_per_s"]
        res["ratio_to_baseline"] = round(rate / base, 3) if base and rate else None
    out = args.out.with_name("latest-legacy.json")
    out.write_text(
        json.dumps(
            {
                "records": n,
                "record_bytes": size,
                "partitions": args.partitions,
                "machine_cores": os.cpu_count(),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"results: {out}")
    if not args.no_chart:
        chart(results, out.with_name("chart-legacy.png"))
    return results


# --- the plan ------------------------------------------------------------------------------
# Start-up and wind-down of one run on this machine (2 cores): the sink's imports, group
# join and drain check; the JVM's and Connect's boot (6-10 s, 9 CPU s), its six consumers'
# join, its stop. Measured in tiny runs, with other work on the machine.
SINK_OVERHEAD_S = 9
PEER_OVERHEAD_S = 12
LOAD_S_PER_RECORD = 30e-6
# The peer's pace, measured on 30,000 records of uniform200: one call in flight per task
# takes the latency and about 40 ms more; all tasks together reach about 6,000 records/s
# on this machine; against 100 calls/s, its 429s (3 s of backoff each) hold it near 3,500.
PEER_CALL_OVERHEAD_S = 0.040
PEER_MACHINE_RATE = 6_000.0
PEER_LIMITED_RATE = 3_500.0


def peer_rate(sc: matrix.Scenario, n: int, partitions: int) -> float:
    """What the peer should do (records/s): the busiest partition's task sets the pace."""
    per_task = matrix.BATCH / (sc.latency_ms / 1000 + PEER_CALL_OVERHEAD_S)
    counts = keys.partition_counts(sc.distribution, n, partitions)
    rate = min(per_task * n / max(counts), PEER_MACHINE_RATE)
    if sc.limited and partitions * per_task / matrix.BATCH > matrix.CLARI_LIMIT:
        rate = min(rate, PEER_LIMITED_RATE)
    return rate


def plan(scenarios: list[matrix.Scenario], args: argparse.Namespace) -> tuple[list[str], float]:
    lines, total, loaded = [], 30.0, set()  # the broker's start
    for sc in scenarios:
        n = args.records or sc.records(args.quick)
        if (sc.distribution, n) not in loaded:
            loaded.add((sc.distribution, n))
            total += 5 + n * LOAD_S_PER_RECORD
        sink_s = 0 if args.no_sink else SINK_OVERHEAD_S + n / sc.finish_rate()
        if sc.ceiling and not args.no_sink:
            sink_s += ceiling.SECONDS + 3  # the bare client, and its emulator's start
        peer_s = PEER_OVERHEAD_S + n / peer_rate(sc, n, args.partitions)
        with_peer = sc.peer and not args.no_peer
        total += sink_s + (peer_s if with_peer else 0)
        lines.append(
            f"{sc.name:30} {n:>8,} records  sink ~{sink_s:4.0f}s"
            + (f"  peer ~{peer_s:4.0f}s" if with_peer else "")
        )
    return lines, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run only these scenarios (names or shell patterns, comma- or space-separated; "
        "see --plan), or the old benchmark's: " + ", ".join(LEGACY),
    )
    parser.add_argument("--quick", action="store_true", help="five scenarios, fewer records")
    parser.add_argument("--records", type=int, default=None, help="records in every scenario")
    parser.add_argument("--no-peer", action="store_true", help="leave the peer out")
    parser.add_argument("--no-sink", action="store_true", help="run the peer only")
    parser.add_argument("--plan", action="store_true", help="print the scenarios and stop")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--record-bytes", type=int, default=None, help="default 1500 (old: 1000)")
    parser.add_argument(
        "--max-run-s",
        type=float,
        default=None,
        help="time limit of each run (default: the sink 5x its expected time, at least 90 s; "
        "the peer --peer-max-s); a run cut short reports its rate so far",
    )
    parser.add_argument("--peer-max-s", type=float, default=300.0)
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument(
        "--report",
        action="store_true",
        help="only make table.md and chart.png again from the results in --out",
    )
    old = parser.add_argument_group("the old benchmark's scenarios")
    old.add_argument("--live-seconds", type=float, default=20.0)
    old.add_argument("--bulk-buffer-mib", type=int, default=32)
    old.add_argument("--repeat", type=int, default=3, help="baseline and bulk runs (medians)")
    args = parser.parse_args(argv)

    if args.report:
        results = json.loads(args.out.read_text())["results"]
        text, goals = matrix.save_report(results, args.out, not args.no_chart)
        print(f"{text}\n{goals}")
        return 0
    only = [n for item in args.only or [] for n in item.split(",") if n] or None
    legacy_names = [n for n in only or [] if n in LEGACY]
    patterns = [n for n in only or [] if n not in LEGACY]
    scenarios = matrix.select(patterns, args.quick) if patterns or only is None else []
    if only and not scenarios and not legacy_names:
        parser.error(f"no scenario matches {only}; see --plan")
    lines, total = plan(scenarios, args)
    if args.plan:
        print("\n".join(lines))
        print(f"about {total / 60:.0f} minutes on 2 cores")
        return 0
    if scenarios:
        print(f"{len(scenarios)} scenarios, about {total / 60:.0f} minutes", flush=True)
    RESULTS.mkdir(exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = kafka_local.start(Path(".local/bench-kafka"))
        bootstrap = broker.bootstrap
    began = time.monotonic()
    try:
        if legacy_names:
            legacy(args, legacy_names, bootstrap)
        if not scenarios:
            return 0
        if not args.no_peer and any(sc.peer for sc in scenarios):
            from bench.peer import fetch_jars, plugin_dir

            fetch_jars()
            plugin_dir()

        def show(row: dict[str, Any]) -> None:
            print(matrix.line(row), flush=True)

        results, topics = matrix.run(
            scenarios,
            bootstrap,
            partitions=args.partitions,
            record_bytes=args.record_bytes or 1_500,
            quick=args.quick,
            records=args.records,
            sink=not args.no_sink,
            peer=not args.no_peer,
            max_run_s=args.max_run_s,
            peer_max_s=args.peer_max_s,
            on_result=show,
        )
        args.out.write_text(
            json.dumps(
                {
                    "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": "python -m bench.run "
                    + " ".join(sys.argv[1:] if argv is None else argv),
                    "minutes": round((time.monotonic() - began) / 60, 1),
                    "machine_cores": os.cpu_count(),
                    "partitions": args.partitions,
                    "record_bytes": args.record_bytes or 1_500,
                    "topics": topics,
                    "results": results,
                },
                indent=2,
            )
        )
        text, goals = matrix.save_report(results, args.out, not args.no_chart)
        print(f"\n{text}\n{goals}")
        print(f"results: {args.out}, {args.out.with_name('table.md')}"
              + ("" if args.no_chart else f", {args.out.with_name('chart.png')}"))  # fmt: skip
        print(f"took {(time.monotonic() - began) / 60:.1f} minutes")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

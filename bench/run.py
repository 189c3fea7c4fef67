"""Throughput, latency, CPU and memory of the sink against the emulator, on one data set.

    python -m bench.run [--records 1000000] [--quick] [--no-chart]

Starts the local broker (unless KAFKA_BOOTSTRAP_SERVERS names one), loads N records of
about 1 KB over 6 partitions, then runs one after the other:

  baseline       a bare confluent-kafka consumer: consume, decode JSON, commit
  upload-0ms     the sink, Upload Entity Data (100 records a call), API answers at once
  upload-50ms    the same with 50 ms added to every API call
  bulk           the sink, Ingest Bulk Entities (files up to 10 MB)
  live-10k       records produced at 10,000/s while the sink runs: CPU per core
  live-half-max  records produced at half of upload-0ms's rate, 100 ms linger: latency
  api-down-60s   the whole backlog while the API is down for 60 s, then delivered: memory

Rate limits (the emulator's 100/s and the sink's) are raised out of the way: this
measures the sink, not Clari's quota. Results go to bench/results/latest.json and a
chart to bench/results/chart.png.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devkit import kafka_local
from devkit.sample_data import crm_record

RESULTS = Path(__file__).resolve().parent / "results"
TICKS = os.sysconf("SC_CLK_TCK")
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


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result(30)


# --- processes -------------------------------------------------------------------------
def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


class Emulator:
    def __init__(self, latency_ms: float = 0) -> None:
        self.port = kafka_local.free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sink.cli",
                "emulator",
                "--port",
                str(self.port),
                "--no-store",
                "--rate-limit",
                "1000000",
                "--latency-ms",
                str(latency_ms),
                "--job-queued-s",
                "0.05",
                "--job-running-s",
                "0.1",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.stats()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = _get(f"http://127.0.0.1:{self.port}/_emulator/stats")
        return result

    def faults(self, **values: Any) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/_emulator/faults",
            data=orjson.dumps(values),
            method="POST",
        )
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Sink:
    """``clari-sink run`` as a child; ``finish`` reaps it with its CPU time and peak RSS."""

    def __init__(self, env: dict[str, str], until_drained: bool, log: str = "sink.log") -> None:
        args = [sys.executable, "-m", "sink.cli", "run"] + (["--until-drained"] * until_drained)
        self.log_path = RESULTS / log
        self.log = self.log_path.open("wb")  # closed in finish
        self.proc = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.peak_rss_mib = 0.0
        self._watch = threading.Thread(target=self._sample, daemon=True)
        self._watch.start()

    def _sample(self) -> None:
        # VmHWM is the peak; sampled because the process is gone when wait4 reports.
        status = Path(f"/proc/{self.proc.pid}/status")
        while self.proc.returncode is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss_mib = max(self.peak_rss_mib, int(line.split()[1]) / 1024)
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.25)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def finish(self, stop: bool = False, timeout: float = 1_800) -> tuple[float, float]:
        """(cpu seconds, peak RSS MiB) of the whole run."""
        if stop:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError("the sink did not finish")
            time.sleep(0.1)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.log.close()
        if self.proc.returncode != 0:
            raise RuntimeError(f"sink exited {self.proc.returncode}; see {self.log_path}")
        self.peak_rss_mib = max(self.peak_rss_mib, usage.ru_maxrss / 1024)
        return usage.ru_utime + usage.ru_stime, self.peak_rss_mib


def sink_env(bootstrap: str, topic: str, emu: Emulator, name: str, **extra: Any) -> dict[str, str]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"bench-{name}-{time.time():.0f}",
        "CLARI_BASE_URL": f"http://127.0.0.1:{emu.port}/v2",
        "CLARI_ENTITY_TYPE": "Account",
        "CLARI_API_TOKEN": "demo-token",
        "CLARI_PARTNER_KEY": "demo-partner",
        "HTTP_RATE_LIMIT": "1000000",
        "RESPONSE_TOPIC": f"bench.responses.{name}",
        "DLQ_TOPIC": f"bench.dlq.{name}",
        "ADMIN_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "BATCH_LINGER_MS": "100",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


# --- scenarios ---------------------------------------------------------------------------
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--record-bytes", type=int, default=1_000)
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="skip the 60 s outage run")
    parser.add_argument(
        "--bulk-buffer-mib",
        type=int,
        default=32,
        help="SINK_MAX_BUFFERED_BYTES for the bulk run (default: the sink's)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="run the baseline and bulk this many times, alternately, and keep the medians "
        "(runs on a shared VM vary by 10%%)",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run only these scenarios (the baseline always runs)",
    )
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    n = args.records
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = kafka_local.start(Path(".local/bench-kafka"))
        bootstrap = broker.bootstrap
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

    try:
        topic = f"bench.backlog.{time.time():.0f}"
        create_topic(bootstrap, topic, args.partitions)
        t0 = time.monotonic()
        load(bootstrap, topic, 0, n, args.record_bytes)
        print(
            f"loaded {n:,} records of ~{args.record_bytes} B in {time.monotonic() - t0:.1f}s",
            flush=True,
        )
        baselines = [run_baseline(bootstrap, topic, n)]
        show(baselines[0])
        results.append(baselines[0])  # the median of all its runs once they are in

        def want(name: str) -> bool:
            return args.only is None or name in args.only

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
        if args.only and "bulk-2-members" in args.only:  # on request: see bench/README.md
            report(run_backlog("bulk-2-members", bootstrap, topic, n, members=2, **BULK))
        live_n = int(10_000 * args.live_seconds)
        if want("live-10k"):
            report(
                run_live("live-10k", bootstrap, args.partitions, live_n, 10_000, args.record_bytes)
            )
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
                    args.record_bytes,
                )
            )
        if not args.quick and want("api-down-60s"):
            report(run_backlog("api-down-60s", bootstrap, topic, n, down_s=60))
        base = results[0]["records_per_s"]
        for res in results:
            rate = res["records_per_s"]
            res["ratio_to_baseline"] = round(rate / base, 3) if base and rate else None
        args.out.write_text(
            json.dumps(
                {
                    "records": n,
                    "record_bytes": args.record_bytes,
                    "partitions": args.partitions,
                    "machine_cores": os.cpu_count(),
                    "results": results,
                },
                indent=2,
            )
        )
        print(f"results: {args.out}")
        if not args.no_chart:
            chart(results, args.out.with_name("chart.png"))
            print(f"chart: {args.out.with_name('chart.png')}")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

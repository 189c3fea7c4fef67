"""The benchmark keeps working: run it tiny (its figures are not asserted, its checks are)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bench import ceiling, keys, matrix
from bench.run import main as bench_main


def test_keys_land_where_kafkas_default_partitioner_puts_them() -> None:
    # Utils.murmur2 of the Java clients, as their tests give it.
    assert keys.murmur2(b"21") == -973932308
    assert keys.murmur2(b"foobar") == -790332482
    assert keys.murmur2(b"a-little-bit-long-string") == -985981536
    assert keys.murmur2(b"a-little-bit-longer-string") == -1486304829
    assert keys.murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert keys.murmur2(b"abc") == 479470107
    # The hot key's partition holds its 20 % and its share of the rest.
    counts = keys.partition_counts("hot20", 10_000, 6)
    assert sum(counts) == 10_000 and max(counts) > 0.3 * 10_000


def test_key_distributions_are_what_they_claim() -> None:
    n = 20_000
    for dist in keys.DISTRIBUTIONS:
        counts = Counter(keys.keys(dist, n))
        if dist == "distinct":
            assert len(counts) == n
        else:
            assert len(counts) == keys.KEYS
        if dist == "hot20":
            assert 0.19 < counts["account-000"] / n < 0.21
            assert max(c for k, c in counts.items() if k != "account-000") < 0.01 * n
    records = [orjson.loads(v) for _, v in keys.keyed_records("hot20", 500)]
    assert len({r["id"] for r in records}) == 500  # Clari refuses an id twice in one call
    assert all(1_400 <= len(orjson.dumps(r)) <= 1_600 for r in records)
    assert all(type(r["createdAt"]) is int and type(r["updatedAt"]) is int for r in records)
    seqs: dict[str, list[int]] = {}
    for key, value in keys.keyed_records("uniform200", 2_000):
        rec = orjson.loads(value)
        assert rec["key"] == key
        seqs.setdefault(key, []).append(rec["seq"])
    assert all(s == list(range(len(s))) for s in seqs.values())


def test_the_full_matrix_fits_its_time_budget(capsys: pytest.CaptureFixture[str]) -> None:
    names = [s.name for s in matrix.matrix()]
    # Three distributions x three latencies x limit or not, 8 in flight, two members, and
    # the hot key ordered by id at two settings.
    assert len(names) == len(set(names)) == 3 * 3 * 2 + 2 + 2
    assert set(matrix.QUICK) <= set(names)
    assert [s.name for s in matrix.select(["hot20-*-lifted"], quick=False)] == [
        "hot20-0ms-lifted", "hot20-50ms-lifted", "hot20-200ms-lifted",
    ]  # fmt: skip
    assert {s.env.get("SINK_ORDER_BY") for s in matrix.select(["*-order-id"], False)} == {"id"}
    assert bench_main(["--plan"]) == 0
    minutes = int(capsys.readouterr().out.rsplit("about ", 1)[1].split()[0])
    assert 20 <= minutes <= 40


def test_the_bare_client_keeps_its_calls_in_flight_and_never_beats_the_latency() -> None:
    # The ceiling the 8-in-flight target is read against: 4 calls at a time for 1.5 s
    # against an emulator answering after 50 ms can make at most 4 / 0.05 = 80 calls/s,
    # and one call at a time at most 20.
    bare = ceiling.bare_client(latency_ms=50, in_flight=4, record_bytes=500, seconds=1.5)
    assert bare["call_ms_mean"] >= 50
    assert 25 <= bare["calls_per_s"] <= 80
    assert bare["records_per_s"] == pytest.approx(bare["calls_per_s"] * 100, abs=5)
    assert [s.name for s in matrix.matrix() if s.ceiling] == ["uniform200-50ms-inflight8"]


@pytest.mark.integration
def test_benchmark_runs_sink_and_peer_end_to_end(kafka: str, tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    chart = importlib.util.find_spec("matplotlib") is not None  # the bench extra
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--records", "1000", "--out", str(out),
         "--only", "uniform200-50ms-lifted,uniform200-200ms-two-members"]
        + ([] if chart else ["--no-chart"]),
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    (topic,) = report["topics"].values()  # both scenarios read the one uniform200 topic
    assert topic["as_kafka_default_partitioner"] and sum(topic["records_per_partition"]) == 1000
    results = {r["scenario"]: r for r in report["results"]}
    assert set(results) == {"uniform200-50ms-lifted", "uniform200-200ms-two-members"}
    one, two = results["uniform200-50ms-lifted"], results["uniform200-200ms-two-members"]
    assert two["peer"] is None and two["members"] == 2 and two["rate_limit"] == 100
    for side in (one["sink"], one["peer"], two["sink"]):
        assert side["complete"] and side["delivered"] == 1000
        assert side["lost"] == 0 and side["duplicates"] == 0 and side["reordered"] == 0
        assert side["records_per_s"] > 0 and side["calls"] >= 10  # at most 100 records a call
        assert side["in_flight_max"] >= 1 and side["in_flight_mean"] > 0
        # CPU is counted in 10 ms ticks: a run of 1,000 records may show none of its own.
        assert side["cpu_s_per_100k"] > 0 and side["cpu_s_per_100k_run"] >= 0
        assert side["peak_rss_mib"] > 0 and side["max_calls_in_any_second"] >= 1
    assert one["peer"]["tasks"] == {"RUNNING": 6}  # one per partition
    table = out.with_name("table.md").read_text()
    assert "| uniform200 | 50 ms | lifted |" in table and "Against the targets" in table
    assert out.with_name("chart.png").exists() == chart


@pytest.mark.integration
def test_the_old_scenarios_still_run_when_named(kafka: str, tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--records", "2000", "--no-chart", "--out", str(out),
         "--only", "baseline", "upload-0ms"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not out.exists()  # no matrix scenario was named
    legacy = json.loads(out.with_name("latest-legacy.json").read_text())["results"]
    assert [r["scenario"] for r in legacy] == ["baseline", "upload-0ms"]
    assert all(r["records_per_s"] > 0 for r in legacy)
    assert legacy[1]["api_calls"] >= 20 and legacy[1]["cpu_s_per_100k"] > 0

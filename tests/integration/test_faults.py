"""The fault suite: every scenario sends records with unique ids and checks what arrived.

Each scenario adds a row (sent, lost, duplicated, reordered) to the report printed at
the end of the run and written to .local/fault-suite.json.
"""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from devkit.kafka_local import Broker, free_port
from tests.delivery_check import Feed, check, ids, keyed
from tests.support import (
    Emulator,
    SinkProcess,
    all_committed,
    committed,
    consume_all,
    create_topic,
    headers_of,
    produce,
    sink_env,
    unique,
    wait_all_committed,
    wait_until,
)

pytestmark = pytest.mark.integration


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def admin_get(port: int, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        body = err.read()
    return body.decode() if path == "/metrics" else json.loads(body)


def test_sigkill_mid_stream_and_restart(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    n = 30_000
    topic = create_topic(kafka, unique("kill"), partitions=4)
    produce(kafka, topic, (keyed(i, 1_000) for i in range(15_000)))  # a backlog to work on
    emulator.state.faults.latency_ms = 20
    env = sink_env(kafka, emulator, topic, KAFKA_SESSION_TIMEOUT_MS=6000)
    feed = Feed(kafka, topic, 15_000, rate=5_000, keys=1_000, start=15_000).begin()
    rng = random.Random(7)
    kills = 3
    for _ in range(kills):
        before = len(emulator.records())
        sink = SinkProcess(env, log_dir=logs).start()
        # Kill only once this instance is delivering: mid-stream, with calls in flight.
        wait_until(
            lambda before=before: len(emulator.records()) >= before + 1_000,
            60,
            what="this instance delivering",
        )
        time.sleep(rng.uniform(0.1, 0.6))
        sink.signal(signal.SIGKILL)
        sink.wait(10)
    feed.join()
    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end(180)
    out = check(emulator, ids(0, n))
    fault_report.append(out.row(f"1. SIGKILL x{kills} mid-stream, restart"))
    assert out.lost == 0 and out.invented == 0
    # At most what was in flight (8 calls of 100) plus what was resolved since the last
    # commit, per kill. Calls are capped at 100/s (HTTP_RATE_LIMIT) and a commit starts
    # every 200 ms (SINK_COMMIT_INTERVAL_MS) once the current poll (<= 200 ms) returns.
    per_kill = 8 * 100 + 100 * 100 * (0.2 + 0.2)
    assert out.duplicated <= kills * per_kill
    assert all_committed(kafka, env, topic)


def test_sigterm_with_requests_in_flight(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    n = 5_000
    topic = create_topic(kafka, unique("term"), partitions=3)
    produce(kafka, topic, (keyed(i, 50) for i in range(n)))
    emulator.state.faults.latency_ms = 400  # every call is in flight for a while
    env = sink_env(kafka, emulator, topic)
    sink = SinkProcess(env, log_dir=logs).start()
    wait_until(lambda: len(emulator.api_requests()) >= 3, 30, what="calls in flight")
    sink.signal(signal.SIGTERM)
    assert sink.wait(60) == 0, sink.output()
    assert "stop requested" in sink.output()
    before = len(emulator.records())
    emulator.state.faults.latency_ms = 0
    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()
    out = check(emulator, ids(0, n))
    fault_report.append(out.row("2. SIGTERM with requests in flight"))
    assert before > 0
    assert out.lost == 0 and out.duplicated == 0 and out.reordered == 0


def member_joins_and_leaves(
    kafka: str,
    emulator: Emulator,
    env: dict[str, str],
    topic: str,
    feed: Feed,
    logs: Path,
    after: int,
    b_exits: tuple[int, ...] = (0,),
) -> SinkProcess:
    """While ``feed`` produces: member A runs; once ``after`` records arrived member B
    joins, gets partitions, and stops 2 s later; A delivers the rest and is stopped once
    everything is committed. Returns A (its output tells what it did). ``b_exits``: B's
    exit statuses that are right (3: its stop gave deliveries up, by design)."""
    feed.begin()
    a = SinkProcess(env, log_dir=logs).start()
    wait_until(lambda: len(emulator.records()) > after, 30, what="first member delivering")
    b = SinkProcess(env, log_dir=logs).start()
    # Cooperative rebalancing first takes partitions from the first member, then hands
    # them over in a second round: wait for a non-empty assignment of the second member.
    wait_until(
        lambda: f"partitions assigned: {topic}" in b.output(),
        30,
        what="second member assigned partitions",
    )
    time.sleep(2)
    b.signal(signal.SIGTERM)
    assert b.wait(60) in b_exits, b.output()
    feed.join()
    wait_all_committed(kafka, env, topic, 120)
    a.signal(signal.SIGTERM)
    assert a.wait(60) == 0, a.output()
    return a


def test_member_joins_and_leaves_mid_stream(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    n = 24_000
    topic = create_topic(kafka, unique("scale"), partitions=6)
    emulator.state.faults.latency_ms = 30
    env = sink_env(kafka, emulator, topic)
    feed = Feed(kafka, topic, n, rate=4_000, keys=200)
    a = member_joins_and_leaves(kafka, emulator, env, topic, feed, logs, after=1_000)
    out = check(emulator, ids(0, n))
    fault_report.append(out.row("3. second member joins, then leaves"))
    assert "partitions revoked" in a.output()  # a rebalance really happened
    assert out.lost == 0 and out.duplicated == 0 and out.reordered == 0


def test_throttling_errors_slow_answers_and_resets(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    n = 10_000
    topic = create_topic(kafka, unique("flaky"), partitions=3)
    produce(kafka, topic, (keyed(i, 300) for i in range(n)))
    emulator.state.faults.update(
        {
            "rate_429": 0.15,
            "rate_500": 0.05,
            "rate_503": 0.05,
            "reset_rate": 0.03,
            "reset_next": 2,  # two at least: ~130 calls at 3 % saw none in 2 % of runs
            "latency_ms": 5,
            "latency_jitter_ms": 150,
        }
    )
    env = sink_env(
        kafka,
        emulator,
        topic,
        RETRY_BACKOFF_INITIAL_MS=20,
        RETRY_BACKOFF_MAX_MS=500,
        HTTP_MAX_IN_FLIGHT=16,
    )
    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end(240)
    out = check(emulator, ids(0, n))
    fault_report.append(out.row("4. bursts of 429/500/503, slow answers, resets"))
    counters = emulator.state.counters
    assert counters.get("faults_429", 0) > 0 and counters.get("faults_reset", 0) > 0
    assert out.lost == 0 and out.reordered == 0 and out.invented == 0
    retrying = [
        m
        for m in consume_all(kafka, env["RESPONSE_TOPIC"])
        if orjson.loads(m.value())["outcome"] == "retrying"
    ]
    assert retrying, "failed calls must be published too"


def test_api_down_for_60s_while_records_keep_arriving(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    n = 40_000
    topic = create_topic(kafka, unique("down"), partitions=3)
    produce(kafka, topic, (keyed(i, 500) for i in range(20_000)))
    port = free_port()
    env = sink_env(
        kafka,
        emulator,
        topic,
        ADMIN_PORT=port,
        SINK_MAX_BUFFERED_RECORDS=5_000,
        KAFKA_SESSION_TIMEOUT_MS=6_000,
        KAFKA_MAX_POLL_INTERVAL_MS=10_000,
        RETRY_BACKOFF_MAX_MS=5_000,
    )
    outage_ends = time.monotonic() + 60
    emulator.state.faults.update({"down_for_s": 60})
    sink = SinkProcess(env, log_dir=logs).start()
    feed = Feed(kafka, topic, 20_000, rate=400, keys=500, start=20_000).begin()
    peak = 0.0
    paused_seen = False
    degraded_seen = False
    assert sink.proc is not None
    # Watch until just before the outage ends: after it, records may rightly arrive.
    while time.monotonic() < outage_ends - 3:
        time.sleep(1)
        assert sink.proc.poll() is None, sink.output()
        peak = max(peak, rss_mib(sink.proc.pid))
        try:
            paused_seen |= "clari_sink_paused 1.0" in admin_get(port, "/metrics")
            degraded_seen |= "api" in admin_get(port, "/readyz").get("problems", {})
        except OSError:
            pass
    assert emulator.records() == []
    feed.join()
    try:
        wait_until(lambda: len(emulator.records()) >= n, 120, what="delivery after the outage")
    except AssertionError:
        raise AssertionError(
            f"{len(emulator.records())} of {n} delivered; "
            f"{emulator.state.counters}\n{sink.output()}"
        ) from None
    wait_all_committed(kafka, env, topic, 30)
    running_log = sink.output()
    sink.signal(signal.SIGTERM)
    assert sink.wait(60) == 0
    out = check(emulator, ids(0, n))
    row = out.row("5. API down 60 s, records arriving") | {"peak_rss_mib": round(peak, 1)}
    fault_report.append(row)
    assert paused_seen and degraded_seen
    assert "partitions revoked" not in running_log, "the member was rebalanced"
    assert peak < 256, f"peak RSS {peak:.0f} MiB"
    assert out.lost == 0 and out.duplicated == 0 and out.reordered == 0


def test_poison_and_rejected_records_are_dead_lettered(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    topic = create_topic(kafka, unique("poison"), partitions=2)
    msgs: list[tuple[bytes | None, bytes | None]] = []
    bad: dict[int, bytes] = {}
    for i in range(2_000):
        key, value = keyed(i, 40)
        if i % 97 == 5:
            value = b'{"id": "broken'
            bad[i] = b"invalid-json"
        elif i % 101 == 11:
            value = value[:-1] + b',"note":"caf\xe9"}'  # Latin-1, not UTF-8
            bad[i] = b"invalid-json"
        elif i % 103 == 13:
            value = b"[" + value + b"]"
            bad[i] = b"not-an-object"
        elif i % 107 == 17:
            value = b"\xef\xbb\xbf" + value  # a byte order mark: not JSON
            bad[i] = b"invalid-json"
        elif i % 89 == 7:
            rec = orjson.loads(value)
            del rec["createdAt"]  # Clari would answer 400: refused before sending
            value = orjson.dumps(rec)
            bad[i] = b"missing-timestamp"
        msgs.append((key, value))
    produce(kafka, topic, msgs, partition_of=lambda i: i % 2)
    env = sink_env(kafka, emulator, topic)
    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()
    dead = consume_all(kafka, env["DLQ_TOPIC"], expect=len(bad))
    by_seq = {}
    for m in dead:
        h = headers_of(m)
        offset, partition = (
            int(h["clari-sink.source.offset"]),
            int(h["clari-sink.source.partition"]),
        )
        by_seq[offset * 2 + partition] = h
        assert h["clari-sink.source.topic"] == topic.encode()
        assert m.key() == msgs[offset * 2 + partition][0]
        assert m.value() == msgs[offset * 2 + partition][1]
    assert {i: h["clari-sink.error.reason"] for i, h in by_seq.items()} == bad
    refused = next(
        h for h in by_seq.values() if h["clari-sink.error.reason"] == b"missing-timestamp"
    )
    assert b"createdAt" in refused["clari-sink.error.body"]
    # None of the good records shared a call with them: no call was refused.
    assert not [c for c in emulator.api_requests() if c.get("status") == 400]
    good = ids(0, 2_000) - {f"ACC{i:012d}" for i in bad}
    out = check(emulator, good)
    fault_report.append(out.row("6. poison and rejected records mixed in") | {"dead": len(dead)})
    assert out.lost == 0 and out.duplicated == 0 and out.invented == 0
    assert all_committed(kafka, env, topic)


def test_broker_restart_mid_stream(
    kafka: str,
    broker: Broker | None,
    emulator: Emulator,
    logs: Path,
    fault_report: list[dict[str, Any]],
) -> None:
    if broker is None:
        pytest.skip("needs the broker this run started (KAFKA_BOOTSTRAP_SERVERS is set)")
    n = 8_000
    topic = create_topic(kafka, unique("bounce"), partitions=3)
    produce(kafka, topic, (keyed(i, 100) for i in range(n)))
    emulator.state.faults.latency_ms = 50
    env = sink_env(kafka, emulator, topic)
    sink = SinkProcess(env, log_dir=logs).start()
    wait_until(lambda: len(emulator.records()) > 1_000, 30, what="delivery under way")
    broker.restart(down_seconds=3)
    emulator.state.faults.latency_ms = 0
    wait_until(
        lambda: len({r["record"]["id"] for r in emulator.records()}) >= n,
        120,
        what="everything delivered",
    )
    wait_all_committed(kafka, env, topic, 60)
    sink.signal(signal.SIGTERM)
    assert sink.wait(60) == 0, sink.output()
    out = check(emulator, ids(0, n))
    fault_report.append(out.row("7. broker restarted mid-stream"))
    assert out.lost == 0 and out.invented == 0


def _set_max_message_bytes(kafka: str, topic: str, value: int) -> None:
    admin = AdminClient({"bootstrap.servers": kafka})
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(30)


def test_unwritable_response_and_dead_letter_topics_block_commits(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    topic = create_topic(kafka, unique("blocked"))
    port = free_port()
    env = sink_env(kafka, emulator, topic, ADMIN_PORT=port)
    for out_topic in (env["RESPONSE_TOPIC"], env["DLQ_TOPIC"]):
        create_topic(kafka, out_topic)
        _set_max_message_bytes(kafka, out_topic, 100)  # every write is refused
    msgs = [keyed(i, 1_000) for i in range(500)]
    msgs[250] = (b"poison", b"not json")
    produce(kafka, topic, msgs)
    sink = SinkProcess(env, log_dir=logs).start()
    wait_until(lambda: len(emulator.records()) >= 499, 30, what="API calls")
    time.sleep(3)
    # Nothing is resolved while no response can be written: the commit stays at offset 0.
    assert committed(kafka, env["KAFKA_GROUP_ID"], topic)[0] <= 0, "committed past unresolved"
    ready = admin_get(port, "/readyz")
    assert ready["status"] == "degraded" and "output-topics" in ready["problems"]
    assert "cannot write to topic" in sink.output()
    for out_topic in (env["RESPONSE_TOPIC"], env["DLQ_TOPIC"]):
        _set_max_message_bytes(kafka, out_topic, 1_048_588)
    wait_all_committed(kafka, env, topic, 90)
    sink.signal(signal.SIGTERM)
    assert sink.wait(60) == 0
    assert len(consume_all(kafka, env["DLQ_TOPIC"], expect=1)) == 1
    out = check(emulator, ids(0, 500) - {"ACC000000000250"})
    fault_report.append(out.row("8. response and dead-letter topics unwritable"))
    assert out.lost == 0


def test_rejected_credential_shows_and_recovers_without_dead_letters(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    n = 1_000
    topic = create_topic(kafka, unique("auth"), partitions=2)
    produce(kafka, topic, (keyed(i, 100) for i in range(n)))
    emulator.state.partner_key = "rotated-at-clari"  # the sink's partner key is now wrong
    port = free_port()
    env = sink_env(kafka, emulator, topic, ADMIN_PORT=port, RETRY_BACKOFF_MAX_MS=1_000)
    sink = SinkProcess(env, log_dir=logs).start()
    wait_until(
        lambda: _try(lambda: "auth" in admin_get(port, "/readyz")["problems"]),
        30,
        what="/readyz naming the credential",
    )
    wait_until(
        lambda: 'api_retries_total{reason="auth"}' in admin_get(port, "/metrics"),
        10,
        what="the retries metric",
    )
    assert "clari_sink_healthy 0.0" in admin_get(port, "/metrics")
    assert emulator.records() == []
    emulator.state.partner_key = "test-partner"  # fixed on Clari's side
    wait_until(lambda: len(emulator.records()) >= n, 60, what="delivery once accepted")
    wait_until(
        lambda: _try(lambda: admin_get(port, "/readyz")["status"] == "ready"),
        30,
        what="ready again",
    )
    wait_all_committed(kafka, env, topic, 30)
    sink.signal(signal.SIGTERM)
    assert sink.wait(60) == 0
    assert consume_all(kafka, env["DLQ_TOPIC"], idle_s=1) == []
    out = check(emulator, ids(0, n))
    fault_report.append(out.row("9. credential rejected, then accepted again"))
    assert out.lost == 0 and out.duplicated == 0 and out.reordered == 0


def _try(fn: Any) -> Any:
    try:
        return fn()
    except OSError:
        return None


def test_member_leaving_between_cooperative_rounds_does_not_stall_the_group(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    n = 3_000
    topic = create_topic(kafka, unique("rounds"), partitions=6)
    env = sink_env(kafka, emulator, topic)  # session timeout: the default 45 s
    a = SinkProcess(env, log_dir=logs).start()
    wait_until(lambda: f"partitions assigned: {topic}" in a.output(), 30, what="first member")
    b = SinkProcess(env, log_dir=logs).start()
    # Stop the second member right after the first, empty round of the rebalance.
    wait_until(lambda: "partitions assigned: (none)" in b.output(), 30, what="first round")
    b.signal(signal.SIGTERM)
    assert b.wait(30) == 0, b.output()
    produce(kafka, topic, (keyed(i, 100) for i in range(n)))
    # Without care the handed-over partitions wait for B's session to time out (45 s).
    wait_until(lambda: len(emulator.records()) >= n, 20, what="delivery on every partition")
    wait_all_committed(kafka, env, topic, 20)
    a.signal(signal.SIGTERM)
    assert a.wait(60) == 0
    out = check(emulator, ids(0, n))
    fault_report.append(out.row("10. member leaves between cooperative rounds"))
    assert out.lost == 0 and out.duplicated == 0


def test_bulk_jobs_in_progress_across_a_rebalance(
    kafka: str, emulator: Emulator, logs: Path, fault_report: list[dict[str, Any]]
) -> None:
    """Bulk jobs run with their records dropped from memory (parked). A rebalance that
    outlasts SINK_SHUTDOWN_TIMEOUT_S cancels the revoked partitions' jobs: their records
    are consumed by their new owner. A batch never spans partitions, so the kept
    partitions' jobs go on untouched."""
    n = 6_000
    topic = create_topic(kafka, unique("parked"), partitions=6)
    emulator.state.job_running_s = 2.5  # every job outlasts the 1 s the revoke waits
    env = sink_env(
        kafka,
        emulator,
        topic,
        CLARI_TEMPLATE="ingest-bulk-entities",
        BATCH_SIZE=500,
        JOB_POLL_INITIAL_MS=100,
        JOB_POLL_MAX_MS=500,
        SINK_SHUTDOWN_TIMEOUT_S=1,
    )
    feed = Feed(kafka, topic, n, rate=1_500, keys=100)
    # The second member stops with jobs still running: it gives them up (exit 3).
    a = member_joins_and_leaves(kafka, emulator, env, topic, feed, logs, 500, b_exits=(0, 3))
    out = check(emulator, ids(0, n))
    fault_report.append(out.row("11. bulk jobs in progress across a rebalance"))
    assert "partitions revoked" in a.output()
    assert out.lost == 0 and out.reordered == 0
    # Cancelled jobs may still succeed at Clari: their records can arrive twice, no more.
    assert out.duplicated <= n

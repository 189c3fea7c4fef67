"""The demo: local Kafka + Clari emulator + sample CRM records → the sink → a delivery report.

    python -m devkit.demo [--records N]

Starts a single-node broker (unless KAFKA_BOOTSTRAP_SERVERS names one) and the emulator,
seeds a topic, runs ``clari-sink run --until-drained``, prints what happened, and stops
everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from devkit import kafka_local
from devkit.seed import seed

STATE = Path(".local")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


def _count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-report"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts
        )
    finally:
        consumer.close()


def _offsets(bootstrap: str, group: str, topic: str) -> list[tuple[int, int, int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        done = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return [
            (
                tp.partition,
                tp.offset,
                consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1],
            )
            for tp in done
        ]
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.demo")
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args(argv)
    STATE.mkdir(exist_ok=True)
    started: list[Any] = []
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    try:
        if bootstrap:
            print(f"== using the broker at {bootstrap}")
        else:
            print("== starting a local Apache Kafka broker (first run downloads its jars)")
            broker = kafka_local.start(STATE / "demo-kafka")
            bootstrap = broker.bootstrap
        port = kafka_local.free_port()
        print(f"== starting the Clari API emulator on 127.0.0.1:{port}")
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sink.cli",
                "emulator",
                "--port",
                str(port),
                "--rate-limit",
                "100",
            ],
            stdout=subprocess.DEVNULL,
        )
        started.append(emulator)
        _wait_http(f"http://127.0.0.1:{port}/_emulator/health")
        run_id = time.strftime("%Y%m%d%H%M%S")
        topic = f"crm.accounts.{run_id}"
        print(f"== seeding {args.records} sample accounts into '{topic}' (3 partitions)")
        seed(bootstrap, topic, args.records)
        group = f"clari-sink-demo-{run_id}"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "CLARI_BASE_URL": f"http://127.0.0.1:{port}/v2",
            "CLARI_TEMPLATE": "upload-entity-data",
            "CLARI_ENTITY_TYPE": "Account",
            "CLARI_API_TOKEN": "demo-token",
            "CLARI_PARTNER_KEY": "demo-partner",
            "RESPONSE_TOPIC": f"clari-sink.responses.{run_id}",
            "DLQ_TOPIC": f"clari-sink.dlq.{run_id}",
            "ADMIN_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        print("== running the sink until the topic is drained")
        t0 = time.monotonic()
        sink = subprocess.run(
            [sys.executable, "-m", "sink.cli", "run", "--until-drained"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        elapsed = time.monotonic() - t0
        consumed = 0
        for line in sink.stderr.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "sink stopped":
                consumed = int(entry.get("consumed", 0))
        if sink.returncode != 0:
            print(sink.stderr[-4000:])
            print(f"!! the sink exited with {sink.returncode}")
            return 1
        stats = _get(f"http://127.0.0.1:{port}/_emulator/stats")["counters"]
        requests = _get(f"http://127.0.0.1:{port}/_emulator/requests")["requests"]
        api_calls = [r for r in requests if r["path"].startswith("/v2/")]
        window = (api_calls[-1]["time"] - api_calls[0]["time"]) if len(api_calls) > 1 else 0.0
        responses = _count(bootstrap, env["RESPONSE_TOPIC"])
        offsets = _offsets(bootstrap, group, topic)
        print()
        print("Delivery report")
        print(f"  records seeded               {args.records}")
        print(f"  records consumed             {consumed}")
        print(f"  API calls                    {len(api_calls)}")
        print(f"  records accepted by emulator {stats.get('records_accepted', 0)}")
        print(f"  responses published          {responses}")
        for partition, done, end in offsets:
            print(f"  committed offset {topic}[{partition}]  {done} of {end}")
        print(f"  sink run time                {elapsed:.1f} s (start-up included)")
        if window > 0:
            print(
                f"  delivery rate                {stats.get('records_accepted', 0) / window:,.0f} "
                "records/s (first to last API call; Clari's limit is 100 calls/s)"
            )
        ok = (
            consumed == args.records == stats.get("records_accepted")
            and responses == len(api_calls)
            and all(done == end for _, done, end in offsets)
        )
        print(
            f"  result                       {'OK: every record delivered' if ok else 'MISMATCH'}"
        )
        return 0 if ok else 1
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(10)
        if broker is not None:
            broker.stop()
        print("== stopped everything the demo started")


if __name__ == "__main__":
    sys.exit(main())

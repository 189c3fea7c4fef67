"""Test support: a real Kafka broker, the Clari emulator in a thread, the sink as users run it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import orjson
from aiohttp import web
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devkit.kafka_local import free_port
from sink.emulator.app import build_app
from sink.emulator.state import EmulatorState

TOKEN = "test-token"
PARTNER = "test-partner"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LoopbackApp:
    """An aiohttp app on a loopback port, served from its own thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def build(self) -> web.Application:
        raise NotImplementedError

    def serve(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.build(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class Emulator(LoopbackApp):
    """The Clari API emulator on a loopback port, served from its own thread."""

    def __init__(self, **state_args: Any) -> None:
        super().__init__()
        self.state = EmulatorState(api_token=TOKEN, partner_key=PARTNER, **state_args)

    def build(self) -> web.Application:
        return build_app(self.state)

    def start(self) -> Emulator:
        self.serve()
        return self

    def records(self, entity: str | None = None) -> list[dict[str, Any]]:
        return [r for r in list(self.state.records) if entity is None or r["entity"] == entity]

    def api_requests(self) -> list[dict[str, Any]]:
        return [
            r for r in list(self.state.requests) if r["path"].startswith(("/v1", "/v2", "/custom"))
        ]


# --- Kafka helpers --------------------------------------------------------------------
def create_topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(30)
    wait_until(lambda: name in admin.list_topics(timeout=5).topics, 30, what=f"topic {name}")
    return name


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    partition_of: Callable[[int], int] | None = None,
) -> int:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    n = 0
    for i, (key, value) in enumerate(records):
        kwargs: dict[str, Any] = {"key": key, "value": value}
        if partition_of is not None:
            kwargs["partition"] = partition_of(i)
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return n


def produce_json(
    bootstrap: str, topic: str, records: list[dict[str, Any]], key_field: str = "id", **kwargs: Any
) -> int:
    return produce(
        bootstrap,
        topic,
        (
            (str(r[key_field]).encode() if key_field in r else None, orjson.dumps(r))
            for r in records
        ),
        **kwargs,
    )


def consume_all(
    bootstrap: str,
    topic: str,
    expect: int | None = None,
    timeout: float = 30.0,
    idle_s: float = 2.0,
) -> list[Message]:
    """Every message of ``topic`` (by assignment, no group commit)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(500, 0.3):
                if m.error() is None:
                    out.append(m)
                    last = time.monotonic()
            if expect is not None and len(out) >= expect and time.monotonic() - last > 0.3:
                break
            if expect is None and out and time.monotonic() - last > idle_s:
                break
            if expect is None and not out and time.monotonic() - last > idle_s * 3:
                break
    finally:
        consumer.close()
    return out


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("ends")})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in parts
        }
    finally:
        consumer.close()


def headers_of(msg: Message) -> dict[str, bytes]:
    return {k: v for k, v in (msg.headers() or []) if v is not None}


# --- the sink as a process ---------------------------------------------------------------
def sink_env(bootstrap: str, emulator: Emulator, topic: str, **overrides: Any) -> dict[str, str]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": unique("group"),
        "CLARI_BASE_URL": f"{emulator.url}/v2",
        "CLARI_ENTITY_TYPE": "Account",
        "CLARI_API_TOKEN": TOKEN,
        "CLARI_PARTNER_KEY": PARTNER,
        "RESPONSE_TOPIC": unique("responses"),
        "DLQ_TOPIC": unique("dlq"),
        "BATCH_LINGER_MS": "200",
        "ADMIN_PORT": "0",
        "LOG_FORMAT": "text",
        "SINK_COMMIT_INTERVAL_MS": "200",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class SinkProcess:
    """``clari-sink run`` in a child process, with its output kept for failure messages."""

    started: ClassVar[list[SinkProcess]] = []  # every one, so a failed test leaves none running

    def __init__(self, env: dict[str, str], *args: str, log_dir: Path) -> None:
        self.env = env
        self.args = args
        self.log_path = log_dir / f"sink-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SinkProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CLARI_"))}
        full_env.update(self.env)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sink.cli", "run", *self.args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        SinkProcess.started.append(self)
        return self

    @classmethod
    def kill_leftovers(cls) -> None:
        for sink in cls.started:
            if sink.proc is not None and sink.proc.poll() is None:
                sink.proc.kill()
                sink.proc.wait(10)
        cls.started.clear()

    def wait(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"sink did not exit within {timeout}s:\n{self.output()}") from None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def run_to_end(self, timeout: float = 120.0) -> str:
        """Start with ``--until-drained``-style args and insist on exit code 0."""
        self.start()
        code = self.wait(timeout)
        out = self.output()
        assert code == 0, f"sink exited {code}:\n{out}"
        return out


def run_sink(
    kafka: str, emulator: Emulator, log_dir: Path, topic: str, **overrides: Any
) -> dict[str, str]:
    """Run ``clari-sink run --until-drained`` over ``topic`` with these settings; return them."""
    env = sink_env(kafka, emulator, topic, **overrides)
    SinkProcess(env, "--until-drained", log_dir=log_dir).run_to_end()
    return env


def responses(kafka: str, env: dict[str, str], expect: int | None = None) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in consume_all(kafka, env["RESPONSE_TOPIC"], expect)]


def seeded_topic(
    kafka: str, records: list[dict[str, Any]], partitions: int = 1, prefix: str = "crm"
) -> str:
    topic = create_topic(kafka, unique(prefix), partitions)
    produce_json(kafka, topic, records)
    return topic


def all_committed(kafka: str, env: dict[str, str], topic: str) -> bool:
    """The sink's group has committed every partition of ``topic`` to its end."""
    return committed(kafka, env["KAFKA_GROUP_ID"], topic) == end_offsets(kafka, topic)


TRANSIENT = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
}


def wait_all_committed(kafka: str, env: dict[str, str], topic: str, timeout: float = 60) -> None:
    def done() -> bool:
        try:
            return all_committed(kafka, env, topic)
        except KafkaException as exc:  # NOT_COORDINATOR while a restarted broker loads
            if exc.args[0].code() not in TRANSIENT and not exc.args[0].retriable():
                raise
            return False

    wait_until(done, timeout, what=f"every offset of {topic} committed")

"""An asyncio face for confluent-kafka's Producer.

A background thread serves delivery callbacks (``poll``) and hands each result to the
event loop, so ``await produce(...)`` returns only once the broker has acknowledged the
message. The response and dead-letter topics are written through it: a batch's offsets
are committed only after those writes are acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from sink.records import Headers

log = logging.getLogger(__name__)

# librdkafka's default, set explicitly: what is cut to fit (sink/reporting.py) is cut
# under it. The broker's own limit (message.max.bytes, 1,048,588 by default, or a
# topic's max.message.bytes) may be lower: message_limit() asks for it.
PRODUCER_MESSAGE_MAX_BYTES = 1_000_000
TOPIC_LIMIT_TTL_S = 300.0  # an operator may raise a topic's limit: ask again after this

# Refusals that resending the same message cannot cure. Too large: it must be cut.
SIZE_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
# The topic itself (its name, its ACLs, a broker policy) refuses: someone must fix it.
TOPIC_ERRORS = frozenset(
    {
        KafkaError.TOPIC_EXCEPTION,  # an invalid topic name
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.POLICY_VIOLATION,
        KafkaError.INVALID_RECORD,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError._INVALID_ARG,
        KafkaError._UNKNOWN_TOPIC,  # the topic does not exist and is not created on use
    }
)


class ProduceError(Exception):
    def __init__(self, topic: str, error: KafkaError | str) -> None:
        self.topic = topic
        self.error = error
        super().__init__(f"writing to topic '{topic}' failed: {error}")

    @property
    def code(self) -> int | None:
        return self.error.code() if isinstance(self.error, KafkaError) else None

    @property
    def too_large(self) -> bool:
        return self.code in SIZE_ERRORS

    @property
    def permanent(self) -> bool:
        """Trying the same write again cannot succeed until someone changes something."""
        return self.code in SIZE_ERRORS or self.code in TOPIC_ERRORS


class AsyncProducer:
    def __init__(self, conf: dict[str, Any]) -> None:
        base: dict[str, Any] = {
            "enable.idempotence": True,  # no duplicates from the producer's own retries
            "acks": "all",
            "linger.ms": 1,  # a batch waits for its response to be acknowledged
            "compression.type": "lz4",
            # Fail a write within a minute so the caller sees it, says so, and retries it.
            "message.timeout.ms": 60_000,
            "message.max.bytes": PRODUCER_MESSAGE_MAX_BYTES,
        }
        self._producer = Producer({**base, **conf})
        self._conf = conf  # the connection settings, for the admin client of message_limit()
        self._limits: dict[str, tuple[int | None, float]] = {}  # topic → (limit, asked at)
        self._asking = asyncio.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="producer-poll", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Write one message and wait for the broker's acknowledgement."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            loop.call_soon_threadsafe(_settle, done, topic, err)

        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=on_delivery
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                await asyncio.sleep(0.05)
            except KafkaException as exc:
                raise ProduceError(topic, exc.args[0]) from None
        await done

    async def message_limit(self, topic: str) -> int:
        """The largest message ``topic`` takes: the producer's limit, or the topic's
        ``max.message.bytes`` if lower (as the broker says; the producer's if it cannot)."""
        # One question at a time: a batch of large records all ask at once.
        async with self._asking:
            now = time.monotonic()
            known = self._limits.get(topic)
            if known is None or now - known[1] > TOPIC_LIMIT_TTL_S:
                known = (await asyncio.to_thread(self._topic_limit, topic), now)
                self._limits[topic] = known
        return min(known[0] or PRODUCER_MESSAGE_MAX_BYTES, PRODUCER_MESSAGE_MAX_BYTES)

    def _topic_limit(self, topic: str) -> int | None:
        # (ConfigResource is public there; the package only does not re-export it for mypy.)
        try:
            admin = AdminClient(self._conf)
            resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
            entries = admin.describe_configs([resource], request_timeout=10)[resource].result(15)
            return int(entries["max.message.bytes"].value)
        except Exception as exc:  # no DescribeConfigs ACL, no such topic, broker away
            log.info("cannot read max.message.bytes of topic '%s': %s", topic, exc)
            return None

    def flush(self, timeout_s: float) -> int:
        remaining: int = self._producer.flush(timeout_s)
        return remaining

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush for ``timeout_s`` at most; how many messages were left unacknowledged
        (their batches were not committed: they are delivered again)."""
        left = self.flush(timeout_s)
        if left:
            log.error(
                "producer closed with %d message(s) not acknowledged within %.1f s",
                left,
                timeout_s,
            )
        self._closed.set()
        self._thread.join(timeout=1)  # it polls every 0.1 s
        return left


def _settle(done: asyncio.Future[None], topic: str, err: KafkaError | None) -> None:
    if done.done():
        return
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(ProduceError(topic, err))

"""Offset commits to the group coordinator: one at a time, waited for or asked for, and
the broker said unreachable when one gets no answer in time.

One at a time, synchronous or not: librdkafka retries a commit that failed on the way
(after a transport error, say), so a later one could land first and then be undone.
The consumer's calls run on its Kafka thread (sink/consumer.py); this holds what is
pending between them and the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from sink.health import Health

log = logging.getLogger(__name__)
TP = tuple[str, int]
COMMIT_WAIT_S = 5.0


class Commits:
    def __init__(self, call: Callable[..., Awaitable[Any]], health: Health | None = None) -> None:
        self._call = call  # runs a consumer call on the Kafka thread
        self.health = health
        self.consumer: Consumer | None = None  # set once made (it is made with on_commit)
        self._sync: asyncio.Future[None] | None = None
        # The asynchronous commit waiting for its answer (on_commit, served by a poll),
        # and the loop to give it to.
        self._async: asyncio.Future[None] | None = None
        self._asked_at = 0.0
        self._overdue_told = False  # said once per commit: a probe that answers clears it
        self._loop: asyncio.AbstractEventLoop | None = None

    def pending(self) -> bool:
        """An asynchronous commit still waits for its answer."""
        return _waiting(self._async)

    def now(self, positions: dict[TP, int]) -> None:
        """Synchronous commit, for the Kafka thread itself (rebalance callbacks)."""
        if positions:
            assert self.consumer is not None
            self.consumer.commit(offsets=_tps(positions), asynchronous=False)

    async def commit(self, positions: dict[TP, int]) -> None:
        """Commit ``positions``, waiting COMMIT_WAIT_S at most (KafkaException if not
        done by then: the caller commits again later).

        A synchronous commit waits for the group coordinator as long as it takes (45 s
        here, the session timeout, when the broker stopped under it), and every consumer
        call waits behind it, from any thread: consume(), and with it the error callback
        that tells the broker is gone. So a commit that gets no answer in time says the
        broker is unreachable (on /readyz and in the log, at once), and no other is
        tried until the broker answers again (KafkaSource._probe). Offsets only grow,
        and a commit still waiting keeps the next from being issued."""
        self._refuse_while_busy()
        pending = asyncio.ensure_future(self._call(self.now, positions))
        self._sync = pending
        pending.add_done_callback(_quiet)  # its outcome may come after it was given up
        try:
            await asyncio.wait_for(asyncio.shield(pending), COMMIT_WAIT_S)
        except TimeoutError:
            why = f"an offset commit got no answer within {COMMIT_WAIT_S:g} s"
            if self.health is not None:
                self.health.fail("kafka", why)
            raise _deferred(why) from None

    async def ask(self, positions: dict[TP, int]) -> asyncio.Future[None]:
        """Ask for a commit of ``positions`` and return at once, with a future that the
        broker's answer settles (KafkaException if it failed: commit again later).

        The main loop commits this way. A synchronous commit held the Kafka thread, and
        with it every poll, until the coordinator answered: 2 s when it landed in the
        second round of a cooperative rebalance (ILLEGAL_GENERATION), up to the session
        timeout when the broker had just gone. The answer comes through ``on_commit``,
        which a poll serves. No answer within COMMIT_WAIT_S of polling says the broker is
        unreachable, as for a synchronous commit; the next commit waits for this one's
        answer, whatever it is, so offsets never go back."""
        self._refuse_while_busy()
        loop = self._loop = asyncio.get_running_loop()
        answered: asyncio.Future[None] = loop.create_future()
        answered.add_done_callback(_quiet)  # whoever asked may be gone (a stop)
        self._async, self._asked_at, self._overdue_told = answered, time.monotonic(), False
        consumer = self.consumer
        assert consumer is not None

        def ask() -> None:
            try:
                consumer.commit(offsets=_tps(positions), asynchronous=True)
            except KafkaException as exc:  # refused before it was sent (no coordinator)
                # Settled here, not by the caller, who may have been cancelled meanwhile.
                loop.call_soon_threadsafe(_settle, answered, exc.args[0])
                raise

        await self._call(ask)
        return answered

    def _refuse_while_busy(self) -> None:
        if self.health is not None and self.health.down("kafka"):
            raise _deferred("the broker is unreachable")
        if _waiting(self._sync) or _waiting(self._async):
            raise _deferred("the previous commit still waits for the broker")

    def on_commit(self, err: KafkaError | None, parts: list[TopicPartition]) -> None:
        """librdkafka's answer to an asynchronous commit (on the Kafka thread)."""
        answered, loop = self._async, self._loop
        if answered is None or loop is None:
            return
        failed = err or next((p.error for p in parts or () if p.error is not None), None)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process ends
            loop.call_soon_threadsafe(_settle, answered, failed)

    def polled(self, gap_s: float) -> None:
        """A poll returned, ``gap_s`` after the one before. No answer within
        COMMIT_WAIT_S of polling says the broker is unreachable. Judged at a poll, and
        over the time spent polling, since only a poll brings the answer: a loop that
        stopped polling for a while (deliveries drained at a stop, a revocation holding
        the Kafka thread) has not waited for it meanwhile."""
        if gap_s > 1.0:  # nothing polled meanwhile, so no answer could come: not counted
            self._asked_at += gap_s
        if (
            self.pending()
            and time.monotonic() - self._asked_at > COMMIT_WAIT_S
            and self.health is not None
            and not self._overdue_told
        ):
            self._overdue_told = True
            self.health.fail("kafka", f"an offset commit got no answer within {COMMIT_WAIT_S:g} s")


def _quiet(done: asyncio.Future[None]) -> None:
    """Retrieve the outcome of a commit no one waits for any more (asyncio would log it
    as never retrieved); committing again later covers it."""
    if not done.cancelled() and (exc := done.exception()) is not None:
        log.debug("a commit given up ended: %s", exc)


def _waiting(commit: asyncio.Future[None] | None) -> bool:
    return commit is not None and not commit.done()


def _settle(answered: asyncio.Future[None], failed: KafkaError | None) -> None:
    if answered.done():
        return
    if failed is None:
        answered.set_result(None)
    else:
        answered.set_exception(KafkaException(failed))


def _deferred(why: str) -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TRANSPORT, f"commit deferred: {why}"))


def _tps(positions: dict[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, off) for (t, p), off in positions.items()]

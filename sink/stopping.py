"""The stop, bounded by ``SINK_SHUTDOWN_TIMEOUT_S`` whatever Kafka does.

Measured before this module (issue 18): with the broker stopped, a SIGTERM took 46 s
against a 5 s timeout, and compose or Kubernetes kill a sink that overstays its grace
period. The time went to Kafka calls that wait for a broker that is not there: the
commit made when the group is left (librdkafka's synchronous commit has no timeout),
and ``close()``. So every step of the stop gets what is left of one deadline, set when
the stop is asked for; a step that has not finished by then is given up (its thread is
left blocked in librdkafka), and the process exits without it. Nothing is lost by that:
what was not committed is consumed again.

The order: in-flight deliveries until the deadline less a reserve, then the final commit,
the consumer's leave and close, and the producer's flush share what remains. Should the
process still be alive one second past the deadline (a step that ignored its own
timeout, or a thread the interpreter would wait for at exit), the watchdog ends it.

Exit codes (``clari-sink run``): 0 the stop was clean (every delivery finished, the
final commit made, the Kafka clients closed); 1 stopped on a fatal error; 2 invalid
settings, not started; 3 stopped, but not cleanly: something was given up at the
deadline and the records it concerned will be consumed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sink.pipeline import Pipeline
    from sink.producer import AsyncProducer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_UNCLEAN = 3
WATCHDOG_GRACE_S = 1.0
# The main loop may be inside a Kafka call that waits for the broker (a commit): this
# long after the stop is asked for it is cancelled, so the stop has its time.
MAIN_LOOP_GRACE_S = 1.0


class StopClock:
    """The deadline of the stop, set once, when it is first asked for."""

    def __init__(self, timeout_s: float, watchdog: bool = False) -> None:
        self.timeout_s = timeout_s
        self.watchdog = watchdog  # the CLI's process only: it ends the process
        self.deadline: float | None = None
        self.fatal = False  # what the watchdog's exit code says

    def begin(self) -> float:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.timeout_s
            if self.watchdog:
                timer = threading.Timer(self.timeout_s + WATCHDOG_GRACE_S, self._expired)
                timer.daemon = True
                timer.start()
        return self.deadline

    def left(self) -> float:
        return max(0.0, self.begin() - time.monotonic())

    def _expired(self) -> None:
        log.error(
            "the stop did not end within SINK_SHUTDOWN_TIMEOUT_S=%s s: exiting now; "
            "what was not committed will be consumed again",
            f"{self.timeout_s:g}",
        )
        exit_now(EXIT_FATAL if self.fatal else EXIT_UNCLEAN)


def exit_now(code: int) -> None:
    """End the process without waiting for threads blocked in librdkafka (the interpreter
    would join them at exit, and run the clients' destructors, which close them again)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


async def run_until_stopped(
    main: Coroutine[Any, Any, None], stop: asyncio.Event, clock: StopClock
) -> None:
    """Run the main loop until it returns, or until ``stop`` is set and the loop has had
    MAIN_LOOP_GRACE_S to notice (then it is cancelled: what it polled was not tracked
    yet and is consumed again)."""
    task = asyncio.ensure_future(main)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            clock.begin()
            await asyncio.wait({task}, timeout=MAIN_LOOP_GRACE_S)
        if not task.done():
            log.debug("main loop still busy after the stop was asked for: cancelled")
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.result()  # its exception, if any
    finally:
        stopped.cancel()


async def within(step: Awaitable[object], clock: StopClock, what: str) -> bool:
    """Await ``step`` until the deadline; False if it was given up."""
    try:
        await asyncio.wait_for(step, timeout=clock.left())
    except TimeoutError:
        log.error(
            "%s did not finish within SINK_SHUTDOWN_TIMEOUT_S=%s s: given up",
            what,
            f"{clock.timeout_s:g}",
        )
        return False
    return True


async def shut_down(p: Pipeline, producer: AsyncProducer, clock: StopClock) -> bool:
    """Finish deliveries, commit, close the Kafka clients, each within the deadline.
    True if the stop was clean."""
    assert p.source is not None
    clock.begin()
    # Deliveries get the deadline less a reserve for the commit and the clients' close,
    # which, with a reachable broker, take well under a second.
    reserve = min(5.0, clock.timeout_s / 4)
    drain_s = max(0.0, clock.left() - reserve)
    # A delivery that ends frees its lane, and the flow starts the next batch: once the
    # deliveries are given up, none may start (seen: calls made after the stop, failing
    # as the HTTP session closed under them). Just before the drain ends, not after.
    loop = asyncio.get_running_loop()
    no_more = loop.call_later(max(0.0, drain_s - 0.01), setattr, p.flow, "active", False)
    abandoned = await p.flow.finish(
        time.monotonic() + drain_s, p.rejects.tasks, lambda: p._fatal is not None
    )
    no_more.cancel()
    # Nothing more is sent, whatever comes: the revocation served as the consumer leaves
    # the group would send what the partitions still buffer and wait for it (30 s seen
    # after a fatal error).
    p.flow.active = False
    if p.delivery is not None and p.delivery.replayer is not None:
        p.delivery.replayer.stopping.set()  # a read-back still running ends now
    clean = not abandoned
    if abandoned:
        log.warning(
            "%d deliveries did not finish in time; their records stay "
            "uncommitted and will be consumed again",
            len(abandoned),
        )
    if p._fatal is None:
        # The main loop's last commit may still wait for its answer, which only a poll
        # brings: the final one waits for it, so the two land in order.
        # Half of what is left at most: the final commit and the clients' close need theirs.
        await within(p.source.answer_pending(clock.left() / 2), clock, "the last commit's answer")
        if not await within(p.commit(), clock, "the final offset commit"):
            clean = False
        elif any(tp in p.source.assignment for tp in p.tracker.committable()):
            # (the committer said why, at WARNING, or at DEBUG with the broker away)
            log.error("the final offset commit was not made: those records will be consumed again")
            clean = False
    p.update_gauges()
    if p.source.mid_rebalance and clock.left() > 0:
        clean &= await within(
            p.source.settle_rebalance(timeout_s=min(10.0, clock.left())), clock,
            "finishing the cooperative rebalance",
        )  # fmt: skip
    clean &= await p.source.close(clock.left())
    clean &= await close_producer(producer, clock)
    log.info(
        "sink stopped%s",
        "" if clean else " (not cleanly: see above)",
        extra={"consumed": p.intake.consumed},
    )
    return clean


async def close_producer(producer: AsyncProducer, clock: StopClock) -> bool:
    """Flush the response and dead-letter writes still queued, within the deadline."""
    left = await asyncio.to_thread(producer.close, clock.left())
    return left == 0


__all__ = [
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_UNCLEAN",
    "StopClock",
    "exit_now",
    "run_until_stopped",
    "shut_down",
]

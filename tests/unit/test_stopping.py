"""The stop's deadline (sink/stopping.py): a main loop stuck in a call is cancelled, a
step that overruns is given up, and the watchdog ends a process that still hangs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from sink.stopping import EXIT_UNCLEAN, StopClock, run_until_stopped, within


async def test_a_main_loop_stuck_in_a_call_is_cancelled_a_second_after_the_stop() -> None:
    stop = asyncio.Event()
    cancelled = False

    async def stuck() -> None:
        nonlocal cancelled
        try:
            await asyncio.sleep(3600)  # a commit waiting for a broker that is gone
        except asyncio.CancelledError:
            cancelled = True
            raise

    clock = StopClock(5)
    asyncio.get_running_loop().call_later(0.1, stop.set)
    started = time.monotonic()
    await run_until_stopped(stuck(), stop, clock)
    assert cancelled and time.monotonic() - started < 2.5
    assert clock.deadline is not None  # the stop's time counts from the request


async def test_a_step_past_the_deadline_is_given_up() -> None:
    clock = StopClock(0.3)
    clock.begin()
    assert await within(asyncio.sleep(0.01), clock, "a quick step")
    started = time.monotonic()
    assert not await within(asyncio.sleep(3600), clock, "a close that never returns")
    assert time.monotonic() - started < 1


def test_the_watchdog_ends_a_process_still_alive_a_second_past_the_deadline() -> None:
    code = (
        "import logging, threading, time\n"
        "from sink.stopping import StopClock\n"
        "logging.basicConfig()\n"
        "StopClock(0.5, watchdog=True).begin()\n"
        # A thread the interpreter would wait for at exit, as one blocked in librdkafka.
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    took = time.monotonic() - started
    assert done.returncode == EXIT_UNCLEAN, done.stderr
    assert "the stop did not end within SINK_SHUTDOWN_TIMEOUT_S=0.5 s" in done.stderr
    assert took < 10

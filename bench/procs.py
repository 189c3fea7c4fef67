"""The benchmark's processes: the Clari emulator, the sink, and what they cost.

Every measured process is a child of the benchmark, so its CPU time and peak RSS come
from the kernel: ``/proc/<pid>/stat`` and ``VmHWM`` while it runs, ``wait4`` once it ends.
"""

from __future__ import annotations

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

from devkit import kafka_local

RESULTS = Path(__file__).resolve().parent / "results"
TICKS = os.sysconf("SC_CLK_TCK")
TOKEN = "demo-token"
PARTNER = "demo-partner"
LIFTED = 1_000_000  # calls/s: a rate limit out of the way


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


def post_json(url: str, values: dict[str, Any], timeout: float = 10) -> Any:
    req = urllib.request.Request(url, data=orjson.dumps(values), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


class Emulator:
    """``clari-sink emulator`` as a child process, records not stored (``--no-store``)."""

    def __init__(self, latency_ms: float = 0, rate_limit: float = LIFTED) -> None:
        self.port = kafka_local.free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sink.cli",
                "emulator",
                "--port",
                str(self.port),
                "--api-token",
                TOKEN,
                "--partner-key",
                PARTNER,
                "--no-store",
                "--rate-limit",
                f"{rate_limit:g}",
                "--latency-ms",
                f"{latency_ms:g}",
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
                self.progress()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = get_json(f"{self.base}/_emulator/stats", timeout=30)
        return result

    def progress(self) -> dict[str, Any]:
        """Counters, calls in flight and the delivery check: cheap enough to poll."""
        result: dict[str, Any] = get_json(f"{self.base}/_emulator/progress")
        return result

    def track(self, key_field: str = "key", seq_field: str = "seq") -> None:
        """Check every accepted record: distinct ids, duplicates, order per key."""
        post_json(
            f"{self.base}/_emulator/tracking", {"key_field": key_field, "seq_field": seq_field}
        )

    def faults(self, **values: Any) -> None:
        post_json(f"{self.base}/_emulator/faults", values)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Measured:
    """A child process whose CPU time and peak RSS are watched from /proc."""

    def __init__(self, args: list[str], env: dict[str, str] | None, log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")  # closed in finish
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.peak_rss_mib = 0.0
        self.cpu_at_exit: float | None = None
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
        """User + system CPU of the process so far (all its threads)."""
        if self.cpu_at_exit is not None:
            return self.cpu_at_exit
        try:
            raw = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except FileNotFoundError:
            return 0.0
        fields = raw.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def exited(self) -> bool:
        """Whether the process ended (reaped here, with its CPU time and peak RSS)."""
        if self.proc.returncode is not None:
            return True
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if not pid:
            return False
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_at_exit = usage.ru_utime + usage.ru_stime
        self.peak_rss_mib = max(self.peak_rss_mib, usage.ru_maxrss / 1024)
        self.log.close()
        return True

    def finish(self, stop: bool = False, timeout: float = 1_800) -> tuple[float, float]:
        """(cpu seconds, peak RSS MiB) of the whole run; SIGTERM first when ``stop``."""
        if stop and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError(f"{self.log_path.name}: the process did not finish")
            time.sleep(0.1)
        assert self.cpu_at_exit is not None
        return self.cpu_at_exit, self.peak_rss_mib

    def kill(self) -> None:
        """Last resort (an error elsewhere): the process must not outlive the benchmark."""
        if self.proc.returncode is None:
            self.proc.kill()
            self.finish(timeout=30)


class Sink(Measured):
    """``clari-sink run`` as a child; ``finish`` reaps it with its CPU time and peak RSS."""

    def __init__(self, env: dict[str, str], until_drained: bool, log: str = "sink.log") -> None:
        args = [sys.executable, "-m", "sink.cli", "run"] + (["--until-drained"] * until_drained)
        if profile := os.environ.get("BENCH_SINK_PROFILE"):
            # Collapsed stacks of the sink's run (py-spy, from the bench extras); the CPU
            # figures then include py-spy's own.
            args = ["py-spy", "record", "-r", "250", "-f", "raw", "-o", profile, "--", *args]
        RESULTS.mkdir(exist_ok=True)
        super().__init__(args, {**os.environ, **env}, RESULTS / log)

    def finish(self, stop: bool = False, timeout: float = 1_800) -> tuple[float, float]:
        cpu, rss = super().finish(stop, timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"sink exited {self.proc.returncode}; see {self.log_path}")
        return cpu, rss


def sink_env(
    bootstrap: str, topic: str, emu: Emulator, name: str, defaults: bool = False, **extra: Any
) -> dict[str, str]:
    """The sink's settings for a run: connection, topic names, quiet logs; with
    ``defaults`` nothing else (the matrix), else the old benchmark's raised rate limit and
    100 ms linger."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"bench-{name}-{time.time():.0f}",
        "CLARI_BASE_URL": f"{emu.base}/v2",
        "CLARI_ENTITY_TYPE": "Account",
        "CLARI_API_TOKEN": TOKEN,
        "CLARI_PARTNER_KEY": PARTNER,
        "RESPONSE_TOPIC": f"bench.responses.{name}",
        "DLQ_TOPIC": f"bench.dlq.{name}",
        "ADMIN_PORT": "0",
        "LOG_LEVEL": "WARNING",
    }
    if not defaults:
        env |= {"HTTP_RATE_LIMIT": str(LIFTED), "BATCH_LINGER_MS": "100"}
    env.update({k: str(v) for k, v in extra.items()})
    return env

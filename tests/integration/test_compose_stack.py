"""docker-compose.yml brought up as a user would (COMPOSE: docker compose, or
podman-compose through ../shared/tools/compose-here): broker, emulator, seeder and sink
start, every seeded record reaches the emulator and is committed, /readyz turns ready,
published ports answer on 127.0.0.1 only, and `down` removes it all."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from devkit.kafka_local import free_port
from tests.deploy_tools import require, run
from tests.support import committed, end_offsets, unique, wait_until

pytestmark = pytest.mark.integration
SEEDED = 5_000  # docker-compose.yml's seed command


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


@pytest.fixture
def stack() -> Iterator[tuple[list[str], dict[str, str]]]:
    (compose,) = require("COMPOSE")
    ports = {
        "SINK_ADMIN_HOST_PORT": str(free_port()),
        "EMULATOR_HOST_PORT": str(free_port()),
        "KAFKA_HOST_PORT": str(free_port()),
    }
    cmd = [*compose, "-p", unique("clarisinktest").replace("-", "")]
    env = {**os.environ, **ports}
    started = time.monotonic()
    try:
        run([*cmd, "up", "-d", "--build"], timeout=1_500, env=env)
        print(f"compose up in {time.monotonic() - started:.1f} s")
        yield cmd, ports
    finally:
        started = time.monotonic()
        run([*cmd, "down", "-t", "45"], timeout=300, env=env, check=False)
        print(f"compose down in {time.monotonic() - started:.1f} s")


@pytest.mark.timeout(1_800)  # the first `up` builds both images
def test_compose_stack_delivers_the_seeded_records(
    stack: tuple[list[str], dict[str, str]],
) -> None:
    cmd, ports = stack
    admin = f"http://127.0.0.1:{ports['SINK_ADMIN_HOST_PORT']}"
    emulator = f"http://127.0.0.1:{ports['EMULATOR_HOST_PORT']}"
    broker = f"127.0.0.1:{ports['KAFKA_HOST_PORT']}"

    def accepted() -> int:
        status, body = get(f"{emulator}/_emulator/stats")
        return int(json.loads(body)["records"]) if status == 200 else 0

    started = time.monotonic()
    wait_until(lambda: accepted() >= SEEDED, 300, 1.0, what=f"{SEEDED} records at the emulator")
    print(f"{SEEDED} records delivered {time.monotonic() - started:.1f} s after up")
    wait_until(lambda: get(f"{admin}/readyz")[0] == 200, 60, 1.0, what="/readyz ready")
    # Everything seeded reached the emulator, once, and the group committed it all.
    ends = end_offsets(broker, "crm.accounts")
    assert sum(ends.values()) == SEEDED == accepted()
    wait_until(lambda: committed(broker, "clari-sink", "crm.accounts") == ends, 30, 1.0,
               what="the sink's group committed every record")  # fmt: skip
    metrics = get(f"{admin}/metrics")[1]
    assert "clari_sink_records_delivered_total 5000.0" in metrics

    addr = outward_address()
    if addr is not None:  # published on loopback only: not reachable on the host's address
        for port in ports.values():
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((addr, int(port))) != 0, f"{addr}:{port} answers"
    ps = run([*cmd, "ps"]).stdout
    assert "sink" in ps and "emulator" in ps

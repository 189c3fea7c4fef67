"""The image as users run it: built from the Dockerfile with the engine the Makefile names
(ENGINE), then run: --help, the emulator, and the sink end to end against the test
broker (host network: the broker advertises 127.0.0.1), stopped by SIGTERM."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from devkit.kafka_local import free_port
from devkit.sample_data import crm_record
from tests.deploy_tools import require, run
from tests.support import (
    committed,
    consume_all,
    create_topic,
    produce_json,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration
IMAGE = "localhost/clari-sink:test"
RECORDS = 20_000


@pytest.fixture(scope="module")
def engine() -> list[str]:
    (eng,) = require("ENGINE")
    started = time.monotonic()
    run([*eng, "build", "--target", "sink", "-t", IMAGE, "."], timeout=1_500)
    print(f"image built in {time.monotonic() - started:.1f} s")
    return eng


@pytest.fixture
def containers(engine: list[str]) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        run([*engine, "rm", "-f", "-t", "0", name], check=False)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.timeout(1_800)  # a first build of the image, with its locked dependencies
def test_help_and_image_settings(engine: list[str]) -> None:
    # Every `run` costs a copy of the image with some storage drivers: one here; what
    # runs inside is checked in the running sink below.
    shown = run([*engine, "run", "--rm", IMAGE, "--help"])
    assert "emulator" in shown.stdout and "check-config" in shown.stdout
    fmt = "{{.Config.User}}|{{json .Config.Healthcheck.Test}}|{{json .Config.Entrypoint}}"
    inspected = run([*engine, "image", "inspect", "--format", fmt, IMAGE]).stdout.strip()
    user, health, entry = inspected.split("|")
    assert user == "10001:10001"
    assert "ADMIN_PORT" in health and "/healthz" in health
    assert entry.strip() == '["clari-sink"]'


@pytest.mark.timeout(1_800)
def test_sink_delivers_from_the_broker_and_drains_on_sigterm(
    engine: list[str], kafka: str, containers: list[str]
) -> None:
    emu_port, admin_port = free_port(), free_port()
    emulator, sink = unique("emulator"), unique("sink")
    hardened = ["--network", "host", "--read-only", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges"]  # fmt: skip
    containers += [emulator, sink]
    # Latency per call, so that SIGTERM arrives with batches in flight.
    run([*engine, "run", "-d", "--name", emulator, *hardened, IMAGE, "emulator",
         "--host", "127.0.0.1", "--port", str(emu_port), "--api-token", "img-token",
         "--partner-key", "img-partner", "--latency-ms", "1000"])  # fmt: skip
    base = f"http://127.0.0.1:{emu_port}"
    wait_until(lambda: get(f"{base}/_emulator/health")[0] == 200, 60, what="emulator up")

    topic = create_topic(kafka, unique("crm"), partitions=3)
    produce_json(kafka, topic, [crm_record("account", i) for i in range(RECORDS)])
    group = unique("group")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": group,
        "CLARI_BASE_URL": f"{base}/v2", "CLARI_ENTITY_TYPE": "Account",
        "CLARI_API_TOKEN": "img-token", "CLARI_PARTNER_KEY": "img-partner",
        "RESPONSE_TOPIC": unique("responses"), "DLQ_TOPIC": unique("dlq"),
        # Not the image's 8080: the health check must follow it.
        "ADMIN_PORT": str(admin_port), "ADMIN_HOST": "127.0.0.1",
        "SINK_KEY_LANES": "1", "SINK_COMMIT_INTERVAL_MS": "200", "LOG_FORMAT": "text",
        # Calls of 1 s, one per partition at a time: about a minute of work, so SIGTERM
        # comes mid-stream; little buffered, so the drain (what is queued too) ends in a
        # few seconds, well within SINK_SHUTDOWN_TIMEOUT_S: a clean stop, exit 0.
        "SINK_MAX_BUFFERED_RECORDS": "300",
    }  # fmt: skip
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    run([*engine, "run", "-d", "--name", sink, *hardened, *env_args, IMAGE, "run"])
    admin = f"http://127.0.0.1:{admin_port}"

    def accepted() -> int:
        status, body = get(f"{base}/_emulator/stats")
        return int(json.loads(body)["records"]) if status == 200 else 0

    wait_until(lambda: get(f"{admin}/readyz")[0] == 200, 90, what="/readyz ready")
    wait_until(lambda: accepted() >= 300, 90, what="records reaching the emulator")
    # Inside the running container: not root, and no dev kit in the sink's image.
    assert run([*engine, "exec", sink, "id", "-u"]).stdout.strip() == "10001"
    devkit = run([*engine, "exec", sink, "python", "-c", "import devkit"], check=False)
    assert devkit.returncode != 0 and "No module named 'devkit'" in devkit.stderr
    health = run([*engine, "healthcheck", "run", sink], check=False)
    no_such_command = "not a docker command" in health.stderr or "unknown" in health.stderr
    if not no_such_command:  # podman runs the image's HEALTHCHECK by hand; docker cannot
        assert health.returncode == 0, health.stderr
    metrics = get(f"{admin}/metrics")[1]
    lag_lines = [ln for ln in metrics.splitlines() if ln.startswith("clari_sink_consumer_lag{")]
    assert len(lag_lines) == 3, metrics[-2000:]

    run([*engine, "kill", "--signal", "TERM", sink])
    code = run([*engine, "wait", sink], timeout=90).stdout.strip().splitlines()[-1]
    logs = run([*engine, "logs", sink]).stdout + run([*engine, "logs", sink]).stderr
    assert code == "0", logs[-3000:]
    assert "sink stopped" in logs
    # Nothing lost: every record below the committed offsets reached the emulator (what
    # was sent and not committed comes again after a restart: at least once).
    status, body = get(f"{base}/_emulator/records")
    assert status == 200
    received = {r["record"]["id"] for r in json.loads(body)["records"]}
    offsets = committed(kafka, group, topic)
    below = [
        m.value()
        for m in consume_all(kafka, topic, expect=RECORDS)
        if m.offset() < offsets[m.partition()]
    ]
    missing = [v for v in below if json.loads(v)["id"] not in received]
    print(f"SIGTERM after {len(received)} of {RECORDS} records; committed {offsets}")
    assert below and not missing, (offsets, len(missing), logs[-3000:])
    # The drain finished what it had sent and committed it: exactly what Clari took.
    assert sum(offsets.values()) == len(received), (offsets, len(received), logs[-3000:])
    assert sum(offsets.values()) < RECORDS  # it was stopped mid-stream: the drain was tested
    assert "img-token" not in logs and "img-partner" not in logs

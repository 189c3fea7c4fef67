"""Sample payloads, test sends, activation, null values and poison records."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from devkit.kafka_local import free_port
from devkit.sample_data import crm_record
from tests.support import (
    Emulator,
    SinkProcess,
    all_committed,
    committed,
    consume_all,
    create_topic,
    headers_of,
    produce,
    produce_json,
    seeded_topic,
    sink_env,
    unique,
    wait_all_committed,
    wait_until,
)

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sink.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sample_shows_exact_requests_without_committing(kafka: str, emulator: Emulator) -> None:
    sent = [crm_record("account", i) | {"ssn": "x"} for i in range(7)]
    topic = seeded_topic(kafka, sent)
    env = sink_env(
        kafka,
        emulator,
        topic,
        BATCH_SIZE=3,
        CLARI_EXCLUDE_ATTRIBUTES="ssn",
        CLARI_REQUEST_HEADERS="X-Team:revops,X-Custom-Auth:custom-secret-123",
        CLARI_SAFE_HEADERS="X-Team",
        CLARI_IS_LAST_BATCH="false",
    )
    done = cli(env, "sample", "--records", "7", "--json")
    assert done.returncode == 0, done.stderr
    out = orjson.loads(done.stdout)
    reqs = out["requests"]
    assert [r["records"] for r in reqs] == [3, 3, 1]
    assert reqs[0]["method"] == "POST"
    assert reqs[0]["url"] == (
        f"{emulator.url}/v2/ingest/entity/account?mode=incremental&isLastBatch=false"
    )
    assert reqs[0]["headers"]["apikey"] == "****" and reqs[0]["headers"]["partnerkey"] == "****"
    assert reqs[0]["headers"]["X-Team"] == "revops"  # listed as safe
    assert reqs[0]["headers"]["X-Custom-Auth"] == "****"  # any other header is a credential
    assert reqs[0]["body"][0]["records"][0] == {k: v for k, v in sent[0].items() if k != "ssn"}
    assert "test-token" not in done.stdout + done.stderr
    assert "custom-secret-123" not in done.stdout + done.stderr
    text = cli(env, "sample", "--records", "2")
    assert "POST " in text.stdout and "apikey: ****" in text.stdout
    assert "X-Custom-Auth: ****" in text.stdout and "custom-secret-123" not in text.stdout
    assert emulator.api_requests() == []
    assert all(o < 0 for o in committed(kafka, env["KAFKA_GROUP_ID"], topic).values())


def test_test_send_sends_a_sample_or_an_edited_file(
    kafka: str, emulator: Emulator, tmp_path: Path
) -> None:
    topic = seeded_topic(kafka, [crm_record("account", i) for i in range(3)])
    env = sink_env(kafka, emulator, topic)
    done = cli(env, "test-send")
    assert done.returncode == 0, done.stderr
    assert "HTTP 200" in done.stdout
    assert len(emulator.records()) == 3
    edited = tmp_path / "body.json"
    edited.write_text(
        json.dumps([{"sourceEntity": "crm_account", "records": [{"id": "EDITED", "createdAt": 1}]}])
    )
    done = cli(env, "test-send", "--file", str(edited))
    assert done.returncode == 1
    assert "HTTP 400" in done.stdout and "Missing required field updatedAt" in done.stdout
    assert emulator.api_requests()[-1]["body"] == edited.read_text()
    assert "test-token" not in done.stdout


ADMIN_TOKEN = "admin-token-for-the-tests"


def _admin(port: int, path: str, method: str = "GET") -> Any:
    # Changing the sink's state takes the admin token; reading it does not.
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if method == "POST" else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = resp.read()
    return body.decode() if path == "/metrics" else json.loads(body)


def test_inactive_sends_nothing_then_activation_delivers_everything(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    topic = seeded_topic(kafka, [crm_record("account", i) for i in range(300)], partitions=2)
    port = free_port()
    env = sink_env(
        kafka, emulator, topic, SINK_ACTIVE="false", ADMIN_PORT=port, ADMIN_TOKEN=ADMIN_TOKEN
    )
    sink = SinkProcess(env, log_dir=logs).start()
    try:
        wait_until(
            lambda: _try(lambda: _admin(port, "/admin/state")["assigned"]),
            30,
            what="partitions assigned",
        )
        assert _admin(port, "/healthz")["status"] == "alive"
        time.sleep(2)
        assert emulator.api_requests() == []
        assert "clari_sink_active 0.0" in _admin(port, "/metrics")
        anonymous = urllib.request.Request(f"http://127.0.0.1:{port}/admin/activate", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(anonymous, timeout=5)
        assert refused.value.code == 401
        assert _admin(port, "/admin/state")["active"] is False
        _admin(port, "/admin/activate", "POST")
        wait_until(lambda: len(emulator.records()) == 300, 30, what="delivery after activation")
        _admin(port, "/admin/deactivate", "POST")
        produce_json(kafka, topic, [crm_record("account", i) for i in range(300, 400)])
        time.sleep(2.5)
        assert len(emulator.records()) == 300
        assert _admin(port, "/admin/state")["active"] is False
        _admin(port, "/admin/activate", "POST")
        wait_until(lambda: len(emulator.records()) == 400, 30, what="the rest")
        assert "clari_sink_active 1.0" in _admin(port, "/metrics")
        wait_all_committed(kafka, env, topic, 20)
    finally:
        sink.signal(signal.SIGTERM)
        assert sink.wait(60) == 0, sink.output()
    ids = [r["record"]["id"] for r in emulator.records()]
    assert len(ids) == len(set(ids)) == 400


def _try(fn: Any) -> Any:
    try:
        return fn()
    except OSError:
        return None


def _mixed_topic(kafka: str) -> tuple[str, list[tuple[bytes | None, bytes | None]]]:
    topic = create_topic(kafka, unique("mixed"))
    msgs: list[tuple[bytes | None, bytes | None]] = []
    for i in range(30):
        if i in (4, 17):
            msgs.append((f"k{i}".encode(), None))  # tombstones
        elif i == 9:
            msgs.append((b"k9", b"{not json"))
        elif i == 22:
            msgs.append((b"k22", b"[1, 2, 3]"))
        else:
            msgs.append((f"k{i}".encode(), orjson.dumps(crm_record("account", i))))
    produce(kafka, topic, msgs)
    return topic, msgs


@pytest.mark.parametrize("policy", ["skip", "dead-letter"])
def test_null_values_and_poison_records(
    kafka: str, emulator: Emulator, logs: Path, policy: str
) -> None:
    topic, _ = _mixed_topic(kafka)
    env = sink_env(kafka, emulator, topic, SINK_NULL_VALUES=policy)
    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()
    assert len(emulator.records()) == 26
    dead = consume_all(kafka, env["DLQ_TOPIC"], expect=4 if policy == "dead-letter" else 2)
    reasons = {
        int(headers_of(m)["clari-sink.source.offset"]): headers_of(m)["clari-sink.error.reason"]
        for m in dead
    }
    expected = {9: b"invalid-json", 22: b"not-an-object"}
    if policy == "dead-letter":
        expected |= {4: b"null-value", 17: b"null-value"}
    assert reasons == expected
    poison = next(m for m in dead if headers_of(m)["clari-sink.source.offset"] == b"9")
    assert poison.value() == b"{not json" and poison.key() == b"k9"
    assert headers_of(poison)["clari-sink.source.topic"] == topic.encode()
    assert all_committed(kafka, env, topic)


def test_null_values_fail_stops_without_committing_past_it(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    topic, _ = _mixed_topic(kafka)
    env = sink_env(kafka, emulator, topic, SINK_NULL_VALUES="fail")
    sink = SinkProcess(env, "--until-drained", log_dir=logs).start()
    assert sink.wait(60) == 1
    assert "SINK_NULL_VALUES=fail" in sink.output()
    assert committed(kafka, env["KAFKA_GROUP_ID"], topic)[0] <= 4

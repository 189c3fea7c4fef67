"""The sink over secured listeners of a real broker: SASL_SSL with SCRAM-SHA-512, mTLS
and OAUTHBEARER (OIDC client credentials) end to end (group consumer, response producer,
replay consumer), and settings the broker, the TLS handshake or the token endpoint
refuses, which must stop the start at once, naming the setting, never hang."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from devkit.kafka_local import CLIENT_KEY_PASSWORD, Broker
from devkit.sample_data import crm_record
from tests.secure_broker import (
    OIDC_CLIENT_SECRET,
    OIDC_SCOPE,
    TokenEndpoint,
    listeners,
    mtls_settings,
    oauth_settings,
    scram_settings,
    secure_broker_fixture,  # noqa: F401 - the fixture secure_broker
    ssl_settings,
    token_endpoint_fixture,  # noqa: F401 - the fixture token_endpoint
)
from tests.support import (
    Emulator,
    SinkProcess,
    all_committed,
    responses,
    seeded_topic,
    sink_env,
    unique,
    wait_all_committed,
)

pytestmark = pytest.mark.integration
START_CHECK_BOUND_S = 30  # the start-up check gives up after 15 s; a refusal comes sooner


def _describe_member(plain: str, group: str) -> tuple[str, str | None]:
    """The client id and group instance id the broker sees for the group's one member."""
    admin = AdminClient({"bootstrap.servers": plain})
    description = admin.describe_consumer_groups([group])[group].result(15)
    (member,) = description.members
    return member.client_id, member.group_instance_id


def test_end_to_end_over_sasl_ssl_scram(
    secure_broker: Broker,
    emulator: Emulator,
    logs: Path,
) -> None:
    """Records go from a topic to Clari, responses to their topic and offsets to the
    group, over SASL_SSL only; client id and a passed-through property reach the broker."""
    plain = secure_broker.bootstrap
    sent = [crm_record("account", i) for i in range(300)]
    topic = seeded_topic(plain, sent, partitions=2)
    client_id = unique("clari-sink-scram")
    env = sink_env(
        plain,
        emulator,
        topic,
        **scram_settings(secure_broker),
        KAFKA_CLIENT_ID=client_id,
        KAFKA_CONSUMER_GROUP_INSTANCE_ID="clari-sink-0",  # static membership, passed through
        KAFKA_PRODUCER_COMPRESSION_TYPE="zstd",
        KAFKA_CLIENT_SOCKET_KEEPALIVE_ENABLE="true",
    )
    sink = SinkProcess(env, log_dir=logs).start()
    try:
        wait_all_committed(plain, env, topic, timeout=90)
        assert _describe_member(plain, env["KAFKA_GROUP_ID"]) == (client_id, "clari-sink-0")
    finally:
        sink.signal(signal.SIGTERM)
    assert sink.wait(60) == 0, sink.output()
    assert sorted(r["record"]["id"] for r in emulator.records()) == sorted(r["id"] for r in sent)
    calls = [m for m in responses(plain, env) if m["kind"] == "ingest"]
    assert sum(m["recordCount"] for m in calls if m["status"] == 200) == len(sent)
    assert all_committed(plain, env, topic)
    assert env["KAFKA_SASL_PASSWORD"] not in sink.output()


def test_end_to_end_over_mtls_with_replay(
    secure_broker: Broker,
    emulator: Emulator,
    logs: Path,
) -> None:
    """Over mTLS (encrypted client key): a bulk job fails, so its records are read back
    from Kafka by the replay consumer, over the same listener, and sent again."""
    plain = secure_broker.bootstrap
    emulator.state.faults.fail_next_jobs = 1
    sent = [crm_record("contact", i) for i in range(120)]
    topic = seeded_topic(plain, sent, partitions=1)
    env = sink_env(
        plain,
        emulator,
        topic,
        **mtls_settings(secure_broker),
        CLARI_TEMPLATE="ingest-bulk-entities",
        CLARI_ENTITY_TYPE="Contact",
        BATCH_SIZE=1000,
        JOB_POLL_INITIAL_MS=50,
        RETRY_BACKOFF_INITIAL_MS=10,
        LOG_LEVEL="INFO",
    )
    out = SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()
    assert "read 120 record(s) back from Kafka" in out
    assert sorted(r["record"]["id"] for r in emulator.records()) == sorted(r["id"] for r in sent)
    finals = [m["jobStatus"] for m in responses(plain, env) if m["kind"] == "job-status"]
    assert sorted(finals) == ["FAILED", "SUCCESS"], finals
    assert all_committed(plain, env, topic)
    assert CLIENT_KEY_PASSWORD not in out


def test_end_to_end_over_oauthbearer_oidc(
    secure_broker: Broker, emulator: Emulator, token_endpoint: TokenEndpoint, logs: Path
) -> None:
    """librdkafka gets its token from the OIDC endpoint with the client credentials and
    the scope, and both clients work over the OAUTHBEARER listener with it."""
    plain = secure_broker.bootstrap
    sent = [crm_record("account", i) for i in range(100)]
    topic = seeded_topic(plain, sent)
    env = sink_env(plain, emulator, topic, **oauth_settings(secure_broker, token_endpoint))
    out = SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()
    assert sorted(r["record"]["id"] for r in emulator.records()) == sorted(r["id"] for r in sent)
    assert len(responses(plain, env)) >= 1
    assert all_committed(plain, env, topic)
    assert token_endpoint.requests  # one per client at least
    assert all(r == {"grant_type": "client_credentials", "scope": OIDC_SCOPE}
               for r in token_endpoint.requests)  # fmt: skip
    assert OIDC_CLIENT_SECRET not in out


REFUSALS = {
    # case: (settings, the variable named, words of the reason)
    "wrong SCRAM password": (
        lambda b, _: scram_settings(b, password="not-the-password"),
        "KAFKA_SASL_PASSWORD",
        "refused user 'clari-sink' with SCRAM-SHA-512",
    ),
    "broker certificate from an untrusted CA": (
        lambda b, _: ssl_settings(b, ca=str(listeners(b).certs.other_ca)),
        "KAFKA_SSL_CA_LOCATION",
        "the broker's certificate is not trusted",
    ),
    "no client certificate on the mTLS listener": (
        lambda b, _: mtls_settings(b, client="none"),
        "KAFKA_SSL_CERTIFICATE_LOCATION",
        "requires a client certificate (mTLS) and none is set",
    ),
    "client certificate from an untrusted CA": (
        lambda b, _: mtls_settings(b, client="rogue"),
        "KAFKA_SSL_CERTIFICATE_LOCATION",
        "refused the client certificate",
    ),
    "wrong client key password": (
        lambda b, _: mtls_settings(b, key_password="not-the-key-password"),
        "KAFKA_SSL_KEY_PASSWORD",
        "does not open with this password",
    ),
    "OIDC client secret the token endpoint refuses": (
        lambda b, endpoint: oauth_settings(b, endpoint, secret="not-the-oidc-secret"),
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
        "Failed to acquire SASL OAUTHBEARER token",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_settings_stop_the_start_naming_the_setting(
    case: str,
    secure_broker: Broker,
    emulator: Emulator,
    token_endpoint: TokenEndpoint,
    logs: Path,
) -> None:
    make, variable, reason = REFUSALS[case]
    topic = seeded_topic(secure_broker.bootstrap, [crm_record("account", 1)])
    env = sink_env(secure_broker.bootstrap, emulator, topic, **make(secure_broker, token_endpoint))
    sink = SinkProcess(env, log_dir=logs).start()
    started = time.monotonic()
    code = sink.wait(START_CHECK_BOUND_S)
    took = time.monotonic() - started
    out = sink.output()
    assert code == 2, out
    assert "Kafka refuses these settings, not starting" in out
    line = next(x for x in out.splitlines() if x.startswith(f"  - {variable}:"))
    assert reason in line, out
    secrets = ("not-the-password", "not-the-key-password", "not-the-oidc-secret")
    for secret in (*secrets, CLIENT_KEY_PASSWORD, OIDC_CLIENT_SECRET):
        assert secret not in out
    assert emulator.api_requests() == []  # nothing was sent
    print(f"{case}: exit 2 after {took:.1f}s")

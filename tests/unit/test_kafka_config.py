"""Kafka client settings as a user sets them: properties by prefix, what is refused and
why, the security settings' checks, and what check-config prints. No broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sink import kafka_check, kafka_config
from sink.config import Settings, describe_errors

BASE = {
    "KAFKA_TOPICS": "crm.accounts",
    "CLARI_ENTITY_TYPE": "Account",
    "CLARI_API_TOKEN": "tok-0123456789",
    "CLARI_PARTNER_KEY": "pk-0123456789",
}
SASL_PASSWORD = "sasl-pass-0123456789"
KEY_PASSWORD = "key-pass-0123456789"
OIDC_SECRET = "oidc-secret-0123456789"


def settings(**values: str) -> Settings:
    return Settings(**{**BASE, **values})


def errors(**values: str) -> list[str]:
    with pytest.raises(ValueError) as info:
        settings(**values)
    return describe_errors(info.value)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sink.cli", *args],
        env={"PATH": "/usr/bin:/bin", **BASE, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "prop"),
    [
        ("KAFKA_CONSUMER_FETCH_MAX_BYTES", "fetch.max.bytes"),
        ("KAFKA_PRODUCER_LINGER_MS", "linger.ms"),
        (
            "KAFKA_CLIENT_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
            "ssl.endpoint.identification.algorithm",
        ),
        ("KAFKA_CLIENT_SOME__UNDERSCORE", "some_underscore"),
        ("KAFKA_CLIENT_SOME___DASH", "some-dash"),
        ("kafka_consumer_client_rack", "client.rack"),
    ],
)
def test_a_variable_names_its_property_as_the_kafka_images_do(variable: str, prop: str) -> None:
    found = kafka_config.passthrough_of(variable, "x")
    assert found is not None and found.name == prop


def test_properties_reach_their_clients_and_a_clients_own_prefix_wins() -> None:
    s = settings(
        KAFKA_CLIENT_SOCKET_KEEPALIVE_ENABLE="true",
        KAFKA_CLIENT_STATISTICS_INTERVAL_MS="1000",
        KAFKA_CONSUMER_STATISTICS_INTERVAL_MS="5000",
        KAFKA_CONSUMER_FETCH_MAX_BYTES="1048576",
        KAFKA_PRODUCER_COMPRESSION_TYPE="zstd",
    )
    consumer, producer = kafka_config.consumer(s), kafka_config.producer(s)
    assert consumer["socket.keepalive.enable"] == producer["socket.keepalive.enable"] == "true"
    assert consumer["statistics.interval.ms"] == "5000"
    assert producer["statistics.interval.ms"] == "1000"
    assert consumer["fetch.max.bytes"] == "1048576"  # over the sink's fetch tuning
    assert "fetch.max.bytes" not in producer
    assert producer["compression.type"] == "zstd" and "compression.type" not in consumer
    # The sink's own stay: commits only of resolved records, committed reads.
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["isolation.level"] == "read_committed"


def test_security_settings_reach_every_client() -> None:
    s = settings(
        KAFKA_SECURITY_PROTOCOL="sasl_ssl",
        KAFKA_SASL_MECHANISM="scram-sha-512",
        KAFKA_SASL_USERNAME="clari",
        KAFKA_SASL_PASSWORD=SASL_PASSWORD,
        KAFKA_CLIENT_ID="clari-sink-prod",
    )
    for conf in (kafka_config.consumer(s), kafka_config.consumer(s, group=False),
                 kafka_config.producer(s)):  # fmt: skip
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
        assert conf["sasl.password"] == SASL_PASSWORD
        assert conf["client.id"] == "clari-sink-prod"


@pytest.mark.parametrize(
    ("variable", "reason"),
    [
        ("KAFKA_CONSUMER_ENABLE_AUTO_COMMIT", "only once every record up to it is resolved"),
        ("KAFKA_CONSUMER_ENABLE_AUTO_OFFSET_STORE", "only once every record up to it is resolved"),
        ("KAFKA_CLIENT_GROUP_ID", "set KAFKA_GROUP_ID"),
        ("KAFKA_CONSUMER_ISOLATION_LEVEL", "aborted transaction"),
        ("KAFKA_CONSUMER_PARTITION_ASSIGNMENT_STRATEGY", "set KAFKA_ASSIGNMENT_STRATEGY"),
        ("KAFKA_CONSUMER_GROUP_PROTOCOL", "classic group protocol"),
        ("KAFKA_PRODUCER_ACKS", "acks=all"),
        ("KAFKA_PRODUCER_ENABLE_IDEMPOTENCE", "duplicated"),
        ("KAFKA_PRODUCER_TRANSACTIONAL_ID", "not transactional"),
        ("KAFKA_CLIENT_BOOTSTRAP_SERVERS", "set KAFKA_BOOTSTRAP_SERVERS"),
        ("KAFKA_CLIENT_CLIENT_ID", "set KAFKA_CLIENT_ID"),
        ("KAFKA_CLIENT_SASL_PASSWORD", "set KAFKA_SASL_PASSWORD"),
        ("KAFKA_CONSUMER_ERROR__CB", "takes a Python object"),
        ("KAFKA_CONSUMER_", "not a librdkafka property name"),
    ],
)
def test_properties_the_sink_owns_are_refused_with_the_reason(variable: str, reason: str) -> None:
    (line,) = errors(**{variable: "1"})
    assert line.startswith(variable) and reason in line


def test_every_refused_property_is_named_at_once_and_secrets_are_not_echoed() -> None:
    lines = errors(
        KAFKA_CONSUMER_ENABLE_AUTO_COMMIT="true",
        KAFKA_PRODUCER_ACKS="1",
        KAFKA_CLIENT_SASL_PASSWORD=SASL_PASSWORD,
        BATCH_SIZE="0",
    )
    assert len(lines) == 4, lines
    assert SASL_PASSWORD not in "\n".join(lines)


def test_kubernetes_service_links_are_no_properties() -> None:
    s = settings(
        KAFKA_CLIENT_SERVICE_HOST="10.0.0.1",
        KAFKA_CLIENT_PORT="tcp://10.0.0.1:9092",
        KAFKA_CONSUMER_SERVICE_PORT_METRICS="8080",
    )
    assert s.kafka_properties == []


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
            "KAFKA_SASL_OAUTHBEARER_CLIENT_ID: KAFKA_SASL_OAUTHBEARER_CLIENT_ID, "
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET, KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL "
            "required with KAFKA_SASL_MECHANISM=OAUTHBEARER",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
            "KAFKA_SASL_MECHANISM: KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and "
            "KAFKA_SASL_PASSWORD are required with KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_MECHANISM": "PLAIN"},
            "KAFKA_SASL_MECHANISM: PLAIN is used only with KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTIFICATE_LOCATION": "/x.pem"},
            "KAFKA_SSL_KEY_LOCATION: required: a client certificate (mTLS) needs both",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD},
            "KAFKA_SSL_KEY_PASSWORD: set without KAFKA_SSL_KEY_LOCATION",
        ),
        (
            {"KAFKA_SSL_CA_LOCATION": "/etc/ca.pem"},
            "KAFKA_SSL_CA_LOCATION: set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT encrypts nothing",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"},
            "KAFKA_SSL_CA_LOCATION='/no/such/ca.pem': no such file",
        ),
    ],
)
def test_security_settings_that_cannot_work_are_refused(
    values: dict[str, str], expected: str
) -> None:
    lines = errors(**values)
    assert any(line.startswith(expected) for line in lines), lines
    assert KEY_PASSWORD not in "\n".join(lines)


def oidc(**values: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "clari-sink",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": OIDC_SECRET,
        "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://idp.example.com/oauth2/token",
        **values,
    }


def test_oauthbearer_uses_oidc_client_credentials() -> None:
    s = settings(
        **oidc(KAFKA_SASL_OAUTHBEARER_EXTENSIONS="logicalCluster=lkc-1,identityPoolId=p-1")
    )
    conf = kafka_config.producer(s)
    assert conf["sasl.oauthbearer.method"] == "oidc"
    assert conf["sasl.oauthbearer.client.secret"] == OIDC_SECRET
    assert conf["sasl.oauthbearer.extensions"] == "logicalCluster=lkc-1,identityPoolId=p-1"
    assert "sasl.username" not in conf
    assert kafka_check.offline_problems(s) == []  # librdkafka takes them


def test_an_oauthbearer_token_would_not_travel_unencrypted() -> None:
    (line,) = errors(
        **oidc(KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL="http://idp.example.com/token")
    )
    assert line.startswith("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL")
    assert "KAFKA_ALLOW_INSECURE_SASL=true" in line
    (line,) = errors(
        **oidc(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_BOOTSTRAP_SERVERS="kafka:9092")
    )
    assert "would send the Kafka token unencrypted to kafka" in line


def test_librdkafka_names_the_variable_of_a_property_it_refuses() -> None:
    s = settings(KAFKA_CONSUMER_FETCH_MAX_BYTEZ="1", KAFKA_PRODUCER_LINGER_MS="soon")
    problems = [str(p) for p in kafka_check.offline_problems(s)]
    assert problems[0].startswith("KAFKA_CONSUMER_FETCH_MAX_BYTEZ='1': No such configuration")
    assert problems[1].startswith("KAFKA_PRODUCER_LINGER_MS='soon': Invalid value")


def test_check_config_prints_the_effective_client_configs_with_secrets_masked() -> None:
    done = cli(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "clari",
            "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
            "KAFKA_CONSUMER_FETCH_MAX_BYTES": "1048576",
            "KAFKA_CLIENT_SASL_OAUTHBEARER_CONFIG": f"secret={OIDC_SECRET}",
        },
        "check-config",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "# librdkafka consumer (also the sample and replay consumers):" in out
    assert "#   fetch.max.bytes=1048576" in out
    assert "#   sasl.password=****" in out and "#   sasl.oauthbearer.config=****" in out
    assert "KAFKA_CLIENT_SASL_OAUTHBEARER_CONFIG=****" in out
    assert "#   enable.auto.commit=false" in out
    assert "acks=all" in out
    assert SASL_PASSWORD not in out + done.stderr and OIDC_SECRET not in out + done.stderr


def test_a_settings_file_may_hold_client_properties(tmp_path: Path) -> None:
    path = tmp_path / "sink.env"
    path.write_text("KAFKA_CONSUMER_FETCH_MAX_BYTES=2097152\nKAFKA_PRODUCER_ACKS=0\n")
    done = cli({}, "check-config", "--config", str(path))
    assert done.returncode == 2
    assert "KAFKA_PRODUCER_ACKS='0': acks is the sink's own" in done.stderr
    assert "FETCH_MAX_BYTES" not in done.stderr  # accepted, not "not a setting"


def test_check_config_has_librdkafka_read_the_certificate_files(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    done = cli(
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": str(tmp_path / "ca.pem")},
        "check-config",
    )
    assert done.returncode == 2
    assert "  - KAFKA_SSL_CA_LOCATION: ssl.ca.location failed" in done.stderr

"""A broker with secured listeners (devkit.kafka_local.start(secure=True)), for the Kafka
security tests, and the sink settings that reach each listener.

The plain listener of the same broker seeds and reads topics (tests.support's helpers);
the sink under test connects only to a secured one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit import kafka_local
from devkit.kafka_local import CLIENT_KEY_PASSWORD, Broker, SecureListeners


@pytest.fixture(name="secure_broker", scope="module")
def secure_broker_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Its own broker even when $KAFKA_BOOTSTRAP_SERVERS names one: the listeners, users
    and certificates must be ours."""
    broker = kafka_local.start(tmp_path_factory.mktemp("kafka-secure"), secure=True)
    try:
        yield broker
    finally:
        broker.stop()


def listeners(broker: Broker) -> SecureListeners:
    assert broker.secure is not None
    return broker.secure


def scram_settings(broker: Broker, password: str | None = None) -> dict[str, str]:
    sec = listeners(broker)
    user, right = next(iter(sec.users.items()))
    return {
        "KAFKA_BOOTSTRAP_SERVERS": sec.address(sec.sasl_ssl_port),
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": user,
        "KAFKA_SASL_PASSWORD": right if password is None else password,
        "KAFKA_SSL_CA_LOCATION": str(sec.certs.ca),
    }


def ssl_settings(broker: Broker, ca: str | None = None) -> dict[str, str]:
    """The SSL listener: the broker's certificate only."""
    sec = listeners(broker)
    return {
        "KAFKA_BOOTSTRAP_SERVERS": sec.address(sec.ssl_port),
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_LOCATION": ca or str(sec.certs.ca),
    }


def mtls_settings(
    broker: Broker, client: str = "client", key_password: str | None = None
) -> dict[str, str]:
    """The mTLS listener with the client certificate ``client`` (``client``: signed by
    the broker's CA, key encrypted; ``rogue``: signed by another CA; ``none``)."""
    sec = listeners(broker)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": sec.address(sec.mtls_port),
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_LOCATION": str(sec.certs.ca),
    }
    if client == "client":
        env.update(
            KAFKA_SSL_CERTIFICATE_LOCATION=str(sec.certs.client_cert),
            KAFKA_SSL_KEY_LOCATION=str(sec.certs.client_key),
            KAFKA_SSL_KEY_PASSWORD=key_password or CLIENT_KEY_PASSWORD,
        )
    elif client == "rogue":
        env.update(
            KAFKA_SSL_CERTIFICATE_LOCATION=str(sec.certs.rogue_cert),
            KAFKA_SSL_KEY_LOCATION=str(sec.certs.rogue_key),
        )
    return env

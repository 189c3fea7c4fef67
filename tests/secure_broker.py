"""A broker with secured listeners (devkit.kafka_local.start(secure=True)), for the Kafka
security tests, and the sink settings that reach each listener.

The plain listener of the same broker seeds and reads topics (tests.support's helpers);
the sink under test connects only to a secured one."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from devkit import kafka_local
from devkit.kafka_local import CLIENT_KEY_PASSWORD, Broker, SecureListeners
from tests.support import LoopbackApp

OIDC_CLIENT_ID = "clari-sink"
OIDC_CLIENT_SECRET = "oidc-client-secret"
OIDC_SCOPE = "kafka"


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


def oauth_settings(
    broker: Broker, endpoint: TokenEndpoint, secret: str = OIDC_CLIENT_SECRET
) -> dict[str, str]:
    sec = listeners(broker)
    return {
        "KAFKA_BOOTSTRAP_SERVERS": sec.address(sec.oauth_port),
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CA_LOCATION": str(sec.certs.ca),
        "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": OIDC_CLIENT_ID,
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": secret,
        "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": f"{endpoint.url}/oauth2/token",
        "KAFKA_SASL_OAUTHBEARER_SCOPE": OIDC_SCOPE,
    }


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


class TokenEndpoint(LoopbackApp):
    """An OAuth 2 token endpoint for the client credentials grant (RFC 6749 4.4): the
    client authenticates with HTTP Basic; the answer is an unsigned JWT (the OAUTH
    listener checks no signature), or 401 ``invalid_client``."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, str]] = []

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth2/token", self._token)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(form)
        expected = base64.b64encode(f"{OIDC_CLIENT_ID}:{OIDC_CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        now = int(time.time())
        claims = {"sub": OIDC_CLIENT_ID, "iat": now, "exp": now + 3600, "scope": form.get("scope")}
        token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        )


@pytest.fixture(name="token_endpoint")
def token_endpoint_fixture() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    endpoint.serve()
    try:
        yield endpoint
    finally:
        endpoint.stop()

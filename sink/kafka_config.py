"""The librdkafka configurations of the sink's Kafka clients, built in one place.

Three clients talk to Kafka: the group consumer (and, configured the same way, the
``sample`` consumer and the replay consumer of sink/replay.py), and the producer of the
response and dead-letter topics (and its admin client). All take the same connection
and security settings; each takes any other librdkafka property from the environment,
named as the Kafka container images name them:

- ``KAFKA_CLIENT_<NAME>``: both clients; ``KAFKA_CONSUMER_<NAME>``: the consumers;
  ``KAFKA_PRODUCER_<NAME>``: the producer (a client's own prefix wins);
- ``<NAME>`` lower-cased, ``_`` for ``.``, ``__`` for ``_``, ``___`` for ``-``:
  ``KAFKA_CONSUMER_FETCH_MAX_BYTES`` is ``fetch.max.bytes``.

Properties that a setting covers are refused with that setting's name (one source of
truth, and the transport checks of sink/config.py see every credential), and so are the
properties the sink's guarantees rest on, each with its reason. librdkafka judges the
rest, and the broker the credentials, at start (sink/kafka_check.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sink.masking import MASK

if TYPE_CHECKING:
    from sink.config import Settings

Client = Literal["consumer", "producer"]
PREFIXES: dict[str, tuple[Client, ...]] = {
    "KAFKA_CLIENT_": ("consumer", "producer"),
    "KAFKA_CONSUMER_": ("consumer",),
    "KAFKA_PRODUCER_": ("producer",),
}
CLIENT_ID = "clari-sink"

# librdkafka's defaults prefetch up to 64 MB and, once that queue is full, wait a whole
# second (fetch.queue.backoff.ms) before fetching again. A small queue refilled at once
# measured 1.24M records/s of 1 KB at 75 MB peak RSS here, against 175k/s at 150 MB
# with the defaults (bench/README.md). KAFKA_CONSUMER_* may change them.
FETCH_TUNING: dict[str, Any] = {
    "queued.max.messages.kbytes": 2_048,
    "fetch.queue.backoff.ms": 5,
    "fetch.max.bytes": 4 * 1024 * 1024,
    "max.partition.fetch.bytes": 512 * 1024,
}
# A member learns that the group rebalances at its next heartbeat, and a cooperative
# rebalance has two rounds: with librdkafka's 3 s, a second member joining left the
# token's rate half used for 3-4 s and unused for 2 (bench uniform200-200ms-two-members:
# 6,917 and 7,806 records/s); every 500 ms, 8,227 and 8,344, no second under 78 calls.
# KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS may change it.
HEARTBEAT_INTERVAL_MS = 500
# The producer's defaults; KAFKA_PRODUCER_* may change them (not those in OWNED).
PRODUCER_TUNING: dict[str, Any] = {
    "linger.ms": 1,  # a batch waits for its response to be acknowledged
    "compression.type": "lz4",
    # Fail a write within a minute so the caller sees it, says so, and retries it.
    "message.timeout.ms": 60_000,
}

# Properties a setting covers: set the setting (its checks and masking apply).
SETTING_OF = {
    "bootstrap.servers": "KAFKA_BOOTSTRAP_SERVERS",
    "metadata.broker.list": "KAFKA_BOOTSTRAP_SERVERS",
    "security.protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl.mechanism": "KAFKA_SASL_MECHANISM",
    "sasl.mechanisms": "KAFKA_SASL_MECHANISM",
    "sasl.username": "KAFKA_SASL_USERNAME",
    "sasl.password": "KAFKA_SASL_PASSWORD",
    "ssl.ca.location": "KAFKA_SSL_CA_LOCATION",
    "ssl.certificate.location": "KAFKA_SSL_CERTIFICATE_LOCATION",
    "ssl.key.location": "KAFKA_SSL_KEY_LOCATION",
    "ssl.key.password": "KAFKA_SSL_KEY_PASSWORD",
    "sasl.oauthbearer.client.id": "KAFKA_SASL_OAUTHBEARER_CLIENT_ID",
    "sasl.oauthbearer.client.secret": "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
    "sasl.oauthbearer.token.endpoint.url": "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
    "sasl.oauthbearer.scope": "KAFKA_SASL_OAUTHBEARER_SCOPE",
    "sasl.oauthbearer.extensions": "KAFKA_SASL_OAUTHBEARER_EXTENSIONS",
    "client.id": "KAFKA_CLIENT_ID",
    "group.id": "KAFKA_GROUP_ID",
    "auto.offset.reset": "KAFKA_AUTO_OFFSET_RESET",
    "partition.assignment.strategy": "KAFKA_ASSIGNMENT_STRATEGY",
    "session.timeout.ms": "KAFKA_SESSION_TIMEOUT_MS",
    "max.poll.interval.ms": "KAFKA_MAX_POLL_INTERVAL_MS",
}
_COMMITS = "the sink stores and commits an offset only once every record up to it is resolved"
# Properties the sink's guarantees rest on: refused, with the reason.
OWNED = {
    "enable.auto.commit": _COMMITS,
    "enable.auto.offset.store": _COMMITS,
    "isolation.level": "the sink reads committed records only (read_committed): a record "
    "of an aborted transaction must never reach Clari",
    "group.protocol": "the sink's rebalance handling is built and tested on the classic "
    "group protocol; choose the assignor with KAFKA_ASSIGNMENT_STRATEGY",
    "group.remote.assignor": "the sink uses the classic group protocol; choose the "
    "assignor with KAFKA_ASSIGNMENT_STRATEGY",
    "enable.partition.eof": "the sink's consumers set it themselves",
    "enable.idempotence": "response and dead-letter writes must not be duplicated by the "
    "producer's own retries",
    "acks": "a batch counts as resolved only once its response is acknowledged by all "
    "in-sync replicas (acks=all)",
    "transactional.id": "the sink's producer is not transactional",
    "message.max.bytes": "response and dead-letter messages are cut to fit the sink's "
    "own limit (sink/reporting.py)",
}
# A value that can only be a Python object, never text from the environment.
_CALLBACK = re.compile(r".*_cb|logger|on_delivery|on_commit|default\.topic\.config")
# Property names whose values are credentials: masked wherever shown, never echoed.
_SECRET_PROPERTY = re.compile(r".*(password|secret|passphrase|\.pem|oauthbearer\.config|private).*")


@dataclass(frozen=True, slots=True)
class Passthrough:
    """One librdkafka property from the environment."""

    variable: str  # as set, upper-cased: KAFKA_CONSUMER_FETCH_MAX_BYTES
    name: str  # fetch.max.bytes
    value: str
    clients: tuple[Client, ...]

    @property
    def secret(self) -> bool:
        return is_secret(self.name)

    @property
    def own_prefix(self) -> bool:
        return len(self.clients) == 1


def is_secret(name: str) -> bool:
    return _SECRET_PROPERTY.fullmatch(name) is not None


def property_name(rest: str) -> str:
    """``FETCH_MAX_BYTES`` → ``fetch.max.bytes`` (``__`` → ``_``, ``___`` → ``-``)."""
    return (
        rest.lower()
        .replace("___", "\0")
        .replace("__", "\1")
        .replace("_", ".")
        .replace("\0", "-")
        .replace("\1", "_")
    )


def passthrough_of(variable: str, value: Any) -> Passthrough | None:
    """The property ``variable`` passes through, or None if it has no client prefix."""
    upper = variable.upper()
    for prefix, clients in PREFIXES.items():
        if upper.startswith(prefix):
            return Passthrough(upper, property_name(upper[len(prefix) :]), str(value), clients)
    return None


def refusal(prop: Passthrough) -> str | None:
    """Why the sink refuses ``prop``, or None."""
    name = prop.name
    if not name or name.startswith(".") or name.endswith(".") or ".." in name:
        return "not a librdkafka property name (KAFKA_CONSUMER_FETCH_MAX_BYTES is fetch.max.bytes)"
    if name in SETTING_OF:
        return f"{name} is a setting of its own: set {SETTING_OF[name]}"
    if name in OWNED:
        return f"{name} is the sink's own: {OWNED[name]}"
    if _CALLBACK.fullmatch(name):
        return f"{name} takes a Python object, not a value from the environment"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prop.value):
        return "the value contains a control character"
    return None


# --- The configurations ------------------------------------------------------------------
def common(settings: Settings) -> dict[str, Any]:
    """Connection and security: the same for every client."""
    s = settings
    conf: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap_servers,
        "security.protocol": s.kafka_security_protocol,
        "client.id": s.kafka_client_id,
    }
    optional = {
        "sasl.mechanism": s.kafka_sasl_mechanism,
        "sasl.username": s.kafka_sasl_username,
        "ssl.ca.location": s.kafka_ssl_ca_location,
        "ssl.certificate.location": s.kafka_ssl_certificate_location,
        "ssl.key.location": s.kafka_ssl_key_location,
    }
    conf.update({k: v for k, v in optional.items() if v})
    for name, secret in (
        ("sasl.password", s.kafka_sasl_password),
        ("ssl.key.password", s.kafka_ssl_key_password),
    ):
        if secret is not None:
            conf[name] = secret.get_secret_value()
    if s.kafka_sasl_mechanism == "OAUTHBEARER":
        # OIDC client credentials: librdkafka fetches and refreshes the token itself.
        conf["sasl.oauthbearer.method"] = "oidc"
        oidc = {
            "sasl.oauthbearer.client.id": s.kafka_sasl_oauthbearer_client_id,
            "sasl.oauthbearer.token.endpoint.url": s.kafka_sasl_oauthbearer_token_endpoint_url,
            "sasl.oauthbearer.scope": s.kafka_sasl_oauthbearer_scope,
            "sasl.oauthbearer.extensions": s.kafka_sasl_oauthbearer_extensions,
        }
        conf.update({k: v for k, v in oidc.items() if v})
        client_secret = s.kafka_sasl_oauthbearer_client_secret
        if client_secret is not None:
            conf["sasl.oauthbearer.client.secret"] = client_secret.get_secret_value()
    return conf


def _passed(settings: Settings, client: Client) -> dict[str, str]:
    """The environment's properties for ``client``; its own prefix wins over the common."""
    props = [p for p in settings.kafka_properties if client in p.clients]
    props.sort(key=lambda p: p.own_prefix)
    return {p.name: p.value for p in props}


def consumer(settings: Settings, group: bool = True) -> dict[str, Any]:
    """The group consumer's properties (``group=False``: a consumer that only assigns)."""
    s = settings
    return {
        **common(s),
        **FETCH_TUNING,
        "session.timeout.ms": s.kafka_session_timeout_ms,
        "max.poll.interval.ms": s.kafka_max_poll_interval_ms,
        "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
        **_passed(s, "consumer"),
        # The sink's own, last: nothing above may change them.
        "group.id": s.kafka_group_id if group else f"{s.kafka_group_id}.sample",
        "enable.auto.commit": False,
        # Offsets are stored and committed by the sink itself, only once resolved.
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": s.kafka_auto_offset_reset,
        "partition.assignment.strategy": s.kafka_assignment_strategy,
    }


def producer(settings: Settings) -> dict[str, Any]:
    """The response and dead-letter producer's properties (sink/producer.py adds its
    own: idempotence, acks=all, the message size limit)."""
    return {**common(settings), **PRODUCER_TUNING, **_passed(settings, "producer")}


def describe(settings: Settings) -> list[str]:
    """The effective configurations, as ``check-config`` prints them: secrets masked."""
    masker = settings.masker()
    lines = []
    for title, conf in (
        ("consumer (also the sample and replay consumers)", consumer(settings)),
        ("producer (response and dead-letter topics)", producer(settings)),
    ):
        lines.append(f"# librdkafka {title}:")
        for name, value in sorted(conf.items()):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            lines.append(f"#   {name}={MASK if is_secret(name) else masker.text(text)}")
    from sink.producer import PRODUCER_MESSAGE_MAX_BYTES

    lines.append(
        "#   and sink/producer.py's own: enable.idempotence=true, acks=all, "
        f"message.max.bytes={PRODUCER_MESSAGE_MAX_BYTES}"
    )
    return lines


def passthrough_from(data: Mapping[str, Any], known: frozenset[str]) -> list[Passthrough]:
    """The properties among a settings source's keys (not the settings themselves)."""
    props = []
    for key, value in data.items():
        if not isinstance(key, str) or key.upper() in known:
            continue
        prop = passthrough_of(key, value)
        if prop is not None:
            props.append(prop)
    return sorted(props, key=lambda p: p.variable)


__all__ = [
    "FETCH_TUNING",
    "OWNED",
    "PREFIXES",
    "SETTING_OF",
    "Passthrough",
    "common",
    "consumer",
    "describe",
    "is_secret",
    "passthrough_from",
    "passthrough_of",
    "producer",
    "property_name",
    "refusal",
]

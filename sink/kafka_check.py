"""librdkafka's and the broker's word on the Kafka settings, before the sink starts.

:func:`offline_problems` builds each client once without using it, so that librdkafka
judges every property (and reads the certificate and key files), and names the variable
behind whatever it refuses. :func:`connection_problems` then connects with each client's
settings: a refused password or certificate, or a broker certificate the CA does not
vouch for, stops the start (exit 2) with the setting to fix, instead of a sink that
retries forever and says only that Kafka is unreachable.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from sink.kafka_config import SETTING_OF, consumer, producer

if TYPE_CHECKING:
    from sink.config import Problem, Settings


def _variable_of(settings: Settings, message: str) -> str:
    """The variable behind the property a librdkafka message names."""
    names = re.findall(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+", message)
    for name in names:
        for prop in settings.kafka_properties:
            if prop.name == name:
                return prop.variable
        if name in SETTING_OF:
            return SETTING_OF[name]
    return "KAFKA_SECURITY_PROTOCOL"


def offline_problems(settings: Settings) -> list[Problem]:
    """What librdkafka refuses, client by client and property by property, without
    connecting: an unknown property, a bad value, a certificate or key it cannot read."""
    from sink.config import Problem

    masker = settings.masker()
    problems: list[Problem] = []
    seen: set[str] = set()

    def judge(kind: type[Consumer] | type[Producer], conf: dict[str, Any]) -> str | None:
        try:
            client = kind({**conf, "log_level": 0})  # reads the certificate and key files
        except KafkaException as exc:
            return str(exc.args[0].str())
        client.close() if isinstance(client, Consumer) else client.flush(0)
        return None

    # Each environment property alone first, so that every bad one is named at once.
    for prop in settings.kafka_properties:
        for client in prop.clients:
            kind = Consumer if client == "consumer" else Producer
            base = {"group.id": "check"} if kind is Consumer else {}
            why = judge(kind, {**base, prop.name: prop.value})
            if why and prop.variable not in seen:
                seen.add(prop.variable)
                shown = None if prop.secret else repr(prop.value)
                problems.append(Problem(prop.variable, masker.text(why), shown))
    if problems:
        return problems
    for kind, conf in ((Consumer, consumer(settings)), (Producer, producer(settings))):
        why = judge(kind, conf)
        if why:
            variable, why = _explain_offline(settings, why)
            if variable not in seen:
                seen.add(variable)
                problems.append(Problem(variable, masker.text(why)))
    return problems


def _explain_offline(settings: Settings, why: str) -> tuple[str, str]:
    """The variable to blame for a client librdkafka would not create, and why."""
    why = re.sub(r"^Failed to create (consumer|producer): ", "", why)
    key = settings.kafka_ssl_key_location
    if "ssl.key.location failed" in why and settings.kafka_ssl_key_password is not None:
        return "KAFKA_SSL_KEY_PASSWORD", (
            f"the key in KAFKA_SSL_KEY_LOCATION={key} does not open with this password "
            f"(or is not a PEM private key): {why}"
        )
    if "ssl.key.location failed" in why:
        return "KAFKA_SSL_KEY_LOCATION", (
            f"not a PEM private key, or an encrypted one (then set KAFKA_SSL_KEY_PASSWORD): {why}"
        )
    return _variable_of(settings, why), why


# The broker, or the TLS handshake, refused us: retrying cannot help.
_CLIENT_CERT_REFUSED = re.compile(
    r"alert (bad certificate|certificate required|unknown ca|certificate unknown|"
    r"handshake failure|access denied|certificate expired|certificate revoked)"
)


def _fatal(settings: Settings, err: KafkaError) -> tuple[str, str] | None:
    """The variable to blame and why, if ``err`` says the settings cannot connect."""
    s = settings
    text = str(err.str())
    code = err.code()
    if code == KafkaError._AUTHENTICATION:
        if s.kafka_sasl_mechanism == "OAUTHBEARER":
            return "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", (
                "the OAUTHBEARER login failed (check KAFKA_SASL_OAUTHBEARER_CLIENT_ID, "
                f"_CLIENT_SECRET, _TOKEN_ENDPOINT_URL, _SCOPE): {text}"
            )
        if "mechanism" in text and "nsupported" in text:
            return "KAFKA_SASL_MECHANISM", f"the broker does not offer it: {text}"
        return "KAFKA_SASL_PASSWORD", (
            f"the broker refused user '{s.kafka_sasl_username}' with "
            f"{s.kafka_sasl_mechanism} (check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD): "
            f"{text}"
        )
    if code == KafkaError._SSL and "verify failed" in text:
        where = (
            f"the CA in KAFKA_SSL_CA_LOCATION={s.kafka_ssl_ca_location}"
            if s.kafka_ssl_ca_location
            else "the system's CAs (KAFKA_SSL_CA_LOCATION is not set)"
        )
        return (
            "KAFKA_SSL_CA_LOCATION",
            f"the broker's certificate is not trusted by {where}: {text}",
        )
    if _CLIENT_CERT_REFUSED.search(text):
        why = (
            "the broker refused the client certificate (not signed by a CA it trusts, or expired)"
            if s.kafka_ssl_certificate_location
            else "the broker requires a client certificate (mTLS) and none is set: set "
            "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION"
        )
        return "KAFKA_SSL_CERTIFICATE_LOCATION", f"{why}: {text}"
    if code == KafkaError._SSL:
        return "KAFKA_SECURITY_PROTOCOL", f"the TLS handshake failed: {text}"
    return None


@dataclass
class _Probe:
    errors: list[KafkaError]
    connected: bool = False


def connection_problems(
    settings: Settings, timeout_s: float = 15.0
) -> tuple[list[Problem], list[str]]:
    """Connect with the consumer's and the producer's settings (in parallel) until the
    broker answers a metadata request or ``timeout_s`` passes. Returns the problems that
    no retry can cure (a refused password or certificate, an untrusted broker), and
    warnings for what may yet clear (no broker reachable: the sink keeps trying)."""
    from sink.config import Problem

    masker = settings.masker()
    configs: dict[str, dict[str, Any]] = {
        "consumer": consumer(settings),
        "producer": producer(settings),
    }
    probes = {name: _Probe([]) for name in configs}

    def run(name: str) -> None:
        probe = probes[name]
        conf = {**configs[name], "log_level": 0, "error_cb": probe.errors.append}
        client: Any = Consumer(conf) if name == "consumer" else Producer(conf)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    client.list_topics(timeout=min(1.0, max(deadline - time.monotonic(), 0.1)))
                    probe.connected = True
                    return
                except KafkaException:
                    client.poll(0)  # serves error_cb
                if any(_fatal(settings, e) for e in probe.errors):
                    return
        finally:
            client.close() if name == "consumer" else client.flush(0)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 10)
    problems: dict[str, Problem] = {}
    warnings: list[str] = []
    for name, probe in probes.items():
        for err in probe.errors:
            found = _fatal(settings, err)
            if found and found[0] not in problems:
                problems[found[0]] = Problem(found[0], masker.text(found[1]))
                break
        else:
            if not probe.connected:
                last = probe.errors[-1].str() if probe.errors else "no answer"
                warnings.append(
                    masker.text(
                        f"the Kafka {name} reached no broker of KAFKA_BOOTSTRAP_SERVERS="
                        f"{settings.kafka_bootstrap_servers} within {timeout_s:.0f}s "
                        f"({last}); starting anyway, it keeps trying"
                    )
                )
    return list(problems.values()), warnings


def check(settings: Settings, timeout_s: float = 15.0) -> list[str]:
    """Every check above; raises SettingsError with the problems, returns the warnings."""
    from sink.config import SettingsError

    problems = offline_problems(settings)
    if problems:
        raise SettingsError(problems)
    problems, warnings = connection_problems(settings, timeout_s)
    if problems:
        raise SettingsError(problems)
    return warnings


__all__ = ["check", "connection_problems", "offline_problems"]

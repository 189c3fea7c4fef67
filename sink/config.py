"""Settings: one validated model, read from environment variables and an optional file.

Every field's environment variable is its ``alias``. A bad value stops the service at
start (exit code 2) with every problem at once, each naming the variable and its allowed
values: the fields' own errors and, on the values that did parse, the checks between
fields (template, mode, batch size, transport security). Secret values are never echoed
back (see :func:`describe_errors`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sink import kafka_config
from sink.mapping import TIMESTAMP_FORMATS, MappingSettings, parse_pairs
from sink.masking import (
    MIN_SEARCHED_LEN,
    SAFE_HEADERS,
    Masker,
    mask,
    secret_query_values,
    userinfo,
)
from sink.settings_checks import (
    broker_hosts,
    control_characters,
    did_you_mean,
    header_name_problem,
    insecure_url,
    is_loopback,
    topic_problem,
    url_problem,
)

Template = Literal["upload-entity-data", "ingest-bulk-entities", "manual"]
ContentFormat = Literal["clari-datasets", "json", "ndjson", "csv", "xml"]
Grouping = Literal["size", "key", "attribute"]
NullPolicy = Literal["skip", "dead-letter", "fail"]

# The seed's entity names (what users pick) and the path segment Clari's contract uses.
ENTITY_TYPES = {
    "account": "Account",
    "contact": "Contact",
    "opportunity": "Opportunity",
    "activity": "Activity",
}

# The seed's modes per template, mapped onto the published contract's two modes.
# Assumption documented in the README: Full/Replace reload everything ("initial"),
# the others apply changes ("incremental"). CLARI_RAW_MODE bypasses the mapping.
TEMPLATE_MODES: dict[str, dict[str, str]] = {
    "upload-entity-data": {"incremental": "incremental", "full": "initial"},
    "ingest-bulk-entities": {"upsert": "incremental", "merge": "incremental", "replace": "initial"},
}
DEFAULT_MODES = {"upload-entity-data": "incremental", "ingest-bulk-entities": "upsert"}
UPLOAD_MAX_RECORDS = 100  # Clari: "The number of records limit to 100"
BULK_MAX_BYTES = 10 * 1024 * 1024  # Clari: bulk file at most 10 MB
HOUR_MS = 3_600_000
ADMIN_TOKEN_MIN_LEN = 16

CSV = Annotated[list[str], NoDecode]

# ``run`` needs topics, ``check-config`` and ``sample`` do not. A context variable, since
# pydantic-settings builds the model from its sources and passes no validation context.
_REQUIRE_TOPICS: ContextVar[bool] = ContextVar("require_topics", default=False)


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_headers(text: str) -> dict[str, str]:
    """Parse the seed's ``header1:value1,header2:value2`` form.

    Errors name the entry by position, never by content: a value may be a credential."""
    headers: dict[str, str] = {}
    for i, pair in enumerate((p.strip() for p in text.split(",")), 1):
        if not pair:
            continue
        name, sep, value = pair.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"entry {i} is not of the form header:value")
        name, value = name.strip(), value.strip()
        problem = header_name_problem(name)
        if problem is None:
            bad = control_characters(value)
            problem = f"the value of header {name} {bad}" if bad else None
        if problem:
            raise ValueError(problem)
        headers[name] = value
    return headers


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad setting: its variable, the value as shown (masked; None: not shown), why."""

    variable: str
    why: str
    shown: str | None = None

    def __str__(self) -> str:
        value = "" if self.shown is None else f"={self.shown}"
        return f"{self.variable}{value}: {self.why}"


class SettingsError(ValueError):
    """Settings that cannot work; each problem names its variable."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(map(str, problems)))


# Credentials: never shown, masked wherever they appear, one trailing newline removed.
SECRET_SETTINGS = (
    "clari_api_token",
    "clari_partner_key",
    "kafka_sasl_password",
    "kafka_ssl_key_password",
    "kafka_sasl_oauthbearer_client_secret",
    "schema_registry_password",
    "admin_token",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        populate_by_name=True, extra="ignore", case_sensitive=False, env_file_encoding="utf-8"
    )

    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap_servers: str = Field("localhost:9092", alias="KAFKA_BOOTSTRAP_SERVERS")
    kafka_topics: CSV = Field(default_factory=list, alias="KAFKA_TOPICS")
    kafka_group_id: str = Field("clari-sink", alias="KAFKA_GROUP_ID")
    kafka_auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", alias="KAFKA_AUTO_OFFSET_RESET"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None
    ) = Field(None, alias="KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str | None = Field(None, alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(None, alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_ca_location: str | None = Field(None, alias="KAFKA_SSL_CA_LOCATION")
    # mTLS: the client's certificate and key (PEM files), the key's password if encrypted.
    kafka_ssl_certificate_location: str | None = Field(None, alias="KAFKA_SSL_CERTIFICATE_LOCATION")
    kafka_ssl_key_location: str | None = Field(None, alias="KAFKA_SSL_KEY_LOCATION")
    kafka_ssl_key_password: SecretStr | None = Field(None, alias="KAFKA_SSL_KEY_PASSWORD")
    # OAUTHBEARER through OIDC client credentials (librdkafka's sasl.oauthbearer.method=oidc).
    kafka_sasl_oauthbearer_client_id: str | None = Field(
        None, alias="KAFKA_SASL_OAUTHBEARER_CLIENT_ID"
    )
    kafka_sasl_oauthbearer_client_secret: SecretStr | None = Field(
        None, alias="KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"
    )
    kafka_sasl_oauthbearer_token_endpoint_url: str | None = Field(
        None, alias="KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"
    )
    kafka_sasl_oauthbearer_scope: str | None = Field(None, alias="KAFKA_SASL_OAUTHBEARER_SCOPE")
    kafka_sasl_oauthbearer_extensions: str | None = Field(
        None, alias="KAFKA_SASL_OAUTHBEARER_EXTENSIONS"
    )
    # What the brokers' logs, quotas and ACL audit show for this sink's connections.
    kafka_client_id: str = Field(kafka_config.CLIENT_ID, alias="KAFKA_CLIENT_ID")
    kafka_assignment_strategy: Literal["cooperative-sticky", "range", "roundrobin"] = Field(
        "cooperative-sticky", alias="KAFKA_ASSIGNMENT_STRATEGY"
    )
    kafka_session_timeout_ms: int = Field(45_000, ge=6_000, alias="KAFKA_SESSION_TIMEOUT_MS")
    kafka_max_poll_interval_ms: int = Field(300_000, ge=10_000, alias="KAFKA_MAX_POLL_INTERVAL_MS")
    kafka_value_format: Literal["json", "avro"] = Field("json", alias="KAFKA_VALUE_FORMAT")
    schema_registry_url: str | None = Field(None, alias="SCHEMA_REGISTRY_URL")
    schema_registry_username: str | None = Field(None, alias="SCHEMA_REGISTRY_USERNAME")
    schema_registry_password: SecretStr | None = Field(None, alias="SCHEMA_REGISTRY_PASSWORD")
    # Transport security: refused unless allowed here, and then warned about at start.
    # One setting per connection, so that allowing a plain-http test registry does not
    # also allow sending the Clari token or the Kafka password unencrypted.
    kafka_allow_insecure_sasl: bool = Field(False, alias="KAFKA_ALLOW_INSECURE_SASL")
    schema_registry_allow_insecure_http: bool = Field(
        False, alias="SCHEMA_REGISTRY_ALLOW_INSECURE_HTTP"
    )

    # --- Clari endpoint ----------------------------------------------------------
    clari_template: Template = Field("upload-entity-data", alias="CLARI_TEMPLATE")
    clari_base_url: str = Field("https://api.clari.com/v2", alias="CLARI_BASE_URL")
    clari_entity_type: str | None = Field(None, alias="CLARI_ENTITY_TYPE")
    clari_mode: str | None = Field(None, alias="CLARI_MODE")
    clari_raw_mode: str | None = Field(None, alias="CLARI_RAW_MODE")
    # None (unset): resolved by mode, see is_last_batch.
    clari_is_last_batch: Literal["true", "false", "auto"] | None = Field(
        None, alias="CLARI_IS_LAST_BATCH"
    )
    clari_source_entity: str | None = Field(None, alias="CLARI_SOURCE_ENTITY")
    clari_auth_style: Literal["apikey", "bearer", "none"] = Field(
        "apikey", alias="CLARI_AUTH_STYLE"
    )
    clari_api_token: SecretStr | None = Field(None, alias="CLARI_API_TOKEN")
    clari_partner_key: SecretStr | None = Field(None, alias="CLARI_PARTNER_KEY")
    clari_method: Literal["POST", "PUT", "PATCH"] = Field("POST", alias="CLARI_METHOD")
    clari_url: str | None = Field(None, alias="CLARI_URL")
    clari_content_format: ContentFormat | None = Field(None, alias="CLARI_CONTENT_FORMAT")
    clari_request_headers: str = Field("", alias="CLARI_REQUEST_HEADERS")
    # Request headers whose values may be shown; all others count as credentials.
    clari_safe_headers: CSV = Field(default_factory=list, alias="CLARI_SAFE_HEADERS")
    clari_allow_insecure_http: bool = Field(False, alias="CLARI_ALLOW_INSECURE_HTTP")
    clari_exclude_attributes: CSV = Field(default_factory=list, alias="CLARI_EXCLUDE_ATTRIBUTES")
    clari_id_field: str = Field("id", alias="CLARI_ID_FIELD")

    # --- CRM topics: envelopes, field mapping, several entities (README "CRM topics") --
    # Applied in this order: unwrap -> rename -> convert -> exclude (sink/mapping.py).
    kafka_value_envelope: Literal["none", "debezium"] = Field("none", alias="KAFKA_VALUE_ENVELOPE")
    sink_deletes: Literal["skip", "dead-letter", "send"] = Field("skip", alias="SINK_DELETES")
    clari_deleted_attribute: str = Field("isDeleted", alias="CLARI_DELETED_ATTRIBUTE")
    clari_rename_attributes: str = Field("", alias="CLARI_RENAME_ATTRIBUTES")
    clari_timestamp_attributes: str = Field("", alias="CLARI_TIMESTAMP_ATTRIBUTES")
    clari_topic_entities: str = Field("", alias="CLARI_TOPIC_ENTITIES")

    # --- Batching ------------------------------------------------------------------
    batch_enabled: bool = Field(True, alias="BATCH_ENABLED")
    batch_size: int = Field(100, ge=1, le=100_000, alias="BATCH_SIZE")
    batch_grouping: Grouping = Field("size", alias="BATCH_GROUPING")
    batch_group_attribute: str | None = Field(None, alias="BATCH_GROUP_ATTRIBUTE")
    batch_linger_ms: int = Field(1_000, ge=0, le=600_000, alias="BATCH_LINGER_MS")
    batch_max_bytes: int = Field(4_000_000, ge=1_024, alias="BATCH_MAX_BYTES")

    # --- Responses and dead letters ------------------------------------------------
    response_topic_enabled: bool = Field(True, alias="RESPONSE_TOPIC_ENABLED")
    response_topic: str = Field("clari-sink.responses", alias="RESPONSE_TOPIC")
    dlq_topic: str = Field("clari-sink.dlq", alias="DLQ_TOPIC")
    null_values: NullPolicy = Field("skip", alias="SINK_NULL_VALUES")

    # --- HTTP, retries, flow control ---------------------------------------------
    # The most calls in flight. The sink starts at 8 (or this, if lower) and grows while
    # calls are waiting for a slot and the API does not push back: at 200 ms a call,
    # Clari's 100 calls/s needs 20 in flight (see sink/flow.py).
    http_max_in_flight: int = Field(32, ge=1, le=1_000, alias="HTTP_MAX_IN_FLIGHT")
    http_timeout_s: float = Field(30.0, gt=0, le=3_600, allow_inf_nan=False, alias="HTTP_TIMEOUT_S")
    # The token's calls per second, for the whole consumer group: Clari counts per token.
    http_rate_limit: float = Field(
        100.0, gt=0, le=1_000_000, allow_inf_nan=False, alias="HTTP_RATE_LIMIT"
    )
    # partitions: each member takes the share of HTTP_RATE_LIMIT its assigned partitions
    # are of all the topics' partitions, recomputed on every rebalance; none: each member
    # may make HTTP_RATE_LIMIT calls/s on its own (one member, or one token per member).
    http_rate_sharing: Literal["partitions", "none"] = Field(
        "partitions", alias="HTTP_RATE_SHARING"
    )
    # Independent ordered lanes per partition; a key always maps to the same lane. None:
    # 1 for Ingest Bulk Entities (each call is a job of up to 10 MB), else
    # 4 x HTTP_MAX_IN_FLIGHT (so that few active keys share a lane), at most 256.
    key_lanes: int | None = Field(None, ge=1, le=4_096, alias="SINK_KEY_LANES")
    # What keeps its order: key (records of a message key reach the API in offset
    # order) or id (records of a record id, CLARI_ID_FIELD: what Clari's state depends on,
    # for topics whose key is coarser than the record, such as activities keyed by
    # account, where one hot key would otherwise have one call in flight).
    order_by: Literal["key", "id"] = Field("key", alias="SINK_ORDER_BY")
    # 0: retry transient failures until they clear; an outage must not empty a topic into
    # the dead-letter topic. A limit trades that for never blocking on one batch.
    retry_max_attempts: int = Field(0, ge=0, alias="RETRY_MAX_ATTEMPTS")
    retry_backoff_initial_ms: int = Field(200, ge=1, le=HOUR_MS, alias="RETRY_BACKOFF_INITIAL_MS")
    retry_backoff_max_ms: int = Field(30_000, ge=1, le=HOUR_MS, alias="RETRY_BACKOFF_MAX_MS")
    job_poll_initial_ms: int = Field(500, ge=10, le=HOUR_MS, alias="JOB_POLL_INITIAL_MS")
    job_poll_max_ms: int = Field(15_000, ge=10, le=HOUR_MS, alias="JOB_POLL_MAX_MS")
    job_timeout_s: float = Field(
        3_600.0, gt=0, le=7 * 86_400, allow_inf_nan=False, alias="JOB_TIMEOUT_S"
    )
    max_buffered_records: int = Field(100_000, ge=1, alias="SINK_MAX_BUFFERED_RECORDS")
    max_buffered_bytes: int = Field(32 * 1024 * 1024, ge=1_024, alias="SINK_MAX_BUFFERED_BYTES")

    # --- Service -------------------------------------------------------------------
    active: bool = Field(True, alias="SINK_ACTIVE")
    admin_host: str = Field("0.0.0.0", alias="ADMIN_HOST")
    admin_port: int = Field(8080, ge=0, le=65_535, alias="ADMIN_PORT")
    # Required as "Authorization: Bearer <token>" by POST /admin/*; unset: those refused.
    admin_token: SecretStr | None = Field(None, alias="ADMIN_TOKEN")
    commit_interval_ms: int = Field(1_000, ge=10, alias="SINK_COMMIT_INTERVAL_MS")
    shutdown_timeout_s: float = Field(
        30.0, gt=0, le=3_600, allow_inf_nan=False, alias="SINK_SHUTDOWN_TIMEOUT_S"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="LOG_LEVEL")
    log_format: Literal["json", "text"] = Field("json", alias="LOG_FORMAT")

    # Warnings about accepted values (a stripped newline), for the start-up log.
    _notes: list[str] = PrivateAttr(default_factory=list)
    # librdkafka properties from KAFKA_CLIENT_*, KAFKA_CONSUMER_*, KAFKA_PRODUCER_*.
    _kafka_properties: list[kafka_config.Passthrough] = PrivateAttr(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment's client properties are no fields: a source of their own hands
        # them to _every_problem (a settings file's keys reach it as they are).
        passthrough = _KafkaPropertiesSource(settings_cls)
        return init_settings, env_settings, passthrough, dotenv_settings, file_secret_settings

    @property
    def kafka_properties(self) -> list[kafka_config.Passthrough]:
        return self._kafka_properties

    @field_validator(
        "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_ssl_ca_location",
        "kafka_ssl_certificate_location", "kafka_ssl_key_location",
        "kafka_sasl_oauthbearer_client_id", "kafka_sasl_oauthbearer_token_endpoint_url",
        "kafka_sasl_oauthbearer_scope", "kafka_sasl_oauthbearer_extensions",
        "clari_entity_type", "clari_mode", "clari_raw_mode", "clari_source_entity",
        "clari_url", "clari_content_format", "batch_group_attribute",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # An empty variable (KEY= in a file, or a blank in compose) means "not set".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(*SECRET_SETTINGS, mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = _strip_one_newline(value)
        if not value.strip():
            return None  # blank: not set
        problem = control_characters(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        # The admin port listens on every interface: a short token could be guessed.
        if value is not None and len(value.get_secret_value()) < ADMIN_TOKEN_MIN_LEN:
            raise ValueError(
                f"too short: at least {ADMIN_TOKEN_MIN_LEN} characters "
                "(e.g. the output of: openssl rand -hex 32)"
            )
        return value

    @field_validator("kafka_sasl_username", "schema_registry_username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        problem = control_characters(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator(
        "kafka_topics", "clari_exclude_attributes", "clari_safe_headers", mode="before"
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("kafka_topics")
    @classmethod
    def _topics(cls, value: list[str]) -> list[str]:
        problems = [p for p in map(topic_problem, value) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("response_topic", "dlq_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        problem = topic_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator(
        "log_level", "kafka_security_protocol", "kafka_sasl_mechanism", "clari_method",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "kafka_auto_offset_reset",
        "kafka_value_format",
        "clari_template",
        "clari_is_last_batch",
        "clari_auth_style",
        "clari_content_format",
        "batch_grouping",
        "null_values",
        "kafka_assignment_strategy",
        "log_format",
        "http_rate_sharing",
        "order_by",
        mode="before",
    )
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("clari_entity_type")
    @classmethod
    def _entity(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        key = value.strip().lower()
        if key not in ENTITY_TYPES:
            allowed = ", ".join(ENTITY_TYPES.values())
            raise ValueError(f"Input should be one of {allowed}")
        return ENTITY_TYPES[key]

    @field_validator("clari_request_headers")
    @classmethod
    def _headers(cls, value: str) -> str:
        parse_headers(value)
        return value

    @field_validator("clari_safe_headers")
    @classmethod
    def _safe_headers(cls, value: list[str]) -> list[str]:
        problems = [p for p in map(header_name_problem, value) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("kafka_value_envelope", "sink_deletes", mode="before")
    @classmethod
    def _crm_lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("clari_deleted_attribute")
    @classmethod
    def _deleted_attribute(cls, value: str) -> str:
        value = value.strip()
        if not value or "." in value:
            raise ValueError("allowed values: a top-level field name, e.g. isDeleted")
        return value

    @field_validator("clari_rename_attributes")
    @classmethod
    def _renames(cls, value: str) -> str:
        pairs = parse_pairs(value, "From:to (e.g. Id:id,CreatedDate:createdAt)")
        problems = [f"{old!r} is not a top-level field name" for old, _ in pairs if "." in old]
        problems += [f"{new!r} is not a top-level field name" for _, new in pairs if "." in new]
        targets = [new for _, new in pairs]
        # A chain (a:b,b:c) would read differently applied in turn or at once: refused.
        sources = {old for old, _ in pairs}
        problems += [f"{t!r} is renamed and a rename's target" for t in targets
                     if t in sources and (t, t) not in pairs]  # fmt: skip
        problems += [f"two fields are renamed to {t!r}" for t in sorted(set(targets))
                     if targets.count(t) > 1]  # fmt: skip
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("clari_timestamp_attributes")
    @classmethod
    def _timestamps(cls, value: str) -> str:
        pairs = parse_pairs(value, "field:format (e.g. createdAt:iso8601)")
        allowed = ", ".join(TIMESTAMP_FORMATS)
        problems = [
            f"{fmt!r} (for {name}) is not a timestamp format; allowed values: {allowed}"
            for name, fmt in pairs
            if fmt.lower() not in TIMESTAMP_FORMATS
        ]
        problems += [f"{name!r} is not a top-level field name" for name, _ in pairs if "." in name]
        names = [name for name, _ in pairs]
        problems += [f"{n!r} is named twice" for n in sorted(set(names)) if names.count(n) > 1]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("clari_topic_entities")
    @classmethod
    def _topic_entities(cls, value: str) -> str:
        problems = []
        topics: list[str] = []
        for topic, rest in parse_pairs(value, "topic:Entity (e.g. crm.accounts:Account)"):
            entity, _, source = (part.strip() for part in rest.partition(":"))
            if problem := topic_problem(topic):
                problems.append(problem)
            if entity.lower() not in ENTITY_TYPES:
                allowed = ", ".join(ENTITY_TYPES.values())
                problems.append(f"{entity!r} (for {topic}) is not an entity type; allowed "
                                f"values: {allowed}")  # fmt: skip
            if topic in topics:
                problems.append(f"topic {topic} is mapped twice")
            topics.append(topic)
            if ":" in source:
                problems.append(f"entry for {topic} has more than topic:Entity:sourceEntity")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    # --- Every problem at once -------------------------------------------------------
    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # Raised as our own error: pydantic's would print the raw input, secrets and all.
            raise _as_settings_error(exc) from None

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """Field errors first, then the checks between fields on every value that parsed:
        a bad BATCH_SIZE does not hide a bad CLARI_MODE, nor the other way round."""
        if not isinstance(data, dict):
            return handler(data)
        raw_secrets = [
            v for k, v in data.items() if _field_of(k) in SECRET_SETTINGS and isinstance(v, str)
        ]
        problems: list[Problem] = []
        broken: frozenset[str] = frozenset()
        try:
            settings = handler(data)
        except ValidationError as exc:
            problems = _field_problems(exc, raw_secrets)
            broken = frozenset(_field_of(str(e["loc"][0])) for e in exc.errors() if e["loc"])
            # The fields that failed take their defaults, and checks that read them are
            # skipped: what is left can only report problems of its own.
            kept = {k: v for k, v in data.items() if _field_of(k) not in broken}
            try:
                settings = handler(kept)
            except ValidationError as again:  # not expected: field errors are per field
                raise SettingsError(problems + _field_problems(again, raw_secrets)) from None
        problems += settings._problems(broken)
        settings._kafka_properties, refused = _kafka_properties(data)
        problems += refused
        if problems:
            raise SettingsError(problems)
        settings._notes = [
            f"{_alias(field)}: one trailing newline removed (as a file read into a "
            "Secret usually ends with one)"
            for key, value in data.items()
            if (field := _field_of(key)) in SECRET_SETTINGS
            and isinstance(value, str)
            and value.endswith("\n")
        ]
        return settings

    def _problems(self, broken: frozenset[str]) -> list[Problem]:
        """The checks between fields; a check is skipped when a field it reads is broken."""
        problems: list[Problem] = []

        def ok(*fields: str) -> bool:
            return not broken.intersection(fields)

        def add(variable: str, why: str) -> None:
            problems.append(Problem(variable, why))

        template = self.clari_template
        if not ok("clari_template"):
            pass
        elif template != "manual":
            if (
                ok("clari_entity_type", "clari_topic_entities")
                and self.clari_entity_type is None
                and not self.topic_entities
            ):
                allowed = ", ".join(ENTITY_TYPES.values())
                add(
                    "CLARI_ENTITY_TYPE",
                    f"required by template {template}; allowed values: {allowed}",
                )
            modes = TEMPLATE_MODES[template]
            if (
                ok("clari_mode")
                and self.clari_mode is not None
                and self.clari_mode.strip().lower() not in modes
            ):
                allowed = ", ".join(m.capitalize() for m in modes)
                add(
                    "CLARI_MODE",
                    f"'{self.clari_mode}' is not a mode of template {template}; "
                    f"allowed values: {allowed}",
                )
            if (
                ok("batch_enabled", "batch_size")
                and template == "upload-entity-data"
                and self.batch_enabled
                and self.batch_size > UPLOAD_MAX_RECORDS
            ):
                add(
                    "BATCH_SIZE",
                    f"{self.batch_size} is over {UPLOAD_MAX_RECORDS}, the most Clari's Upload "
                    f"Entity Data accepts in one call; allowed values: 1 to {UPLOAD_MAX_RECORDS}",
                )
            if (
                ok("batch_max_bytes")
                and template == "ingest-bulk-entities"
                and self.batch_max_bytes > BULK_MAX_BYTES
            ):
                add(
                    "BATCH_MAX_BYTES",
                    f"{self.batch_max_bytes} is over Clari's bulk file limit; "
                    f"allowed values: 1024 to {BULK_MAX_BYTES}",
                )
        elif ok("clari_url") and not self.clari_url:
            add("CLARI_URL", "required when CLARI_TEMPLATE=manual")
        if (
            ok("batch_grouping", "batch_group_attribute")
            and self.batch_grouping == "attribute"
            and not self.batch_group_attribute
        ):
            add("BATCH_GROUP_ATTRIBUTE", "required when BATCH_GROUPING=attribute")
        auth = self.clari_auth_style
        token_missing = self.clari_api_token is None and auth != "none"
        if ok("clari_auth_style", "clari_api_token") and token_missing:
            add(
                "CLARI_API_TOKEN",
                f"required when CLARI_AUTH_STYLE={auth} "
                "(set CLARI_AUTH_STYLE=none to send no credential)",
            )
        key_missing = self.clari_partner_key is None and auth == "apikey"
        if ok("clari_auth_style", "clari_partner_key") and key_missing:
            add(
                "CLARI_PARTNER_KEY",
                "required when CLARI_AUTH_STYLE=apikey: "
                "Clari needs a partnerkey header on every ingest call",
            )
        problems += self._kafka_problems(ok)
        if (
            ok("kafka_value_format", "schema_registry_url")
            and self.kafka_value_format == "avro"
            and not self.schema_registry_url
        ):
            add("SCHEMA_REGISTRY_URL", "required when KAFKA_VALUE_FORMAT=avro")
        if ok("kafka_max_poll_interval_ms", "kafka_session_timeout_ms") and (
            self.kafka_max_poll_interval_ms < self.kafka_session_timeout_ms
        ):
            add(
                "KAFKA_MAX_POLL_INTERVAL_MS",
                f"{self.kafka_max_poll_interval_ms} is below KAFKA_SESSION_TIMEOUT_MS="
                f"{self.kafka_session_timeout_ms}; Kafka needs the poll interval at least "
                "as long",
            )
        for first, last in (
            ("retry_backoff_initial_ms", "retry_backoff_max_ms"),
            ("job_poll_initial_ms", "job_poll_max_ms"),
        ):
            low, high = getattr(self, first), getattr(self, last)
            if ok(first, last) and low > high:
                add(
                    _alias(first),
                    f"{low} is above {_alias(last)}={high}; allowed values: 1 to {high} "
                    f"(or raise {_alias(last)})",
                )
        if ok("kafka_topics", "response_topic", "dlq_topic", "response_topic_enabled"):
            outputs = {"DLQ_TOPIC": self.dlq_topic}
            if self.response_topic_enabled:
                outputs["RESPONSE_TOPIC"] = self.response_topic
            for variable, topic in outputs.items():
                if topic in self.kafka_topics:
                    add(
                        variable,
                        f"'{topic}' is also in KAFKA_TOPICS: the sink would consume "
                        "what it writes, without end",
                    )
        if ok("order_by", "clari_id_field") and self.order_by == "id" and not self.clari_id_field:
            add("SINK_ORDER_BY", "id needs CLARI_ID_FIELD (the field that holds a record's id)")
        if ok("kafka_topics") and _REQUIRE_TOPICS.get() and not self.kafka_topics:
            add("KAFKA_TOPICS", "required (comma-separated topic names)")
        problems += self._transport_problems(ok)
        problems += self._crm_problems(ok)
        return problems

    def _crm_problems(self, ok: Any) -> list[Problem]:
        """CLARI_TOPIC_ENTITIES against the topics read, and settings an envelope replaces."""
        problems: list[Problem] = []
        entities = self.topic_entities if ok("clari_topic_entities") else {}
        if entities and ok("kafka_topics") and self.kafka_topics:
            unread = [t for t in entities if t not in self.kafka_topics]
            if unread:
                problems.append(Problem(
                    "CLARI_TOPIC_ENTITIES",
                    f"maps {', '.join(unread)}, not in KAFKA_TOPICS; allowed values: "
                    f"topics of KAFKA_TOPICS ({', '.join(self.kafka_topics)})",
                ))  # fmt: skip
            unmapped = [t for t in self.kafka_topics if t not in entities]
            if unmapped and self.clari_entity_type is None and ok("clari_entity_type"):
                problems.append(Problem(
                    "CLARI_TOPIC_ENTITIES",
                    f"no entity type for {', '.join(unmapped)}: map every topic of "
                    "KAFKA_TOPICS, or set CLARI_ENTITY_TYPE for the others",
                ))  # fmt: skip
        renamed = dict(parse_pairs(self.clari_rename_attributes, "From:to"))
        for variable, field, names in (
            ("CLARI_TIMESTAMP_ATTRIBUTES", "clari_timestamp_attributes",
             [n for n, _ in parse_pairs(self.clari_timestamp_attributes, "field:format")]),
            ("CLARI_EXCLUDE_ATTRIBUTES", "clari_exclude_attributes",
             [p.split(".")[0] for p in self.clari_exclude_attributes]),
        ):  # fmt: skip
            if not ok(field, "clari_rename_attributes"):
                continue
            gone = [f"{n} (now {renamed[n]})" for n in dict.fromkeys(names) if n in renamed]
            if gone:
                problems.append(Problem(
                    variable,
                    f"names {', '.join(gone)} by the name CLARI_RENAME_ATTRIBUTES renames: "
                    "fields are named as renamed here (unwrap -> rename -> convert -> exclude)",
                ))  # fmt: skip
        kinds = {entity for entity, _ in entities.values()}
        if len(kinds) > 1 and self.clari_source_entity and ok("clari_source_entity"):
            problems.append(Problem(
                "CLARI_SOURCE_ENTITY",
                "one sourceEntity for every entity type of CLARI_TOPIC_ENTITIES; give each "
                "its own there (topic:Entity:sourceEntity), or leave it unset for crm_<entity>",
            ))  # fmt: skip
        if (
            self.kafka_value_envelope != "none"
            and "null_values" in self.model_fields_set
            and ok("kafka_value_envelope", "null_values")
        ):
            problems.append(Problem(
                "SINK_NULL_VALUES",
                f"with KAFKA_VALUE_ENVELOPE={self.kafka_value_envelope} tombstones follow "
                "SINK_DELETES (allowed values: skip, dead-letter, send); unset SINK_NULL_VALUES",
            ))  # fmt: skip
        return problems

    def _kafka_problems(self, ok: Any) -> list[Problem]:
        """Kafka security settings that cannot work together."""
        problems: list[Problem] = []
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        sasl = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
        if not ok("kafka_security_protocol", *sasl):
            pass
        elif protocol.startswith("SASL") and mechanism == "OAUTHBEARER":
            needed = (
                "kafka_sasl_oauthbearer_client_id",
                "kafka_sasl_oauthbearer_client_secret",
                "kafka_sasl_oauthbearer_token_endpoint_url",
            )
            missing = [_alias(f) for f in needed if ok(f) and getattr(self, f) is None]
            if missing:
                problems.append(
                    Problem(
                        missing[0],
                        f"{', '.join(missing)} required with KAFKA_SASL_MECHANISM=OAUTHBEARER "
                        "(OIDC client credentials; librdkafka fetches the token)",
                    )
                )
        elif protocol.startswith("SASL") and not (
            mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            problems.append(
                Problem(
                    "KAFKA_SASL_MECHANISM",
                    "KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are "
                    f"required with KAFKA_SECURITY_PROTOCOL={protocol}; allowed mechanisms: "
                    "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER",
                )
            )
        elif ok("kafka_security_protocol", "kafka_sasl_mechanism") and (
            mechanism and not protocol.startswith("SASL")
        ):
            problems.append(
                Problem(
                    "KAFKA_SASL_MECHANISM",
                    f"{mechanism} is used only with KAFKA_SECURITY_PROTOCOL=SASL_SSL or "
                    f"SASL_PLAINTEXT, not {protocol}",
                )
            )
        cert, key = self.kafka_ssl_certificate_location, self.kafka_ssl_key_location
        if ok("kafka_ssl_certificate_location", "kafka_ssl_key_location") and bool(cert) != bool(
            key
        ):
            variable = "KAFKA_SSL_KEY_LOCATION" if cert else "KAFKA_SSL_CERTIFICATE_LOCATION"
            problems.append(
                Problem(
                    variable,
                    "required: a client certificate (mTLS) needs both "
                    "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION",
                )
            )
        if ok("kafka_ssl_key_password", "kafka_ssl_key_location") and (
            self.kafka_ssl_key_password is not None and not key
        ):
            problems.append(Problem("KAFKA_SSL_KEY_PASSWORD", "set without KAFKA_SSL_KEY_LOCATION"))
        files = (
            "kafka_ssl_ca_location",
            "kafka_ssl_certificate_location",
            "kafka_ssl_key_location",
        )
        for field in files:
            path = getattr(self, field)
            if path is None or not ok(field):
                continue
            if not protocol.endswith("SSL") and ok("kafka_security_protocol"):
                problems.append(
                    Problem(
                        _alias(field),
                        f"set, but KAFKA_SECURITY_PROTOCOL={protocol} encrypts nothing; "
                        "allowed protocols with it: SSL, SASL_SSL",
                    )
                )
            elif not Path(path).is_file():
                problems.append(Problem(_alias(field), "no such file (a PEM file)", repr(path)))
        url = self.kafka_sasl_oauthbearer_token_endpoint_url
        if url is not None and ok("kafka_sasl_oauthbearer_token_endpoint_url"):
            why = url_problem(url, "KAFKA_ALLOW_INSECURE_SASL", self.kafka_allow_insecure_sasl)
            if why:
                problems.append(Problem("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", why))
        return problems

    def _transport_problems(self, ok: Any) -> list[Problem]:
        """URLs that are not http(s), and credentials that would travel unencrypted."""
        problems: list[Problem] = []
        urls = [
            ("CLARI_BASE_URL", "clari_base_url", "clari_allow_insecure_http"),
            ("CLARI_URL", "clari_url", "clari_allow_insecure_http"),
            ("SCHEMA_REGISTRY_URL", "schema_registry_url", "schema_registry_allow_insecure_http"),
        ]
        for variable, field, allow in urls:
            url = getattr(self, field)
            if url is None or not ok(field, allow):
                continue
            bad = control_characters(url)
            why = bad or url_problem(url, _alias(allow), getattr(self, allow))
            if why:
                problems.append(Problem(variable, why))
        sasl = ("kafka_security_protocol", "kafka_sasl_mechanism", "kafka_bootstrap_servers")
        hosts = self._insecure_sasl_hosts() if ok(*sasl, "kafka_allow_insecure_sasl") else []
        if hosts and not self.kafka_allow_insecure_sasl:
            problems.append(
                Problem(
                    "KAFKA_SECURITY_PROTOCOL",
                    f"SASL_PLAINTEXT with KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism} "
                    f"would send the Kafka {self._sasl_secret} unencrypted to "
                    f"{', '.join(hosts)}; use SASL_SSL, or set KAFKA_ALLOW_INSECURE_SASL=true "
                    "to allow it",
                )
            )
        return problems

    @property
    def _sasl_secret(self) -> str:
        return "token" if self.kafka_sasl_mechanism == "OAUTHBEARER" else "password"

    def _insecure_sasl_hosts(self) -> list[str]:
        # PLAIN sends the password and OAUTHBEARER the token as they are; SCRAM does not.
        if self.kafka_security_protocol != "SASL_PLAINTEXT" or self.kafka_sasl_mechanism not in (
            "PLAIN",
            "OAUTHBEARER",
        ):
            return []
        return [h for h in broker_hosts(self.kafka_bootstrap_servers) if not is_loopback(h)]

    def warnings(self) -> list[str]:
        """What the operator must hear at start: insecure transport allowed and in use,
        values the sink corrected."""
        lines = list(self._notes)
        for variable, url in (
            ("CLARI_BASE_URL", self.clari_base_url),
            ("CLARI_URL", self.clari_url),
        ):
            host = insecure_url(url) if url else None
            if host and self.clari_allow_insecure_http:
                lines.append(
                    f"INSECURE: CLARI_ALLOW_INSECURE_HTTP=true: {variable} is plain http:// to "
                    f"{host}; the Clari credentials and every record travel unencrypted"
                )
        host = insecure_url(self.schema_registry_url) if self.schema_registry_url else None
        if host and self.schema_registry_allow_insecure_http:
            lines.append(
                "INSECURE: SCHEMA_REGISTRY_ALLOW_INSECURE_HTTP=true: SCHEMA_REGISTRY_URL is "
                f"plain http:// to {host}; its credentials and schemas travel unencrypted"
            )
        if self.initial_load and self.clari_is_last_batch == "true":
            lines.append(
                f"CLARI_IS_LAST_BATCH=true with mode {self.mode_label} (mode=initial): every "
                "call says it is the load's last, so Clari ends the initial load at the first "
                "call and refuses the calls after it (400, dead-lettered); unset it (auto) to "
                "close the load once, after everything else landed"
            )
        hosts = self._insecure_sasl_hosts()
        if hosts and self.kafka_allow_insecure_sasl:
            lines.append(
                f"INSECURE: KAFKA_ALLOW_INSECURE_SASL=true: SASL {self.kafka_sasl_mechanism} over "
                f"SASL_PLAINTEXT sends the Kafka {self._sasl_secret} unencrypted to "
                f"{', '.join(hosts)}"
            )
        return lines

    # --- Derived values ----------------------------------------------------------
    @property
    def content_format(self) -> ContentFormat:
        if self.clari_content_format is not None:
            return self.clari_content_format
        return "clari-datasets" if self.clari_template != "manual" else "json"

    @property
    def lanes_per_partition(self) -> int:
        if self.key_lanes is not None:
            return self.key_lanes
        if self.clari_template == "ingest-bulk-entities":
            return 1
        return min(4 * self.http_max_in_flight, 256)

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size if self.batch_enabled else 1

    @property
    def entity_path(self) -> str:
        return (self.clari_entity_type or "").lower()

    @property
    def mode_label(self) -> str:
        """The mode as the user chose it (seed names), before mapping."""
        return (self.clari_mode or DEFAULT_MODES.get(self.clari_template, "incremental")).lower()

    @property
    def wire_mode(self) -> str:
        """The ``mode`` query value actually sent."""
        if self.clari_raw_mode:
            return self.clari_raw_mode
        return TEMPLATE_MODES.get(self.clari_template, {}).get(self.mode_label, self.mode_label)

    @property
    def initial_load(self) -> bool:
        """Calls go with ``mode=initial``: Clari ends the load at the first call with
        isLastBatch=true and refuses ``initial`` after that."""
        return self.clari_template != "manual" and self.wire_mode.lower() == "initial"

    @property
    def is_last_batch(self) -> Literal["true", "false", "auto"]:
        """CLARI_IS_LAST_BATCH as applied: unset means ``auto`` for an initial load (a
        ``true`` on every call would end the load at its first call) and ``true``, the
        product's default, otherwise."""
        if self.clari_is_last_batch is not None:
            return self.clari_is_last_batch
        return "auto" if self.initial_load else "true"

    @property
    def is_last_batch_reason(self) -> str:
        if self.clari_is_last_batch is not None:
            return "set by CLARI_IS_LAST_BATCH"
        if self.initial_load:
            return (
                f"unset, mode {self.mode_label} sends mode=initial: the load is closed once, "
                "by the call that catches up with every partition after all earlier calls "
                "were answered"
            )
        return "unset: the product's default for incremental calls"

    @property
    def source_entity(self) -> str:
        return self.clari_source_entity or f"crm_{self.entity_path or 'entity'}"

    @property
    def extra_headers(self) -> dict[str, str]:
        return parse_headers(self.clari_request_headers)

    @property
    def topic_entities(self) -> dict[str, tuple[str, str | None]]:
        """CLARI_TOPIC_ENTITIES: topic -> (entity type, its sourceEntity if given)."""
        out: dict[str, tuple[str, str | None]] = {}
        for topic, rest in parse_pairs(self.clari_topic_entities, "topic:Entity"):
            entity, _, source = (part.strip() for part in rest.partition(":"))
            out[topic] = (ENTITY_TYPES.get(entity.lower(), entity), source or None)
        return out

    @property
    def mapping(self) -> MappingSettings | None:
        """The record mapping, or None when records go as they are decoded."""
        renames = tuple(parse_pairs(self.clari_rename_attributes, "From:to"))
        timestamps = tuple(
            (name, fmt.lower())
            for name, fmt in parse_pairs(self.clari_timestamp_attributes, "field:format")
        )
        if self.kafka_value_envelope == "none" and not renames and not timestamps:
            return None
        return MappingSettings(
            envelope=self.kafka_value_envelope,
            deletes=self.sink_deletes,
            deleted_attribute=self.clari_deleted_attribute,
            renames=renames,
            timestamps=timestamps,
        )

    def secret_values(self) -> list[str]:
        """Every value to mask wherever it shows (see sink/masking.py)."""
        values = [
            secret.get_secret_value()
            for field in SECRET_SETTINGS
            if (secret := getattr(self, field)) is not None
        ]
        safe = SAFE_HEADERS | {h.lower() for h in self.clari_safe_headers}
        values += [
            value
            for name, value in self.extra_headers.items()
            if name.lower() not in safe and len(value) >= MIN_SEARCHED_LEN
        ]
        values += [p.value for p in self.kafka_properties if p.secret]
        for url in (self.clari_base_url, self.clari_url, self.schema_registry_url):
            if not url:
                continue
            values += [part.partition(":")[2] for part in userinfo(url)]
            values += [v for v in secret_query_values(url) if len(v) >= MIN_SEARCHED_LEN]
        return [v for v in values if v]

    def masker(self) -> Masker:
        """The one masking function bound to these settings' secrets and safe headers."""
        return Masker(self.secret_values(), self.clari_safe_headers)

    def kafka_common(self) -> dict[str, Any]:
        """librdkafka settings shared by every client (see sink/kafka_config.py)."""
        return kafka_config.common(self)


# Settings never echoed in an error, even when invalid: credentials, and headers that
# may carry them.
NOT_ECHOED = frozenset({*SECRET_SETTINGS, "clari_request_headers"})
_NUMBER_ERRORS = frozenset(
    {
        "finite_number",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "float_parsing",
        "float_type",
        "int_parsing",
        "int_type",
        "int_from_float",
    }
)


def _alias(field: str) -> str:
    info = Settings.model_fields.get(field)
    return info.alias if info is not None and info.alias else field.upper()


def _field_of(key: str) -> str:
    """The field a key of the settings' sources names (an alias or a field name, any case)."""
    return _FIELDS_BY_KEY.get(key.lower(), key)


def _allowed_numbers(field: str) -> str | None:
    """A numeric field's bounds, as the error message's "allowed values"."""
    info = Settings.model_fields.get(field)
    if info is None:
        return None
    low = high = ""
    for item in info.metadata:  # annotated_types' Ge, Gt, Le, Lt
        if (ge := getattr(item, "ge", None)) is not None:
            low = f"{ge}"
        elif (gt := getattr(item, "gt", None)) is not None:
            low = f"more than {gt}"
        elif (le := getattr(item, "le", None)) is not None:
            high = f"{le}"
        elif (lt := getattr(item, "lt", None)) is not None:
            high = f"less than {lt}"
    if not low and not high:
        return None
    if low and high:
        return f"{low} to {high}" if not low.startswith("more") else f"{low}, at most {high}"
    return f"at least {low}" if low and not low.startswith("more") else low or f"at most {high}"


def _field_problems(exc: ValidationError, secrets: list[str]) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors():
        if not err["loc"]:
            inner = (err.get("ctx") or {}).get("error")
            if isinstance(inner, SettingsError):
                problems += inner.problems
            else:
                problems.append(Problem("settings", mask(str(err["msg"]), secrets)))
            continue
        field = _field_of(str(err["loc"][0]))
        why = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] in _NUMBER_ERRORS and (bounds := _allowed_numbers(field)):
            why += f"; allowed values: {bounds}"
        shown = None if field in NOT_ECHOED else mask(repr(err.get("input")), secrets)
        problems.append(Problem(_alias(field), mask(why, secrets), shown))
    return problems


def _as_settings_error(exc: ValidationError) -> SettingsError:
    for err in exc.errors():
        inner = (err.get("ctx") or {}).get("error")
        if not err["loc"] and isinstance(inner, SettingsError):
            return inner
    return SettingsError(_field_problems(exc, []))


def describe_errors(exc: Exception) -> list[str]:
    """One line per bad setting: its variable, the value (unless secret), why, what is allowed."""
    if isinstance(exc, SettingsError):
        return [str(p) for p in exc.problems]
    if isinstance(exc, ValidationError):
        return [str(p) for p in _as_settings_error(exc).problems]
    return [str(exc)]


# --- Names that are not settings ---------------------------------------------------------
# The prefixes of the sink's settings: a variable with one of them that is not a setting
# is most likely a misspelt one.
PREFIXES = (
    "CLARI_", "KAFKA_", "BATCH_", "HTTP_", "SINK_", "RETRY_", "JOB_", "SCHEMA_REGISTRY_",
    "RESPONSE_", "DLQ_", "ADMIN_", "LOG_",
)  # fmt: skip
# Variables with those prefixes that are not settings, yet are expected: read by the
# command line or the devkit, or used by the tools around the sink.
NOT_SETTINGS = frozenset(
    {
        "SINK_CONFIG_FILE",  # sink/cli.py: the settings file
        "HTTP_PROXY",  # proxies, read by HTTP clients
        "KAFKA_HEAP_OPTS",  # Apache Kafka's scripts, in a developer's shell
        "KAFKA_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_LOG4J_OPTS",
    }
)
NOT_SETTING_PREFIXES = (
    # devkit (CLARI_SINK_CACHE, CLARI_SINK_KAFKA_VERSION), and the variables Kubernetes
    # sets for the clari-sink-admin Service (CLARI_SINK_ADMIN_SERVICE_HOST, ...).
    "CLARI_SINK_",
    # librdkafka properties passed through (sink/kafka_config.py).
    *kafka_config.PREFIXES,
)
# Kubernetes "service links": <SERVICE>_SERVICE_HOST, <SERVICE>_PORT=tcp://..., ...
_SERVICE_LINK = re.compile(r"[A-Z0-9_]+_SERVICE_(HOST|PORT(_[A-Z0-9_]+)?)")
_SERVICE_PORT = re.compile(r"[A-Z0-9_]+_PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?")


def known_settings() -> frozenset[str]:
    """Every setting's variable, from the model (new settings are known at once)."""
    return frozenset(_alias(field).upper() for field in Settings.model_fields)


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """Warnings for variables that look like settings but are none (misspelt, or gone)."""
    known = known_settings()
    lines = []
    for name, value in sorted(environ.items()):
        upper = name.upper()
        if (
            not upper.startswith(PREFIXES)
            or upper in known
            or upper in NOT_SETTINGS
            or upper.startswith(NOT_SETTING_PREFIXES)
            or _SERVICE_LINK.fullmatch(upper)
            or (_SERVICE_PORT.fullmatch(upper) and "://" in value)
        ):
            continue
        lines.append(f"{name} is not a setting and is ignored{did_you_mean(name, known)}")
    return lines


def _unknown_file_keys(env_file: Path) -> list[Problem]:
    known = known_settings()
    return [
        Problem(
            key,
            f"not a setting{did_you_mean(key, known)}; a settings file holds settings only "
            f"(in {env_file})",
        )
        for key in dotenv_values(env_file)
        if key.upper() not in known and kafka_config.passthrough_of(key, "") is None
    ]


def load_settings(
    env_file: Path | None = None, *, require_topics: bool = False, **overrides: Any
) -> Settings:
    """Read settings from the environment, then ``env_file`` (KEY=VALUE lines) below it.

    Raises SettingsError with every problem: unknown keys in the file, bad values, and
    what ``require_topics`` asks for."""
    if env_file is not None and not env_file.is_file():
        raise SettingsError([Problem("SINK_CONFIG_FILE", f"no such file: {env_file}")])
    problems = _unknown_file_keys(env_file) if env_file is not None else []
    token = _REQUIRE_TOPICS.set(require_topics)
    try:
        settings = Settings(_env_file=env_file, **overrides)
    except SettingsError as exc:
        problems += exc.problems
    finally:
        _REQUIRE_TOPICS.reset(token)
    if problems:
        raise SettingsError(problems)
    return settings


class _KafkaPropertiesSource(PydanticBaseSettingsSource):
    """The environment's KAFKA_CLIENT_*, KAFKA_CONSUMER_* and KAFKA_PRODUCER_* variables."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {
            name.lower(): value
            for name, value in os.environ.items()
            if kafka_config.passthrough_of(name, value) is not None
        }


def _kafka_properties(
    data: Mapping[str, Any],
) -> tuple[list[kafka_config.Passthrough], list[Problem]]:
    """The client properties among the settings' sources, and those refused (with why)."""
    props = [
        p
        for p in kafka_config.passthrough_from(data, known_settings())
        # Kubernetes service links of a Service named kafka-client, say, are no properties.
        if not _SERVICE_LINK.fullmatch(p.variable)
        and not (_SERVICE_PORT.fullmatch(p.variable) and "://" in p.value)
    ]
    problems = [
        Problem(p.variable, why, None if p.secret else repr(p.value))
        for p in props
        if (why := kafka_config.refusal(p))
    ]
    return props, problems


def _strip_one_newline(value: str) -> str:
    """A secret read from a file (``kubectl create secret --from-file``, ``$(cat f)`` in
    compose) usually ends with the file's newline, which no token contains: remove one
    line ending. Any other control character is refused (see ``Settings._secret``)."""
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value


_FIELDS_BY_KEY = {
    key.lower(): field
    for field, info in Settings.model_fields.items()
    for key in (field, info.alias or field)
}


__all__ = [
    "Problem",
    "Settings",
    "SettingsError",
    "describe_errors",
    "known_settings",
    "load_settings",
    "unknown_environment",
]

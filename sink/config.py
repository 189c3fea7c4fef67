"""Settings: one validated model, read from environment variables and an optional file.

Every field's environment variable is its ``alias``. A bad value stops the service at
start (exit code 2) with the variable's name and its allowed values; secret values are
never echoed back (see :func:`describe_errors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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

CSV = Annotated[list[str], NoDecode]


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_headers(text: str) -> dict[str, str]:
    """Parse the seed's ``header1:value1,header2:value2`` form."""
    headers: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        name, sep, value = pair.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"'{pair}' is not of the form header:value")
        headers[name.strip()] = value.strip()
    return headers


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
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(None, alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(None, alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_ca_location: str | None = Field(None, alias="KAFKA_SSL_CA_LOCATION")
    kafka_assignment_strategy: Literal["cooperative-sticky", "range", "roundrobin"] = Field(
        "cooperative-sticky", alias="KAFKA_ASSIGNMENT_STRATEGY"
    )
    kafka_session_timeout_ms: int = Field(45_000, ge=6_000, alias="KAFKA_SESSION_TIMEOUT_MS")
    kafka_max_poll_interval_ms: int = Field(300_000, ge=10_000, alias="KAFKA_MAX_POLL_INTERVAL_MS")
    kafka_value_format: Literal["json", "avro"] = Field("json", alias="KAFKA_VALUE_FORMAT")
    schema_registry_url: str | None = Field(None, alias="SCHEMA_REGISTRY_URL")
    schema_registry_username: str | None = Field(None, alias="SCHEMA_REGISTRY_USERNAME")
    schema_registry_password: SecretStr | None = Field(None, alias="SCHEMA_REGISTRY_PASSWORD")

    # --- Clari endpoint ----------------------------------------------------------
    clari_template: Template = Field("upload-entity-data", alias="CLARI_TEMPLATE")
    clari_base_url: str = Field("https://api.clari.com/v2", alias="CLARI_BASE_URL")
    clari_entity_type: str | None = Field(None, alias="CLARI_ENTITY_TYPE")
    clari_mode: str | None = Field(None, alias="CLARI_MODE")
    clari_raw_mode: str | None = Field(None, alias="CLARI_RAW_MODE")
    clari_is_last_batch: Literal["true", "false", "auto"] = Field(
        "true", alias="CLARI_IS_LAST_BATCH"
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
    clari_exclude_attributes: CSV = Field(default_factory=list, alias="CLARI_EXCLUDE_ATTRIBUTES")
    clari_id_field: str = Field("id", alias="CLARI_ID_FIELD")

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
    http_timeout_s: float = Field(30.0, gt=0, alias="HTTP_TIMEOUT_S")
    # The token's calls per second, for the whole consumer group: Clari counts per token.
    http_rate_limit: float = Field(100.0, gt=0, alias="HTTP_RATE_LIMIT")
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
    # 0: retry transient failures until they clear; an outage must not empty a topic into
    # the dead-letter topic. A limit trades that for never blocking on one batch.
    retry_max_attempts: int = Field(0, ge=0, alias="RETRY_MAX_ATTEMPTS")
    retry_backoff_initial_ms: int = Field(200, ge=1, alias="RETRY_BACKOFF_INITIAL_MS")
    retry_backoff_max_ms: int = Field(30_000, ge=1, alias="RETRY_BACKOFF_MAX_MS")
    job_poll_initial_ms: int = Field(500, ge=10, alias="JOB_POLL_INITIAL_MS")
    job_poll_max_ms: int = Field(15_000, ge=10, alias="JOB_POLL_MAX_MS")
    job_timeout_s: float = Field(3_600.0, gt=0, alias="JOB_TIMEOUT_S")
    max_buffered_records: int = Field(100_000, ge=1, alias="SINK_MAX_BUFFERED_RECORDS")
    max_buffered_bytes: int = Field(32 * 1024 * 1024, ge=1_024, alias="SINK_MAX_BUFFERED_BYTES")

    # --- Service -------------------------------------------------------------------
    active: bool = Field(True, alias="SINK_ACTIVE")
    admin_host: str = Field("0.0.0.0", alias="ADMIN_HOST")
    admin_port: int = Field(8080, ge=0, le=65_535, alias="ADMIN_PORT")
    commit_interval_ms: int = Field(1_000, ge=10, alias="SINK_COMMIT_INTERVAL_MS")
    shutdown_timeout_s: float = Field(30.0, gt=0, alias="SINK_SHUTDOWN_TIMEOUT_S")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="LOG_LEVEL")
    log_format: Literal["json", "text"] = Field("json", alias="LOG_FORMAT")

    @field_validator(
        "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
        "kafka_ssl_ca_location", "clari_entity_type", "clari_mode", "clari_raw_mode",
        "clari_source_entity", "clari_api_token", "clari_partner_key", "clari_url",
        "clari_content_format", "batch_group_attribute",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # An empty variable (KEY= in a file, or a blank in compose) means "not set".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_topics", "clari_exclude_attributes", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("log_level", "kafka_security_protocol", "clari_method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "clari_template",
        "clari_is_last_batch",
        "clari_auth_style",
        "clari_content_format",
        "batch_grouping",
        "null_values",
        "kafka_assignment_strategy",
        "log_format",
        "http_rate_sharing",
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

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems: list[tuple[str, str]] = []
        template = self.clari_template
        if template != "manual":
            if self.clari_entity_type is None:
                allowed = ", ".join(ENTITY_TYPES.values())
                problems.append(
                    (
                        "CLARI_ENTITY_TYPE",
                        f"required by template {template}; allowed values: {allowed}",
                    )
                )
            modes = TEMPLATE_MODES[template]
            if self.clari_mode is not None and self.clari_mode.strip().lower() not in modes:
                allowed = ", ".join(m.capitalize() for m in modes)
                problems.append(
                    (
                        "CLARI_MODE",
                        f"'{self.clari_mode}' is not a mode of "
                        f"template {template}; allowed values: {allowed}",
                    )
                )
            if (
                template == "upload-entity-data"
                and self.batch_enabled
                and self.batch_size > UPLOAD_MAX_RECORDS
            ):
                problems.append(
                    (
                        "BATCH_SIZE",
                        f"{self.batch_size} is over {UPLOAD_MAX_RECORDS}, "
                        "the most Clari's Upload Entity Data accepts in one call; "
                        f"allowed values: 1 to {UPLOAD_MAX_RECORDS}",
                    )
                )
            if template == "ingest-bulk-entities" and self.batch_max_bytes > BULK_MAX_BYTES:
                problems.append(
                    (
                        "BATCH_MAX_BYTES",
                        f"{self.batch_max_bytes} is over Clari's "
                        f"bulk file limit; allowed values: 1024 to {BULK_MAX_BYTES}",
                    )
                )
        elif not self.clari_url:
            problems.append(("CLARI_URL", "required when CLARI_TEMPLATE=manual"))
        if self.batch_grouping == "attribute" and not self.batch_group_attribute:
            problems.append(("BATCH_GROUP_ATTRIBUTE", "required when BATCH_GROUPING=attribute"))
        if self.clari_auth_style != "none" and self.clari_api_token is None:
            problems.append(
                (
                    "CLARI_API_TOKEN",
                    f"required when CLARI_AUTH_STYLE="
                    f"{self.clari_auth_style} (set CLARI_AUTH_STYLE=none to send "
                    "no credential)",
                )
            )
        if self.clari_auth_style == "apikey" and self.clari_partner_key is None:
            problems.append(
                (
                    "CLARI_PARTNER_KEY",
                    "required when CLARI_AUTH_STYLE=apikey: "
                    "Clari needs a partnerkey header on every ingest call",
                )
            )
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            problems.append(
                (
                    "KAFKA_SASL_MECHANISM",
                    "KAFKA_SASL_MECHANISM, "
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with "
                    f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}",
                )
            )
        if self.kafka_value_format == "avro" and not self.schema_registry_url:
            problems.append(("SCHEMA_REGISTRY_URL", "required when KAFKA_VALUE_FORMAT=avro"))
        if self.schema_registry_url and not self.schema_registry_url.startswith(
            ("http://", "https://")
        ):
            problems.append(
                ("SCHEMA_REGISTRY_URL", f"must start with http:// or https://, got "
                 f"'{self.schema_registry_url}'")
            )  # fmt: skip
        if self.kafka_max_poll_interval_ms < self.kafka_session_timeout_ms:
            problems.append(("KAFKA_MAX_POLL_INTERVAL_MS", f"{self.kafka_max_poll_interval_ms} is "
                             f"below KAFKA_SESSION_TIMEOUT_MS={self.kafka_session_timeout_ms}; "
                             "Kafka needs the poll interval at least as long"))  # fmt: skip
        if problems:
            raise SettingsError(problems)
        return self

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
    def source_entity(self) -> str:
        return self.clari_source_entity or f"crm_{self.entity_path or 'entity'}"

    @property
    def extra_headers(self) -> dict[str, str]:
        return parse_headers(self.clari_request_headers)

    def kafka_common(self) -> dict[str, Any]:
        """librdkafka settings shared by the consumer and the producer."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            conf["ssl.ca.location"] = self.kafka_ssl_ca_location
        return conf


SECRET_FIELDS = frozenset({"clari_api_token", "clari_partner_key", "kafka_sasl_password"})


class SettingsError(ValueError):
    """Settings that cannot work together; each problem names its variable."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {why}" for name, why in problems))


def _alias(field: str) -> str:
    info = Settings.model_fields.get(field)
    return info.alias if info is not None and info.alias else field.upper()


def describe_errors(exc: Exception) -> list[str]:
    """One line per bad setting: its variable, the value (unless secret), why, what is allowed."""
    if isinstance(exc, SettingsError):
        return [f"{name}: {why}" for name, why in exc.problems]
    if isinstance(exc, ValidationError):
        lines: list[str] = []
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            if not loc:
                ctx = err.get("ctx") or {}
                inner = ctx.get("error")
                if isinstance(inner, SettingsError):
                    lines.extend(f"{n}: {w}" for n, w in inner.problems)
                else:
                    lines.append(str(err["msg"]))
                continue
            field = loc[0]
            name = _alias(field)
            field = next((f for f, i in Settings.model_fields.items() if i.alias == field), field)
            shown = "" if field in SECRET_FIELDS else f"={err.get('input')!r}"
            lines.append(f"{name}{shown}: {err['msg']}")
        return lines
    return [str(exc)]


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment, then ``env_file`` (KEY=VALUE lines) below it."""
    if env_file is not None and not env_file.is_file():
        raise SettingsError([("SINK_CONFIG_FILE", f"no such file: {env_file}")])
    return Settings(_env_file=env_file, **overrides)


__all__ = ["Settings", "SettingsError", "describe_errors", "load_settings"]

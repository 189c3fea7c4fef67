"""What the sink refuses at start, and what it warns about, as a user sees it."""

from __future__ import annotations

import socket
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from sink.config import Settings, describe_errors

TOKEN = "tok-0123456789"
BASE = {
    "KAFKA_TOPICS": "crm.accounts",
    "CLARI_ENTITY_TYPE": "Account",
    "CLARI_API_TOKEN": TOKEN,
    "CLARI_PARTNER_KEY": "pk-0123456789",
}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sink.cli", *args],
        env={"PATH": "/usr/bin:/bin", **BASE, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(env: dict[str, str], command: str = "run") -> str:
    """stderr of a command that must stop at start with exit code 2."""
    done = cli(env, command)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "invalid settings, not starting" in done.stderr
    return done.stderr


def errors(**values: str) -> list[str]:
    with pytest.raises(ValueError) as info:
        Settings(**{**BASE, **values})
    return describe_errors(info.value)


# --- header values and credentials ------------------------------------------------------
def test_a_trailing_newline_is_removed_from_a_credential_with_a_warning() -> None:
    done = cli({"CLARI_API_TOKEN": TOKEN + "\n", "CLARI_PARTNER_KEY": "pk-0123456789\r\n"},
               "check-config")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning: CLARI_API_TOKEN: one trailing newline removed" in done.stderr
    assert "warning: CLARI_PARTNER_KEY: one trailing newline removed" in done.stderr
    assert TOKEN not in done.stdout + done.stderr
    s = Settings(**{**BASE, "CLARI_API_TOKEN": TOKEN + "\n"})
    assert s.clari_api_token is not None and s.clari_api_token.get_secret_value() == TOKEN


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLARI_API_TOKEN", TOKEN + "\n\n"),
        ("CLARI_API_TOKEN", "\n" + TOKEN),
        ("CLARI_PARTNER_KEY", "pk-01234\t56789"),
        ("CLARI_PARTNER_KEY", "pk-01234\x1b56789"),
        ("KAFKA_SASL_PASSWORD", "pw-01234\x7f56789"),
        ("ADMIN_TOKEN", "admin-token-01234\x0156789"),
    ],
)
def test_a_control_character_in_a_credential_stops_the_sink(variable: str, value: str) -> None:
    err = refused({variable: value})
    assert f"  - {variable}: contains a control character" in err
    assert value.strip() not in err and value.strip()[:8] not in err


def test_header_names_must_be_http_tokens_and_values_free_of_control_characters() -> None:
    err = refused({"CLARI_REQUEST_HEADERS": "X Team:revops"})
    assert (
        "  - CLARI_REQUEST_HEADERS: header name 'X...' is not a valid HTTP header name: "
        "a space at position 2" in err
    )
    err = refused({"CLARI_REQUEST_HEADERS": "X-Auth:sec\x07ret-value"})
    assert "CLARI_REQUEST_HEADERS: the value of header X-Auth contains a control character" in err
    assert "sec" not in err.replace("Secret", "")  # the value is never echoed
    err = refused({"CLARI_REQUEST_HEADERS": "Authorization Bearer sekrit-value"})
    assert "CLARI_REQUEST_HEADERS: entry 1 is not of the form header:value" in err
    assert "sekrit" not in err


# --- unknown settings --------------------------------------------------------------------
def test_misspelt_environment_variables_are_warned_about_with_a_suggestion() -> None:
    done = cli(
        {"CLARI_ENTITYTYPE": "Contact", "BATCH_SIZ": "50", "KAFKA_TOPIC": "x"}, "check-config"
    )
    assert done.returncode == 0, done.stderr
    warnings = [x for x in done.stderr.splitlines() if "warning" in x]
    assert warnings == [
        "clari-sink: warning: BATCH_SIZ is not a setting and is ignored (did you mean BATCH_SIZE?)",
        "clari-sink: warning: CLARI_ENTITYTYPE is not a setting and is ignored "
        "(did you mean CLARI_ENTITY_TYPE?)",
        "clari-sink: warning: KAFKA_TOPIC is not a setting and is ignored "
        "(did you mean KAFKA_TOPICS?)",
    ]


def test_a_misspelling_is_named_next_to_the_setting_it_leaves_missing() -> None:
    done = cli({"CLARI_ENTITY_TYPE": "", "CLARI_ENTITYTYPE": "Contact"}, "run")
    assert done.returncode == 2
    assert "did you mean CLARI_ENTITY_TYPE?" in done.stderr
    assert "  - CLARI_ENTITY_TYPE: required by template upload-entity-data" in done.stderr


def test_the_projects_own_variables_raise_no_warning() -> None:
    done = cli(
        {
            "CLARI_SINK_CACHE": "/tmp/c",  # devkit
            "CLARI_SINK_KAFKA_VERSION": "4.1.1",
            "CLARI_SINK_ADMIN_SERVICE_HOST": "10.0.0.7",  # Kubernetes service links
            "CLARI_SINK_ADMIN_PORT": "tcp://10.0.0.7:8080",
            "KAFKA_PORT": "tcp://10.0.0.9:9092",
            "KAFKA_SERVICE_PORT": "9092",
            "KAFKA_HEAP_OPTS": "-Xmx1G",
            "HTTP_PROXY": "http://proxy:3128",
            "KAFKA_CONSUMER_FETCH_MAX_BYTES": "1048576",  # reserved passthrough
        },
        "check-config",
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr


def test_unknown_keys_in_a_settings_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sink.env"
    path.write_text("BATCH_SIZ=50\nCLARI_MODE=Full\nRETRY_MAX_ATTEMPT=3\n")
    done = cli({}, "check-config", "--config", str(path))
    assert done.returncode == 2
    assert "  - BATCH_SIZ: not a setting (did you mean BATCH_SIZE?)" in done.stderr
    assert "  - RETRY_MAX_ATTEMPT: not a setting (did you mean RETRY_MAX_ATTEMPTS?)" in (
        done.stderr
    )
    path.write_text("BATCH_SIZE=50\n")
    assert cli({}, "check-config", "--config", str(path)).returncode == 0


# --- numbers -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e9"])
@pytest.mark.parametrize("variable", ["HTTP_TIMEOUT_S", "SINK_SHUTDOWN_TIMEOUT_S"])
def test_endless_timeouts_are_refused_with_their_bounds(variable: str, value: str) -> None:
    lines = errors(**{variable: value})
    assert len(lines) == 1 and lines[0].startswith(f"{variable}='{value}'")
    assert lines[0].endswith("allowed values: more than 0, at most 3600")


def test_initial_backoff_and_poll_above_their_max_are_refused() -> None:
    err = refused(
        {
            "RETRY_BACKOFF_INITIAL_MS": "60000",
            "RETRY_BACKOFF_MAX_MS": "30000",
            "JOB_POLL_INITIAL_MS": "20000",
            "JOB_POLL_MAX_MS": "15000",
        }
    )
    assert (
        "  - RETRY_BACKOFF_INITIAL_MS: 60000 is above RETRY_BACKOFF_MAX_MS=30000; "
        "allowed values: 1 to 30000" in err
    )
    assert "  - JOB_POLL_INITIAL_MS: 20000 is above JOB_POLL_MAX_MS=15000" in err


# --- topic names -------------------------------------------------------------------------
def test_illegal_topic_names_are_refused_naming_the_variable() -> None:
    err = refused(
        {"RESPONSE_TOPIC": "", "DLQ_TOPIC": "bad topic/name", "KAFKA_TOPICS": "crm.accounts,.."}
    )
    assert "  - RESPONSE_TOPIC='': '' is not a legal Kafka topic name" in err
    assert "  - DLQ_TOPIC='bad topic/name': 'bad topic/name' is not a legal Kafka topic" in err
    assert "  - KAFKA_TOPICS='crm.accounts,..': '..' is not a legal Kafka topic name" in err
    assert "1 to 249 characters of a-z A-Z 0-9 . _ -" in err
    assert errors(DLQ_TOPIC="x" * 250)[0].startswith("DLQ_TOPIC=")
    assert Settings(**BASE, DLQ_TOPIC="x" * 249).dlq_topic == "x" * 249


def test_an_output_topic_that_is_also_consumed_is_refused() -> None:
    err = refused({"KAFKA_TOPICS": "crm.accounts,clari-sink.responses"})
    assert "  - RESPONSE_TOPIC: 'clari-sink.responses' is also in KAFKA_TOPICS" in err


# --- URLs and transport security --------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("CLARI_BASE_URL", "api.clari.com/v2"),
        ("CLARI_BASE_URL", "ftp://api.clari.com/v2"),
        ("CLARI_BASE_URL", "https://"),
        ("CLARI_URL", "//api.clari.com/{entity}"),
        ("SCHEMA_REGISTRY_URL", "registry:8081"),
    ],
)
def test_urls_need_a_scheme_and_a_host(variable: str, url: str) -> None:
    env = {variable: url, "CLARI_TEMPLATE": "manual", "CLARI_URL": "https://h/{entity}"}
    err = refused({**env, variable: url})
    assert f"  - {variable}: '{url}' is not an absolute https:// URL" in err


@pytest.mark.parametrize(
    ("variable", "url", "allow"),
    [
        ("CLARI_BASE_URL", "http://api.clari.com/v2", "CLARI_ALLOW_INSECURE_HTTP"),
        ("CLARI_URL", "http://10.0.0.1/{entity}", "CLARI_ALLOW_INSECURE_HTTP"),
        ("SCHEMA_REGISTRY_URL", "http://registry:8081", "SCHEMA_REGISTRY_ALLOW_INSECURE_HTTP"),
    ],
)
def test_plain_http_off_loopback_needs_the_insecure_setting_then_warns(
    variable: str, url: str, allow: str
) -> None:
    env = {"CLARI_TEMPLATE": "manual", "CLARI_URL": "https://h/{entity}", variable: url}
    err = refused(env)
    assert f"  - {variable}: '{url}': plain http:// to" in err and f"set {allow}=true" in err
    done = cli({**env, allow: "true"}, "check-config")
    assert done.returncode == 0, done.stderr
    assert f"warning: INSECURE: {allow}=true: {variable} is plain http://" in done.stderr


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8081/v2",
        "http://127.3.2.1/v2",
        "http://localhost:8081/v2",
        "http://[::1]:8081/v2",
        "https://api.clari.com/v2",
    ],
)
def test_loopback_http_and_https_are_accepted_without_a_warning(url: str) -> None:
    assert Settings(**BASE, CLARI_BASE_URL=url).warnings() == []


def test_url_placeholders_keep_working() -> None:
    s = Settings(
        **BASE,
        CLARI_TEMPLATE="manual",
        CLARI_URL="https://{group}.example.com/v1/{entity}?mode={mode}&isLastBatch={isLastBatch}",
    )
    assert s.clari_url is not None and "{group}" in s.clari_url


def test_sasl_plain_in_clear_needs_the_insecure_setting() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "sink",
        "KAFKA_SASL_PASSWORD": "kafka-password-0123",
    }
    err = refused(env)
    assert "  - KAFKA_SECURITY_PROTOCOL: SASL_PLAINTEXT with KAFKA_SASL_MECHANISM=PLAIN" in err
    assert "broker-1, broker-2" in err and "KAFKA_ALLOW_INSECURE_SASL=true" in err
    done = cli({**env, "KAFKA_ALLOW_INSECURE_SASL": "true"}, "check-config")
    assert done.returncode == 0, done.stderr
    assert "warning: INSECURE: KAFKA_ALLOW_INSECURE_SASL=true" in done.stderr
    assert "kafka-password-0123" not in done.stdout + done.stderr
    # SCRAM never sends the password itself; SASL_SSL encrypts it
    assert cli({**env, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}, "check-config").returncode == 0
    assert cli({**env, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "check-config").returncode == 0


def test_a_short_admin_token_is_refused() -> None:
    err = refused({"ADMIN_TOKEN": "secret"})
    assert "  - ADMIN_TOKEN: too short: at least 16 characters" in err
    assert "secret" not in err.replace("ADMIN_TOKEN", "")


def test_run_logs_its_warnings_loudly_before_anything_else() -> None:
    # The admin port is taken, so run stops (exit 2) right after logging its warnings.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {
            "CLARI_BASE_URL": "http://clari-proxy.internal/v2",
            "CLARI_ALLOW_INSECURE_HTTP": "true",
            "BATCH_SIZ": "50",
            "ADMIN_HOST": "127.0.0.1",
            "ADMIN_PORT": str(busy.getsockname()[1]),
            "LOG_FORMAT": "text",
        }
        done = cli(env, "run")
    assert done.returncode == 2, done.stderr
    assert "the admin endpoint cannot listen" in done.stderr
    warnings = [x for x in done.stderr.splitlines() if " WARNING " in x]
    assert any(
        "INSECURE: CLARI_ALLOW_INSECURE_HTTP=true: CLARI_BASE_URL is plain http:// to "
        "clari-proxy.internal" in x
        for x in warnings
    )
    assert any("BATCH_SIZ is not a setting and is ignored (did you mean BATCH_SIZE?)" in x
               for x in warnings)  # fmt: skip


def test_every_named_value_is_taken_in_any_case() -> None:
    # README: "values are case-insensitive where they are names". KAFKA_AUTO_OFFSET_RESET
    # =Earliest and KAFKA_VALUE_FORMAT=JSON were refused while the other names were not.
    for name, field in Settings.model_fields.items():
        types = (field.annotation, *typing.get_args(field.annotation))
        for literal in [t for t in types if typing.get_origin(t) is typing.Literal]:
            for value in typing.get_args(literal):
                as_written = _settings(field.alias, value)
                if as_written is None:
                    continue  # needs other settings too (CLARI_TEMPLATE=manual: CLARI_URL)
                for other in (value.upper(), value.lower(), value.title()):
                    got = _settings(field.alias, other)
                    assert got is not None, f"{field.alias}={other} refused"
                    assert getattr(got, name) == getattr(as_written, name)


def _settings(alias: str, value: str) -> Settings | None:
    try:
        return Settings(**BASE | {alias: value})
    except ValueError:
        return None

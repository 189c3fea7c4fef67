from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sink.config import Settings, describe_errors, load_settings, parse_headers

BASE = {"CLARI_ENTITY_TYPE": "Account", "CLARI_API_TOKEN": "tok-123", "CLARI_PARTNER_KEY": "pk-456"}


def errors(**values: str) -> list[str]:
    with pytest.raises(ValueError) as info:
        Settings(**{**BASE, **values})
    return describe_errors(info.value)


def test_defaults_follow_the_seed() -> None:
    s = Settings(**BASE)
    assert s.clari_template == "upload-entity-data"
    assert s.mode_label == "incremental" and s.wire_mode == "incremental"
    assert s.is_last_batch == "true"
    assert s.batch_size == 100 and s.batch_enabled and s.batch_grouping == "size"
    assert s.content_format == "clari-datasets"
    assert s.http_rate_limit == 100


@pytest.mark.parametrize(
    ("template", "mode", "setting", "applied"),
    [
        ("upload-entity-data", "Incremental", None, "true"),
        ("upload-entity-data", "Full", None, "auto"),
        ("ingest-bulk-entities", "Upsert", None, "true"),
        ("ingest-bulk-entities", "Replace", None, "auto"),
        ("ingest-bulk-entities", "Replace", "false", "false"),
        ("upload-entity-data", "Full", "true", "true"),
    ],
)
def test_an_initial_load_closes_automatically_unless_told_otherwise(
    template: str, mode: str, setting: str | None, applied: str
) -> None:
    """A ``true`` on every call of an initial load would end it at its first call."""
    extra = {"CLARI_IS_LAST_BATCH": setting} if setting else {}
    s = Settings(**{**BASE, "CLARI_TEMPLATE": template, "CLARI_MODE": mode, **extra})
    assert s.is_last_batch == applied
    warned = [w for w in s.warnings() if w.startswith("CLARI_IS_LAST_BATCH=true")]
    assert bool(warned) == (setting == "true")
    if warned:
        assert "refuses the calls after it" in warned[0]


@pytest.mark.parametrize(
    ("template", "mode", "wire"),
    [
        ("upload-entity-data", "Incremental", "incremental"),
        ("upload-entity-data", "Full", "initial"),
        ("ingest-bulk-entities", "Upsert", "incremental"),
        ("ingest-bulk-entities", "Merge", "incremental"),
        ("ingest-bulk-entities", "Replace", "initial"),
    ],
)
def test_seed_modes_map_onto_the_published_contract(template: str, mode: str, wire: str) -> None:
    assert Settings(**BASE, CLARI_TEMPLATE=template, CLARI_MODE=mode).wire_mode == wire


def test_raw_mode_is_sent_as_is() -> None:
    assert Settings(**BASE, CLARI_RAW_MODE="initial").wire_mode == "initial"


def test_mode_of_the_other_template_is_refused_with_allowed_values() -> None:
    lines = errors(CLARI_TEMPLATE="upload-entity-data", CLARI_MODE="Upsert")
    assert any("CLARI_MODE" in line and "Incremental, Full" in line for line in lines)


def test_unknown_enum_value_names_variable_and_allowed_values() -> None:
    lines = errors(BATCH_GROUPING="random")
    assert lines == ["BATCH_GROUPING='random': Input should be 'size', 'key' or 'attribute'"]


def test_entity_type_is_required_by_templates_and_checked() -> None:
    with pytest.raises(ValueError) as info:
        Settings(CLARI_API_TOKEN="t", CLARI_PARTNER_KEY="p")
    assert any("CLARI_ENTITY_TYPE" in line for line in describe_errors(info.value))
    lines = errors(CLARI_ENTITY_TYPE="Lead")
    assert any(
        "CLARI_ENTITY_TYPE" in x and "Account, Contact, Opportunity, Activity" in x for x in lines
    )
    assert Settings(**{**BASE, "CLARI_ENTITY_TYPE": "opportunity"}).entity_path == "opportunity"


def test_upload_batch_over_100_is_refused() -> None:
    lines = errors(BATCH_SIZE="150")
    assert any(line.startswith("BATCH_SIZE") and "1 to 100" in line for line in lines)
    assert (
        Settings(**BASE, BATCH_SIZE="150", CLARI_TEMPLATE="ingest-bulk-entities").batch_size == 150
    )


def test_manual_needs_url_and_attribute_grouping_needs_attribute() -> None:
    assert any("CLARI_URL" in x for x in errors(CLARI_TEMPLATE="manual"))
    assert any("BATCH_GROUP_ATTRIBUTE" in x for x in errors(BATCH_GROUPING="attribute"))


def test_secret_values_are_never_echoed() -> None:
    with pytest.raises(ValueError) as info:
        Settings(**{**BASE, "CLARI_API_TOKEN": ["not", "a", "string"]})  # type: ignore[dict-item]
    text = "\n".join(describe_errors(info.value))
    assert "CLARI_API_TOKEN" in text and "not" not in text
    s = Settings(**BASE)
    assert "tok-123" not in repr(s) and "pk-456" not in str(s)


def test_headers_form() -> None:
    assert parse_headers("X-A:1, X-B: two ,") == {"X-A": "1", "X-B": "two"}
    with pytest.raises(ValueError):
        parse_headers("novalue")
    assert any("CLARI_REQUEST_HEADERS" in x for x in errors(CLARI_REQUEST_HEADERS="broken"))


def test_environment_and_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "sink.env"
    path.write_text(
        "KAFKA_TOPICS=a,b\nCLARI_ENTITY_TYPE=Contact\nCLARI_API_TOKEN=x\n"
        "CLARI_PARTNER_KEY=y\nBATCH_SIZE=50\n"
    )
    monkeypatch.setenv("BATCH_SIZE", "25")
    s = load_settings(path)
    assert s.kafka_topics == ["a", "b"] and s.clari_entity_type == "Contact"
    assert s.batch_size == 25  # the environment wins over the file


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sink.cli", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_exits_2_naming_the_setting() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "KAFKA_TOPICS": "t",
        "CLARI_ENTITY_TYPE": "Account",
        "CLARI_API_TOKEN": "hush",
        "CLARI_PARTNER_KEY": "p",
        "BATCH_LINGER_MS": "-5",
    }
    done = subprocess.run(
        [sys.executable, "-m", "sink.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "BATCH_LINGER_MS='-5'" in done.stderr and "greater than or equal to 0" in done.stderr
    assert "hush" not in done.stderr + done.stdout


def test_poll_interval_below_session_timeout_is_refused() -> None:
    lines = errors(KAFKA_SESSION_TIMEOUT_MS="45000", KAFKA_MAX_POLL_INTERVAL_MS="10000")
    assert any(x.startswith("KAFKA_MAX_POLL_INTERVAL_MS") for x in lines)


def test_avro_needs_a_schema_registry() -> None:
    assert any("SCHEMA_REGISTRY_URL" in e for e in errors(KAFKA_VALUE_FORMAT="avro"))
    assert any(
        "SCHEMA_REGISTRY_URL" in e and "http://" in e
        for e in errors(KAFKA_VALUE_FORMAT="avro", SCHEMA_REGISTRY_URL="registry:8081")
    )
    ok = Settings(**BASE, KAFKA_VALUE_FORMAT="avro", SCHEMA_REGISTRY_URL="https://registry:8081")
    assert ok.kafka_value_format == "avro"
    assert any("json" in e and "avro" in e for e in errors(KAFKA_VALUE_FORMAT="protobuf"))


# --- every problem at once ------------------------------------------------------------
def test_field_errors_do_not_hide_the_checks_between_fields() -> None:
    lines = errors(CLARI_MODE="Upsert", BATCH_SIZE="500", KAFKA_AUTO_OFFSET_RESET="sometimes")
    assert len(lines) == 3
    assert any(
        x.startswith("KAFKA_AUTO_OFFSET_RESET='sometimes'") and "'earliest' or 'latest'" in x
        for x in lines
    )
    assert any(x.startswith("CLARI_MODE") and "Incremental, Full" in x for x in lines)
    assert any(x.startswith("BATCH_SIZE") and "1 to 100" in x for x in lines)


def test_a_check_that_reads_a_broken_field_is_skipped() -> None:
    # The mode cannot be judged against a template that is not one: only the template is named.
    lines = errors(CLARI_TEMPLATE="bulk", CLARI_MODE="Upsert")
    assert len(lines) == 1 and lines[0].startswith("CLARI_TEMPLATE='bulk'")


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_cli_lists_every_problem_and_exits_2(command: str) -> None:
    env = {
        "CLARI_ENTITY_TYPE": "Account",
        "CLARI_API_TOKEN": "hush-hush-token",
        "CLARI_PARTNER_KEY": "pk",
        "CLARI_MODE": "Upsert",
        "BATCH_SIZE": "500",
        "KAFKA_AUTO_OFFSET_RESET": "sometimes",
    }
    done = cli(env, command)
    assert done.returncode == 2, done.stderr
    problems = [x for x in done.stderr.splitlines() if x.startswith("  - ")]
    named = {x[4:].split("=")[0].split(":")[0] for x in problems}
    expected = {"CLARI_MODE", "BATCH_SIZE", "KAFKA_AUTO_OFFSET_RESET"}
    # run also needs topics, and says so in the same list
    assert named == (expected | {"KAFKA_TOPICS"} if command == "run" else expected)
    assert "Incremental, Full" in done.stderr and "1 to 100" in done.stderr
    assert "'earliest' or 'latest'" in done.stderr
    assert "hush-hush-token" not in done.stderr + done.stdout


def test_the_readmes_example_of_the_error_output_is_what_the_cli_prints() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("clari-sink: invalid settings, not starting:\n", 1)[1]
    example = "clari-sink: invalid settings, not starting:\n" + example.split("```", 1)[0]
    env = {"KAFKA_TOPICS": "crm.accounts", **BASE, "CLARI_MODE": "Upsert"}
    done = cli(env, "run")
    assert done.returncode == 2
    assert done.stderr == example


def test_order_by_id_needs_an_id_field() -> None:
    assert Settings(**BASE, SINK_ORDER_BY="ID").order_by == "id"
    problems = errors(SINK_ORDER_BY="id", CLARI_ID_FIELD="")
    assert any("SINK_ORDER_BY" in p and "CLARI_ID_FIELD" in p for p in problems), problems
    assert any("SINK_ORDER_BY" in p and "key" in p for p in errors(SINK_ORDER_BY="account"))

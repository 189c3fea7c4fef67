"""One masking function for every printed, served or published value (sink/masking.py)."""

from __future__ import annotations

import subprocess
import sys

import orjson

from sink.config import Settings
from sink.endpoint import EndpointBuilder
from sink.health import Health
from sink.masking import Masker, mask
from sink.records import Batch, SinkRecord

URL_TOKEN = "urltoken-0123456789"
BASE_PASSWORD = "basepass-0123456789"
REGISTRY_PASSWORD = "regpass-0123456789"
HEADER_SECRET = "hdrsecret-0123456789"
API_TOKEN = "apitoken-0123456789"
LEAKY = {
    "CLARI_TEMPLATE": "manual",
    "CLARI_URL": f"https://api.example.com/ingest/{{entity}}?apikey={URL_TOKEN}&mode={{mode}}",
    "CLARI_BASE_URL": f"https://sink:{BASE_PASSWORD}@api.example.com/v2",
    "KAFKA_VALUE_FORMAT": "avro",
    "SCHEMA_REGISTRY_URL": f"https://reader:{REGISTRY_PASSWORD}@registry.example.com",
    "CLARI_REQUEST_HEADERS": f"X-Custom-Auth:{HEADER_SECRET},X-Team:revops,Accept:text/csv",
    "CLARI_AUTH_STYLE": "bearer",
    "CLARI_API_TOKEN": API_TOKEN,
    "CLARI_ENTITY_TYPE": "Account",
}
SECRETS = (URL_TOKEN, BASE_PASSWORD, REGISTRY_PASSWORD, HEADER_SECRET, API_TOKEN)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sink.cli", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_shows_no_secret_from_urls_or_headers() -> None:
    done = cli(LEAKY, "check-config")
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert [s for s in SECRETS if s in out] == []
    shown = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    # what is not a secret is still there to check
    assert shown["CLARI_URL"] == ("https://api.example.com/ingest/{entity}?apikey=****&mode={mode}")
    assert shown["CLARI_BASE_URL"] == "https://****@api.example.com/v2"
    assert shown["SCHEMA_REGISTRY_URL"] == "https://****@registry.example.com"
    # every request-header value is a credential unless its name is a safe one
    assert shown["CLARI_REQUEST_HEADERS"] == "X-Custom-Auth:****,X-Team:****,Accept:text/csv"
    assert shown["CLARI_API_TOKEN"] == "****"


def test_safe_headers_are_shown() -> None:
    done = cli({**LEAKY, "CLARI_SAFE_HEADERS": "x-team"}, "check-config")
    assert done.returncode == 0, done.stderr
    assert "CLARI_REQUEST_HEADERS=X-Custom-Auth:****,X-Team:revops,Accept:text/csv" in (
        done.stdout.splitlines()
    )
    assert HEADER_SECRET not in done.stdout


def test_invalid_settings_never_echo_a_url_secret() -> None:
    done = cli({**LEAKY, "CLARI_URL": f"ftp://u:{BASE_PASSWORD}@h/x?token={URL_TOKEN}"}, "run")
    assert done.returncode == 2
    assert "CLARI_URL" in done.stderr and "ftp://****@h/x?token=****" in done.stderr
    assert [s for s in SECRETS if s in done.stderr + done.stdout] == []


def one_batch() -> Batch:
    record = SinkRecord("crm", 0, 7, b"k", orjson.dumps({"id": "A1"}), None, 0)
    return Batch(id="b1", group="", records=[record], nbytes=record.nbytes)


def test_the_builders_masking_hides_url_passwords_for_the_response_topic() -> None:
    # sink/reporting.py publishes request URLs and bodies through builder.mask_text.
    settings = Settings(
        CLARI_BASE_URL=f"https://sink:{BASE_PASSWORD}@api.example.com/v2",
        CLARI_ENTITY_TYPE="Account",
        CLARI_API_TOKEN=API_TOKEN,
        CLARI_PARTNER_KEY="partner-key-0123",
    )
    builder = EndpointBuilder(settings)
    req = builder.build(one_batch(), is_last=True)
    assert BASE_PASSWORD in req.url  # sent as configured
    assert builder.mask_text(req.url) == (
        "https://****@api.example.com/v2/ingest/entity/account?mode=incremental&isLastBatch=true"
    )
    shown = builder.mask_headers(req.headers)
    assert shown["apikey"] == shown["partnerkey"] == "****"
    assert shown["Content-Type"] == "application/json"


def test_masked_json_stays_json() -> None:
    quoted = 'se"cret\\value-0123'
    message = {
        "url": "https://u:pw@h/x?access_token=abc&mode=full",
        "body": f"rejected {quoted} and {URL_TOKEN}",
        "attempt": 1,
    }
    text = Masker([quoted, URL_TOKEN]).text(orjson.dumps(message).decode())
    back = orjson.loads(text)
    assert back == {
        "url": "https://****@h/x?access_token=****&mode=full",
        "body": "rejected **** and ****",
        "attempt": 1,
    }


def test_mask_leaves_ordinary_text_alone() -> None:
    text = "POST https://api.clari.com/v2/ingest/entity/account?mode=incremental&isLastBatch=true"
    assert mask(text) == text


def test_health_masks_what_callers_hand_it() -> None:
    settings = Settings(CLARI_ENTITY_TYPE="Account", CLARI_API_TOKEN=API_TOKEN,
                        CLARI_PARTNER_KEY="partner-key-0123")  # fmt: skip
    health = Health.for_settings(settings)
    # what sink/delivery.py stores on a 401 whose body echoes the credential
    health.fail("auth", f'credential rejected: HTTP 401 {{"error": "bad apikey {API_TOKEN}"}}')
    assert API_TOKEN not in str(health.problems())
    assert "credential rejected: HTTP 401" in health.problems()["auth"]["message"]  # type: ignore[operator]

"""The admin endpoint over real HTTP: open probes, guarded activation, masked problems."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sink.admin import build_admin_app
from sink.config import Settings
from sink.pipeline import Pipeline

ADMIN_TOKEN = "admin-token-0123456789abcdef"
API_TOKEN = "api-token-0123456789"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def pipeline(**settings: Any) -> Pipeline:
    return Pipeline(
        Settings(
            CLARI_ENTITY_TYPE="Account",
            CLARI_API_TOKEN=API_TOKEN,
            CLARI_PARTNER_KEY="partner-key-0123",
            **settings,
        )
    )


@pytest.fixture
async def admin() -> AsyncIterator[tuple[TestClient[Any, Any], Pipeline]]:
    p = pipeline(ADMIN_TOKEN=ADMIN_TOKEN)
    async with TestClient(TestServer(build_admin_app(p))) as client:
        yield client, p


async def test_probes_metrics_and_state_need_no_token(
    admin: tuple[TestClient[Any, Any], Pipeline],
) -> None:
    client, _ = admin
    for path in ("/healthz", "/readyz", "/metrics", "/admin/state"):
        assert (await client.get(path)).status == 200, path


async def test_activation_needs_the_bearer_token(
    admin: tuple[TestClient[Any, Any], Pipeline],
) -> None:
    client, p = admin
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
        res = await client.post("/admin/deactivate", headers=headers)
        assert res.status == 401, headers
        assert "Authorization: Bearer" in (await res.json())["error"]
        assert res.headers["WWW-Authenticate"].startswith("Bearer")
    assert p.active
    res = await client.post("/admin/deactivate", headers=BEARER)
    assert res.status == 200 and (await res.json())["active"] is False
    assert not p.active
    res = await client.post("/admin/activate", headers=BEARER)
    assert res.status == 200 and p.active


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "text/plain"},
    ],
)
async def test_browser_requests_are_refused_even_with_the_token(
    admin: tuple[TestClient[Any, Any], Pipeline], headers: dict[str, str]
) -> None:
    client, p = admin
    res = await client.post("/admin/deactivate", headers={**BEARER, **headers})
    assert res.status == 403
    assert "refused" in (await res.json())["error"]
    assert p.active


async def test_a_command_line_client_is_let_through(
    admin: tuple[TestClient[Any, Any], Pipeline],
) -> None:
    client, p = admin
    headers = {**BEARER, "Sec-Fetch-Site": "none", "Content-Type": "application/json"}
    assert (await client.post("/admin/deactivate", headers=headers)).status == 200
    assert not p.active


async def test_without_admin_token_activation_is_off() -> None:
    p = pipeline()
    async with TestClient(TestServer(build_admin_app(p))) as client:
        res = await client.post("/admin/deactivate", headers={"Authorization": "Bearer x"})
        assert res.status == 403
        assert "set ADMIN_TOKEN" in (await res.json())["error"]
        assert p.active
        assert (await client.get("/admin/state")).status == 200


async def test_readyz_and_state_never_show_a_credential_the_api_echoed(
    admin: tuple[TestClient[Any, Any], Pipeline],
) -> None:
    client, p = admin
    # What sink/delivery.py stores when a 401's body echoes the rejected credential.
    body = f'{{"message": "invalid apikey {API_TOKEN}"}}'
    p.health.fail("auth", f"credential rejected: HTTP 401 {body}")
    ready = await client.get("/readyz")
    assert ready.status == 503
    state = await client.get("/admin/state")
    for text in (await ready.text(), await state.text()):
        assert API_TOKEN not in text
        assert "credential rejected: HTTP 401" in text

"""Build the HTTP request for a batch: from a template, or from the manual settings."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from urllib.parse import quote

from sink import __version__, masking
from sink.config import Settings
from sink.decoding import lookup
from sink.entities import EntityRoutes, Route
from sink.formats import CONTENT_TYPES, ROW_FORMATS, json_pieces, render_pieces
from sink.records import Batch

MASK = masking.MASK
BULK_FILE_FIELD = "FileData"  # the part name in Clari's bulk example
BULK_FILE_NAME = "data.json"

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass(slots=True)
class PreparedRequest:
    method: str
    url: str
    headers: dict[str, str]
    pieces: list[bytes]  # the body, sent one piece after the other (formats.render_pieces)
    records: int = 0
    nbytes: int = -1  # the body's size, kept once the body itself is released

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            self.nbytes = sum(map(len, self.pieces))

    @property
    def body(self) -> bytes:
        """The whole body in one buffer: for display and small bodies."""
        return b"".join(self.pieces)

    @body.setter
    def body(self, value: bytes) -> None:
        self.pieces = [value]
        self.nbytes = len(value)

    def release(self) -> None:
        """Let go of the body (sent: a 10 MB bulk file is not held while its job runs)."""
        self.pieces = []


class EndpointBuilder:
    """Knows the endpoint's method, URL, headers and body format for the settings."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.template = settings.clari_template
        self.base = settings.clari_base_url.rstrip("/")
        self.format = settings.content_format
        self.masker = settings.masker()
        self.routes = EntityRoutes(settings)  # each batch's entity: its topic's

    # -- the pieces ------------------------------------------------------------------
    def credential_headers(self) -> dict[str, str]:
        s = self.s
        headers: dict[str, str] = {}
        token = s.clari_api_token.get_secret_value() if s.clari_api_token else None
        if s.clari_auth_style == "apikey" and token:
            headers["apikey"] = token
        elif s.clari_auth_style == "bearer" and token:
            headers["Authorization"] = f"Bearer {token}"
        if s.clari_partner_key is not None and s.clari_auth_style != "none":
            headers["partnerkey"] = s.clari_partner_key.get_secret_value()
        return headers

    def url_for(self, batch: Batch, is_last: bool, route: Route | None = None) -> str:
        s = self.s
        last = "true" if is_last else "false"
        entity = (route or self.routes.for_batch(batch)).path
        if self.template == "upload-entity-data":
            return (
                f"{self.base}/ingest/entity/{entity}?mode={quote(s.wire_mode)}&isLastBatch={last}"
            )
        if self.template == "ingest-bulk-entities":
            return (
                f"{self.base}/ingest/bulk/entity/{entity}"
                f"?mode={quote(s.wire_mode)}&isLastBatch={last}"
            )
        first = batch.first_record()
        fixed: dict[str, str] = {
            "entity": entity,
            "mode": s.wire_mode,
            "isLastBatch": last,
            "topic": first.topic if first else "",
            "group": batch.group,
            "key": first.key.decode("utf-8", "replace") if first and first.key else "",
        }

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in fixed:
                return quote(fixed[name], safe="")
            value = lookup(first.data if first else None, name)
            return "" if value is None else quote(str(value), safe="")

        return _PLACEHOLDER.sub(substitute, s.clari_url or "")

    def job_status_url(self, job_id: str) -> str:
        return f"{self._job_base()}/ingest/job/{quote(job_id, safe='')}"

    def _job_base(self) -> str:
        if self.template != "manual" or not self.s.clari_url:
            return self.base
        url = self.s.clari_url
        return url[: url.index("/ingest/")] if "/ingest/" in url else self.base

    # -- the request ---------------------------------------------------------------
    def build(self, batch: Batch, is_last: bool) -> PreparedRequest:
        s = self.s
        headers = {
            "User-Agent": f"clari-sink/{__version__}",
            **s.extra_headers,
            **self.credential_headers(),
        }
        method = "POST" if self.template != "manual" else s.clari_method
        route = self.routes.for_batch(batch)
        head = tail = b""
        if self.template == "ingest-bulk-entities":
            boundary = f"clari-sink-{uuid.uuid4().hex}"
            head, tail = _multipart_envelope(boundary)
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        else:
            headers["Content-Type"] = CONTENT_TYPES[self.format]
        if self.format in ROW_FORMATS:  # built from the decoded records
            pieces = render_pieces(self.format, batch.records, route.source_entity, head, tail)
        else:  # joined from the bodies, without making a record of each message
            pieces = json_pieces(self.format, batch.bodies(), route.source_entity, head, tail)
        return PreparedRequest(
            method=method,
            url=self.url_for(batch, is_last, route),
            headers=headers,
            pieces=pieces,
            records=batch.count,
        )

    def job_request(self, job_id: str) -> PreparedRequest:
        headers = {
            "User-Agent": f"clari-sink/{__version__}",
            **self.s.extra_headers,
            **self.credential_headers(),
        }
        return PreparedRequest(
            method="GET", url=self.job_status_url(job_id), headers=headers, pieces=[]
        )

    # -- masking: sink/masking.py, bound to these settings' secrets --------------------
    def mask_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """Headers to show: every value ``****`` but those of safe headers (Content-Type,
        User-Agent, CLARI_SAFE_HEADERS...), which are masked as text."""
        return self.masker.headers(headers)

    def mask_text(self, text: str) -> str:
        """Any text to show or publish: secrets a user or an API copied into it, URL
        passwords and credential-named query values become ``****``."""
        return self.masker.text(text)


def _multipart_envelope(boundary: str) -> tuple[bytes, bytes]:
    """What goes before and after the JSON file in a one-part multipart/form-data body."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{BULK_FILE_FIELD}"; '
        f'filename="{BULK_FILE_NAME}"\r\nContent-Type: application/json\r\n\r\n'
    )
    return head.encode(), f"\r\n--{boundary}--\r\n".encode()

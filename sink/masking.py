"""The one masking function: every value the sink prints, logs, publishes or serves goes
through :func:`mask` (directly, or bound to the settings' secrets by :class:`Masker`).

Three kinds of secret are hidden:

- the values of the secret settings (tokens, keys, passwords, unsafe request-header
  values), wherever a user or an API copied them: as written, JSON-escaped and
  percent-encoded;
- ``user:password@`` in any URL;
- the value of a query parameter whose name says it holds a credential
  (``?apikey=...``, ``&token=...``, ``access_token``, ``sig``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote

import orjson

MASK = "****"

# Header names whose values are shown as they are. Every other request header counts as
# a credential (CLARI_REQUEST_HEADERS may carry custom auth headers); CLARI_SAFE_HEADERS
# adds names to these.
SAFE_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-encoding",
        "content-language",
        "content-length",
        "content-type",
        "user-agent",
    }
)

# A value copied from a request header is searched for in free text only from this
# length on: a short value ("on", "json", "kafka") is no credential, and replacing it
# everywhere would garble the response topic's JSON ("attempt": 1). Where headers are
# shown, every unsafe value is masked whatever its length.
MIN_SEARCHED_LEN = 8

# scheme://user:password@host -> scheme://****@host
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#@\s\"'<>\\]+@")
# ?apikey=..., &access_token=..., ;sig=... : the value up to the next separator, quote
# or backslash, so that masking JSON text keeps it valid JSON.
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[\w.\-]*(?:key|token|secret|passw|pwd|auth|credential|session|signature)"
    r"[\w.\-]*|sig|code)=)[^&#;\s\"'<>\\]+"
)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret in ``secrets`` (longest first), every URL password and
    every credential-named query value replaced by ``****``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    if "@" in text:
        text = _USERINFO.sub(rf"\1{MASK}@", text)
    if "=" in text:
        text = _SECRET_PARAM.sub(rf"\1{MASK}", text)
    return text


def secret_query_values(url: str) -> list[str]:
    """The values :func:`mask` would hide in ``url``'s query (to search for elsewhere)."""
    return [m.group(0).split("=", 1)[1] for m in _SECRET_PARAM.finditer(url)]


def userinfo(url: str) -> list[str]:
    """The ``user:password`` parts of the URLs in ``url``."""
    return [m.group(0)[len(m.group(1)) : -1] for m in _USERINFO.finditer(url)]


class Masker:
    """:func:`mask` bound to one set of secrets (see ``Settings.secret_values``)."""

    def __init__(self, secrets: Iterable[str] = (), safe_headers: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.add(secret)
            # As an API or our own reporting would show it: inside JSON, inside a URL.
            forms.add(orjson.dumps(secret).decode()[1:-1])
            forms.add(quote(secret, safe=""))
        # Longest first: a secret that contains another is masked whole.
        self._secrets = sorted(forms, key=len, reverse=True)
        self.safe_headers = SAFE_HEADERS | {h.strip().lower() for h in safe_headers}

    def text(self, text: str) -> str:
        return mask(text, self._secrets)

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Headers to show: safe ones as they are (masked as text), all others ``****``."""
        return {
            name: self.text(value) if name.lower() in self.safe_headers else MASK
            for name, value in headers.items()
        }


__all__ = ["MASK", "MIN_SEARCHED_LEN", "SAFE_HEADERS", "Masker", "mask"]

"""Checks on single setting values that pydantic's types cannot express: HTTP header
names and values, Kafka topic names, URLs and their transport security, and settings
that do not exist. Pure functions, so that sink/config.py stays a model."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from sink.masking import mask

# RFC 9110 5.6.2: a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Kafka's own rule (kafka.common.internals.Topic): at most 249 of these, not "." or "..".
_TOPIC = re.compile(r"[a-zA-Z0-9._\-]{1,249}")
_PLACEHOLDER = re.compile(r"\{[^{}]+\}")


def control_characters(value: str) -> str | None:
    """What is wrong with ``value`` as an HTTP header value or a credential, or None.

    The value itself is never part of the answer: it may be a secret."""
    for i, char in enumerate(value):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return (
                f"contains a control character ({_char_name(char)}) at position {i + 1}; "
                "a header value or credential cannot hold one"
            )
    return None


def _char_name(char: str) -> str:
    names = {"\n": "newline", "\r": "carriage return", "\t": "tab", "\0": "NUL"}
    return names.get(char, f"U+{ord(char):04X}")


def header_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a header name, or None. Only the part before the
    first bad character is shown: a malformed entry may run on into a credential."""
    if _TOKEN.fullmatch(name):
        return None
    bad = next(i for i, char in enumerate(name) if not _TOKEN.fullmatch(char))
    if name[bad] == " ":
        char = "a space"
    elif name[bad].isprintable():
        char = f"'{name[bad]}'"
    else:
        char = f"a control character ({_char_name(name[bad])})"
    return (
        f"header name '{name[:bad]}...' is not a valid HTTP header name: {char} at "
        f"position {bad + 1} (letters, digits and !#$%&'*+-.^_`|~ only)"
    )


def topic_problem(name: str) -> str | None:
    if _TOPIC.fullmatch(name) and name not in (".", ".."):
        return None
    shown = "''" if not name else f"'{name}'"
    return (
        f"{shown} is not a legal Kafka topic name; allowed: 1 to 249 characters of "
        "a-z A-Z 0-9 . _ - (not '.' or '..')"
    )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) or the name localhost."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def url_problem(url: str, insecure_setting: str, allow_insecure: bool) -> str | None:
    """Why ``url`` cannot be used, or None. ``{placeholders}`` stand for any value."""
    concrete = _PLACEHOLDER.sub("x", url.strip())
    shown = mask(url)
    try:
        parts = urlsplit(concrete)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return f"'{shown}' is not a valid URL ({exc})"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return (
            f"'{shown}' is not an absolute https:// URL (http:// only to a loopback "
            "host), e.g. https://api.clari.com/v2"
        )
    if scheme == "http" and not is_loopback(host) and not allow_insecure:
        return (
            f"'{shown}': plain http:// to {host} would send credentials and data "
            f"unencrypted; use https://, or set {insecure_setting}=true to allow it"
        )
    return None


def insecure_url(url: str) -> str | None:
    """The host of an http:// URL that is not loopback (used when allowed), or None."""
    try:
        parts = urlsplit(_PLACEHOLDER.sub("x", url.strip()))
    except ValueError:
        return None
    host = parts.hostname or ""
    return host if parts.scheme.lower() == "http" and not is_loopback(host) else None


def broker_hosts(bootstrap: str) -> list[str]:
    """The host names of a ``host:port,[::1]:port,PROTO://host:port`` list."""
    hosts: list[str] = []
    for entry in (e.strip() for e in bootstrap.split(",")):
        if not entry:
            continue
        entry = entry.split("://", 1)[-1]
        if entry.startswith("["):
            hosts.append(entry[1 : entry.find("]")] if "]" in entry else entry[1:])
        else:
            hosts.append(entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry)
    return hosts


def did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


__all__ = [
    "broker_hosts",
    "control_characters",
    "did_you_mean",
    "header_name_problem",
    "insecure_url",
    "is_loopback",
    "topic_problem",
    "url_problem",
]

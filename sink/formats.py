"""Content formats: turn a batch's records into a request body.

JSON-based formats reuse each record's encoded bytes (encoded once, when consumed); CSV
and XML convert the decoded records.
"""

from __future__ import annotations

import csv
import io
import re
from base64 import b64encode
from collections.abc import Iterator, Sequence
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import orjson

from sink.records import SinkRecord

CONTENT_TYPES = {
    "clari-datasets": "application/json",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "xml": "application/xml; charset=utf-8",
}


ROW_FORMATS = frozenset({"csv", "xml"})  # rendered from decoded records, not their bodies
PIECE_BYTES = 64 * 1024  # the size of the buffers a large body is built and sent in


def render(
    fmt: str, records: Sequence[SinkRecord], source_entity: str, head: bytes = b"",
    tail: bytes = b"",
) -> bytes:  # fmt: skip
    """The body in ``fmt``, between ``head`` and ``tail`` (a multipart envelope)."""
    return b"".join(render_pieces(fmt, records, source_entity, head, tail))


def render_pieces(
    fmt: str, records: Sequence[SinkRecord], source_entity: str, head: bytes = b"",
    tail: bytes = b"",
) -> list[bytes]:  # fmt: skip
    """The body as consecutive pieces of about PIECE_BYTES, to be sent one after the
    other. JSON-based bodies are joins over the records' encoded bytes, never one
    buffer: a bulk file reaches 10 MB, and joining it in one piece cost 0.46 us a record
    (the page faults of a fresh 10 MB mapping, then unmapping it), in pieces 0.03 us (the
    heap hands the same warm memory out again)."""
    if fmt == "csv":
        return [head + _csv([r.data for r in records]) + tail]
    if fmt == "xml":
        return [head + _xml([r.data for r in records]) + tail]
    return json_pieces(fmt, [r.body for r in records], source_entity, head, tail)


def json_pieces(
    fmt: str, bodies: list[bytes], source_entity: str, head: bytes = b"", tail: bytes = b""
) -> list[bytes]:
    """render_pieces() for the JSON-based formats, from the records' encoded bodies."""
    if fmt == "ndjson":
        # One record a line: a producer's pretty-printed JSON is made compact first.
        bodies = [_one_line(b) if b"\n" in b or b"\r" in b else b for b in bodies]
        return _pieces(b"\n", bodies, head, (b"\n" if bodies else b"") + tail)
    if fmt == "clari-datasets":
        # Clari's published contract: an array of data sets naming their source entity.
        open_ = b'[{"sourceEntity":' + orjson.dumps(source_entity) + b',"records":['
        return _pieces(b",", bodies, head + open_, b"]}]" + tail)
    if fmt == "json":
        return _pieces(b",", bodies, head + b"[", b"]" + tail)
    raise ValueError(f"unknown content format {fmt!r}")


def _one_line(body: bytes) -> bytes:
    """A JSON body on one line: compact, or, if orjson cannot encode it again (a record
    sent as it is may nest 1024 levels, orjson encodes 254), with its line breaks made
    spaces. In valid JSON (every body is checked or encoded) a raw line break can only be
    whitespace between tokens: in a string it is escaped, and no UTF-8 sequence holds its
    byte."""
    try:
        return orjson.dumps(orjson.loads(body))
    except (orjson.JSONDecodeError, TypeError):
        return body.replace(b"\n", b" ").replace(b"\r", b" ")


def _pieces(sep: bytes, parts: list[bytes], start: bytes, end: bytes) -> list[bytes]:
    """``start + sep.join(parts) + end`` as pieces of about PIECE_BYTES each."""
    if not parts:
        return [start + end]
    step = max(1, PIECE_BYTES * len(parts) // max(1, sum(map(len, parts))))
    pieces = [start, sep.join(parts[:step])]
    for i in range(step, len(parts), step):
        pieces.append(sep.join([b"", *parts[i : i + step]]))  # led by its separator
    pieces.append(end)
    return pieces


# -- CSV -------------------------------------------------------------------------------------
# One row a record, one column a leaf: nested objects flatten into dotted column names,
# arrays stay in one cell as JSON, null is an empty cell, an empty object the cell "{}".
#
# Lossless: a key's own dots and backslashes are escaped with a backslash in its column
# name ("a.b" -> "a\.b", "a\b" -> "a\\b"), so {"a":{"b":1}} and {"a.b":2} get the columns
# a.b and a\.b.
#
# Safe to open: spreadsheets run a cell that starts with = + - or @ as a formula (and some
# after a tab or a carriage return): such a text cell, and a column name, is written with
# a leading apostrophe ('=1+1), OWASP's advice for CSV injection; one that starts with an
# apostrophe gets a second one, so that dropping one leading apostrophe from a cell that
# has one always gives the value back (as spreadsheets show it). Numbers are written as
# numbers: -5 is a number to a spreadsheet, not a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_safe(text: str) -> str:
    """A text cell as written (see above)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_column(path: list[str]) -> str:
    """The column name of a leaf at ``path`` (keys from the record down)."""
    return ".".join(k.replace("\\", "\\\\").replace(".", "\\.") for k in path)


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """The record's cells by column name, in the record's order (depth first). Without
    recursion: a record sent as it is may nest 1024 levels (sink/contract.py)."""
    flat: dict[str, Any] = {}
    todo: list[tuple[str, Iterator[tuple[str, Any]]]] = [("", iter(data.items()))]
    while todo:
        prefix, items = todo[-1]
        for key, value in items:
            name = prefix + key.replace("\\", "\\\\").replace(".", "\\.")
            if isinstance(value, dict):
                if value:
                    todo.append((name + ".", iter(value.items())))
                    break  # its leaves first, then this object's next key
                flat[name] = "{}"
            elif isinstance(value, list):
                flat[name] = _json_text(value)  # a cell holds the list as JSON
            elif value is None:
                flat[name] = ""
            elif isinstance(value, bool):
                flat[name] = "true" if value else "false"
            elif isinstance(value, str):
                flat[name] = csv_safe(value)
            else:
                flat[name] = value
        else:
            todo.pop()
    return flat


def _csv(rows: list[dict[str, Any]]) -> bytes:
    flat = [_flatten(row) for row in rows]
    columns: dict[str, None] = {}
    for row in flat:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    names = list(columns)
    writer.writerow([csv_safe(name) for name in names])
    writer.writerows([row.get(name, "") for name in names] for row in flat)
    return out.getvalue().encode()


def _json_text(value: Any) -> str:
    """A list as JSON text; one too deep for orjson (a record sent as it is may nest 1024
    levels) in the same form, by a slower encoder without recursion."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return _deep_json(value)


def _deep_json(value: Any) -> str:
    """orjson's compact JSON, for values orjson refuses to nest so deep."""
    out: list[str] = []
    todo: list[Any] = [value]
    close = _Close()
    while todo:
        item = todo.pop()
        if isinstance(item, _Close):
            out.append(item.text)
        elif isinstance(item, dict):
            out.append("{")
            todo.append(_Close("}"))
            parts: list[Any] = []
            for i, (key, inner) in enumerate(item.items()):
                parts.append(_Close(("," if i else "") + orjson.dumps(key).decode() + ":"))
                parts.append(inner)
            todo.extend(reversed(parts))
        elif isinstance(item, list):
            out.append("[")
            todo.append(_Close("]"))
            parts = []
            for i, inner in enumerate(item):
                if i:
                    parts.append(close)
                parts.append(inner)
            todo.extend(reversed(parts))
        else:
            out.append(orjson.dumps(item).decode())
    return "".join(out)


class _Close:
    """Text _deep_json writes as it is when it comes to it (a separator, a closing bracket)."""

    __slots__ = ("text",)

    def __init__(self, text: str = ",") -> None:
        self.text = text


# -- XML -------------------------------------------------------------------------------------
# <records><record>...</record>...</records>, a record's keys as elements in its order.
#
# Lossless:
# - A key that is a plain XML name (ASCII letters, digits, _ . -, not starting with a
#   digit, ., - or "xml") is the element's name; any other key is written
#   <field name="the key"> ("a b" and "a_b" are <field name="a b"> and <a_b>).
# - An array is <key type="array"> with an <item> for each element (so an object with a
#   key "item" stays an object), null is <key type="null"/>, an empty object
#   <key type="object"/>; other scalars are text (numbers and booleans as JSON writes
#   them), an empty string <key></key>.
# - XML 1.0 cannot hold most control characters, even escaped: a text (or key) with one
#   is written as base64 of its UTF-8 bytes, marked encoding="base64" (name64="..." for a
#   key). A carriage return is written &#13;, which parsers keep (a raw one they turn into
#   a line feed).
# Every body parses; nothing here recurses (a record sent as it is may nest 1024 levels).
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _open_tag(key: str | None, attrs: str = "") -> tuple[str, str]:
    """The start tag (without its closing ``>``) and the end tag of a key's element;
    None is an array's item."""
    if key is None:
        return "<item" + attrs, "</item>"
    if _XML_NAME.fullmatch(key) and key[:3].lower() != "xml":
        return f"<{key}{attrs}", f"</{key}>"
    if _NOT_XML_CHAR.search(key):
        name = b64encode(key.encode("utf-8", "surrogatepass")).decode("ascii")
        return f'<field name64="{name}"{attrs}', "</field>"
    return f"<field name={quoteattr(key)}{attrs}", "</field>"


def _xml_text(text: str) -> tuple[str, str]:
    """The attributes and content of a text element."""
    if _NOT_XML_CHAR.search(text):
        return ' encoding="base64"', b64encode(text.encode("utf-8", "surrogatepass")).decode()
    return "", escape(text, {"\r": "&#13;"})


def _xml(rows: list[dict[str, Any]]) -> bytes:
    out = ['<?xml version="1.0" encoding="UTF-8"?><records>']
    # (key, value) to write, or the end tag of an element whose children are written.
    todo: list[tuple[str | None, Any] | str] = []
    for row in rows:
        out.append("<record>")
        todo.append("</record>")
        todo.extend(reversed(list(row.items())))
        while todo:
            item = todo.pop()
            if isinstance(item, str):
                out.append(item)
                continue
            key, value = item
            if isinstance(value, dict):
                start, end = _open_tag(key, "" if value else ' type="object"')
                if not value:
                    out.append(start + "/>")
                    continue
                out.append(start + ">")
                todo.append(end)
                todo.extend(reversed(list(value.items())))
            elif isinstance(value, list):
                start, end = _open_tag(key, ' type="array"')
                out.append(start + ">")
                todo.append(end)
                todo.extend((None, inner) for inner in reversed(value))
            elif value is None:
                out.append(_open_tag(key, ' type="null"')[0] + "/>")
            else:
                if isinstance(value, str):
                    attrs, text = _xml_text(value)
                elif isinstance(value, bool):
                    attrs, text = "", "true" if value else "false"
                else:
                    attrs, text = "", orjson.dumps(value).decode()
                start, end = _open_tag(key, attrs)
                out.append(f"{start}>{text}{end}")
    out.append("</records>")
    return "".join(out).encode()

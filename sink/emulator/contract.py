"""Clari's published ingest contract: what a valid request is, and the documented errors."""

from __future__ import annotations

from typing import Any

import simdjson

UPLOAD_MAX_RECORDS = 100
BULK_MAX_BYTES = 10 * 1024 * 1024
V2_MODES = frozenset({"initial", "incremental"})
# Part B of clari-api.md: the form the Nexla description shows (seed entity names and modes).
V1_MODES = frozenset({"incremental", "full", "replace", "merge", "upsert", "initial"})
ENTITIES = frozenset({"account", "opportunity", "contact", "activity"})

BAD_APIKEY = {"error": "Invalid authentication credentials"}
RATE_LIMITED = {"error": "API rate limit exceeded"}
JOB_NOT_FOUND = {"error": "Bulk ingestion job not found. Please provide correct jobId."}
JOB_FAILED = "Bulk ingestion job failed. Please retry ingestion."


def error(code: str, summary: str) -> dict[str, str]:
    return {"errorCode": code, "errorSummary": summary}


def bad_partner_key() -> list[dict[str, str]]:
    return [error("INVALID_PARTNER_KEY", "Invalid partner key")]


def check_query(
    mode: str | None, is_last: str | None, modes: frozenset[str]
) -> list[dict[str, str]]:
    errors = []
    if mode is None or mode.lower() not in modes:
        errors.append(
            error(
                "INVALID_INPUT_FORMAT",
                f"Invalid mode '{mode}'. Allowed values: {', '.join(sorted(modes))}",
            )
        )
    if is_last is not None and is_last.lower() not in ("true", "false"):
        errors.append(
            error(
                "INVALID_INPUT_FORMAT",
                f"Invalid isLastBatch '{is_last}'. Allowed values: true, false",
            )
        )
    return errors


def _is_millis(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def check_datasets(
    body: Any, max_records: int | None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Validate the array-of-data-sets body; return (data sets, errors)."""
    if not isinstance(body, list):
        return [], [error("INVALID_INPUT_FORMAT", "Request body must be an array of data sets")]
    errors: list[dict[str, str]] = []
    total = 0
    for i, ds in enumerate(body):
        if not isinstance(ds, dict) or not isinstance(ds.get("sourceEntity"), str):
            errors.append(error("INVALID_INPUT_FORMAT", f"Data set {i}: missing sourceEntity"))
            continue
        if not isinstance(ds.get("records"), list):
            errors.append(error("INVALID_INPUT_FORMAT", f"Data set {i}: missing records"))
            continue
        total += len(ds["records"])
    if max_records is not None and total > max_records:
        return [], [error("INVALID_INPUT_FORMAT", f"The number of records limit to {max_records}")]
    if errors:
        return [], errors
    seen: set[str] = set()
    for ds in body:
        for rec in ds["records"]:
            if not isinstance(rec, dict):
                errors.append(error("INVALID_INPUT_FORMAT", "Each record must be an object"))
                continue
            rid = rec.get("id")
            if rid is None or rid == "":
                errors.append(error("INVALID_INPUT_FORMAT", "Missing required field id"))
                continue
            key = str(rid)
            for field in ("createdAt", "updatedAt"):
                if field not in rec:
                    errors.append(
                        error(
                            "INVALID_INPUT_FORMAT",
                            f"Missing required field {field} for record with id {key}",
                        )
                    )
                elif not _is_millis(rec[field]):
                    errors.append(
                        error(
                            "INVALID_INPUT_FORMAT",
                            f"Invalid date value for field {field} for record with "
                            f"id {key}: expected epoch milliseconds",
                        )
                    )
            if key in seen:
                errors.append(
                    error(
                        "INVALID_INPUT_FORMAT",
                        f"Duplicate record with value {key} for primary key field id",
                    )
                )
            seen.add(key)
    return body, errors


# --- the same checks, without building the records ---------------------------------------
# A standalone emulator that does not keep records (--no-store, the benchmark) only needs
# to know that a body passes, how many records it holds, and their producedAt stamps.
# Decoding 10 MB files into dicts made the emulator, not the sink, the busiest process of
# the bulk benchmark (2.5 µs a record; 0.8 µs reading only the checked fields through
# simdjson, which validates the whole document, UTF-8 included). Only the success case
# takes this path: anything it refuses goes through check_datasets, which names the
# error (tests/unit/test_emulator_contract.py holds the two to the same verdicts).
_PARSER = simdjson.Parser()  # one at a time: the emulator's handlers never interleave here
_BOM = b"\xef\xbb\xbf"  # simdjson skips a leading byte order mark; JSON (and orjson) do not


def quick_check(
    raw: bytes | memoryview, max_records: int | None, track: tuple[str, str] | None = None
) -> tuple[int, list[int], list[tuple[str, Any, Any]]] | None:
    """(record count, producedAt stamps, marks) of a body that passes every check of
    check_datasets; None if it may not (check_datasets then decides and explains). The
    marks are (id as text, key, seq) of each record when ``track`` names the key and
    sequence fields (the benchmark's delivery check), else empty."""
    if bytes(raw[:3]) == _BOM:
        return None
    try:
        doc = _PARSER.parse(raw)
    except (ValueError, RuntimeError):  # not JSON, or integers beyond 64 bits (orjson's call)
        return None
    try:
        return _count(doc, max_records, track)
    finally:
        del doc  # the parser is reused: nothing may still point into it


def _count(
    doc: Any, max_records: int | None, track: tuple[str, str] | None
) -> tuple[int, list[int], list[tuple[str, Any, Any]]] | None:
    if type(doc) is not simdjson.Array:
        return None
    ids: list[Any] = []
    stamps: list[int] = []
    pairs: list[tuple[Any, Any]] = []
    key_field, seq_field = track or ("", "")
    for ds in doc:
        if type(ds) is not simdjson.Object or type(ds.get("sourceEntity")) is not str:
            return None
        records = ds.get("records")
        if type(records) is not simdjson.Array:
            return None
        for rec in records:
            if type(rec) is not simdjson.Object:
                return None
            if not (
                _is_plain_millis(rec.get("createdAt")) and _is_plain_millis(rec.get("updatedAt"))
            ):
                return None
            ids.append(rec.get("id"))
            produced = rec.get("producedAt")
            if type(produced) is int:
                stamps.append(produced)
            if track is not None:
                pairs.append((_plain(rec.get(key_field)), _plain(rec.get(seq_field))))
    if max_records is not None and len(ids) > max_records:
        return None
    if None in ids or "" in ids:
        return None
    texts = list(map(_id_text, ids))
    if len(set(texts)) != len(texts):
        return None
    marks = [(t, k, q) for t, (k, q) in zip(texts, pairs, strict=True)] if track else []
    return len(ids), stamps, marks


def _plain(value: Any) -> Any:
    """A key or sequence number as Python's own value (simdjson's containers converted)."""
    if isinstance(value, simdjson.Object):
        return str(value.as_dict())
    if isinstance(value, simdjson.Array):
        return str(value.as_list())
    return value


def _is_plain_millis(value: Any) -> bool:
    return type(value) in (int, float) and value >= 0


def _id_text(rid: Any) -> str:
    """str() of an id as check_datasets sees it (simdjson's objects and arrays as Python's)."""
    if isinstance(rid, simdjson.Object):
        return str(rid.as_dict())
    if isinstance(rid, simdjson.Array):
        return str(rid.as_list())
    return str(rid)

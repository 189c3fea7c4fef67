from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET

import orjson

from sink.config import Settings
from sink.decoding import Shaper
from sink.endpoint import EndpointBuilder
from sink.records import Batch, SinkRecord

CRED = {"CLARI_API_TOKEN": "tok-SECRET", "CLARI_PARTNER_KEY": "pk-SECRET"}


def batch(*records: dict, key: str = "k1", group: str = "") -> Batch:  # type: ignore[type-arg]
    recs = []
    for i, data in enumerate(records):
        r = SinkRecord("crm", 2, 40 + i, key.encode(), orjson.dumps(data), None, 0)
        Shaper(["secret"]).shape(r)
        recs.append(r)
    return Batch(id="b1", group=group, records=recs, nbytes=sum(r.nbytes for r in recs))


REC = {
    "id": "A1",
    "createdAt": 1,
    "updatedAt": 2,
    "name": "Zoë",
    "secret": "x",
    "owner": {"name": "Ann", "tags": ["a", "b"]},
}


def test_upload_template_speaks_the_published_contract() -> None:
    s = Settings(CLARI_ENTITY_TYPE="Opportunity", CLARI_MODE="Full", **CRED)
    req = EndpointBuilder(s).build(batch(REC), is_last=False)
    assert req.method == "POST"
    assert (
        req.url
        == "https://api.clari.com/v2/ingest/entity/opportunity?mode=initial&isLastBatch=false"
    )
    assert req.headers["apikey"] == "tok-SECRET" and req.headers["partnerkey"] == "pk-SECRET"
    assert req.headers["Content-Type"] == "application/json"
    body = orjson.loads(req.body)
    assert body == [
        {
            "sourceEntity": "crm_opportunity",
            "records": [{k: v for k, v in REC.items() if k != "secret"}],
        }
    ]


def test_bulk_template_sends_one_json_file_part() -> None:
    s = Settings(
        CLARI_TEMPLATE="ingest-bulk-entities",
        CLARI_ENTITY_TYPE="Account",
        CLARI_MODE="Replace",
        **CRED,
    )
    req = EndpointBuilder(s).build(batch(REC, {**REC, "id": "A2"}), is_last=True)
    assert req.url.endswith("/v2/ingest/bulk/entity/account?mode=initial&isLastBatch=true")
    ctype = req.headers["Content-Type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    boundary = ctype.split("boundary=")[1]
    head, content = req.body.split(b"\r\n\r\n", 1)
    assert b'name="FileData"; filename="data.json"' in head
    payload, _ = content.rsplit(f"\r\n--{boundary}--".encode(), 1)
    assert [r["id"] for r in orjson.loads(payload)[0]["records"]] == ["A1", "A2"]


def test_manual_url_placeholders_headers_and_bearer() -> None:
    s = Settings(
        CLARI_TEMPLATE="manual",
        CLARI_METHOD="put",
        CLARI_AUTH_STYLE="bearer",
        CLARI_API_TOKEN="tok-SECRET",
        CLARI_ENTITY_TYPE="Contact",
        CLARI_URL="https://h/v1/ingest/entity/{entity}/{group}/{owner.name}"
        "?mode={mode}&isLastBatch={isLastBatch}&t={topic}&k={key}",
        CLARI_REQUEST_HEADERS="X-Trace:on,X-Team:revops",
    )
    b = EndpointBuilder(s)
    req = b.build(batch(REC, group="g 1"), is_last=True)
    assert req.method == "PUT"
    assert req.url == (
        "https://h/v1/ingest/entity/contact/g%201/Ann?mode=incremental&isLastBatch=true&t=crm&k=k1"
    )
    assert req.headers["Authorization"] == "Bearer tok-SECRET"
    assert "apikey" not in req.headers
    assert req.headers["X-Trace"] == "on" and req.headers["X-Team"] == "revops"
    assert orjson.loads(req.body) == [{k: v for k, v in REC.items() if k != "secret"}]
    assert b.job_status_url("j1") == "https://h/v1/ingest/job/j1"
    masked = b.mask_headers(req.headers)
    assert masked["Authorization"] == "****" and "SECRET" not in str(masked)


def test_content_formats() -> None:
    recs = (REC, {"id": "B2", "createdAt": 3, "updatedAt": 4, "name": 'a,b "q"', "flag": True})

    def body(fmt: str) -> bytes:
        s = Settings(
            CLARI_TEMPLATE="manual",
            CLARI_URL="https://h/x",
            CLARI_CONTENT_FORMAT=fmt,
            CLARI_AUTH_STYLE="none",
        )
        return EndpointBuilder(s).build(batch(*recs), True).body

    lines = body("ndjson").decode().splitlines()
    assert [orjson.loads(x)["id"] for x in lines] == ["A1", "B2"]
    rows = list(csv.DictReader(io.StringIO(body("csv").decode())))
    assert rows[0]["owner.name"] == "Ann" and rows[0]["owner.tags"] == '["a","b"]'
    assert (
        rows[1]["name"] == 'a,b "q"' and rows[1]["flag"] == "true" and rows[1]["owner.name"] == ""
    )
    root = ET.fromstring(body("xml"))
    assert [r.findtext("id") for r in root.findall("record")] == ["A1", "B2"]
    assert root.find("record/owner/tags").findall("item")[1].text == "b"  # type: ignore[union-attr]
    assert root.findall("record")[0].findtext("name") == "Zoë"


def test_secrets_copied_into_headers_or_url_are_masked() -> None:
    s = Settings(
        CLARI_TEMPLATE="manual",
        CLARI_URL="https://h/x?key=tok-SECRET",
        CLARI_REQUEST_HEADERS="X-Copy:pk-SECRET",
        **CRED,
    )
    b = EndpointBuilder(s)
    req = b.build(batch(REC), True)
    assert "SECRET" not in b.mask_text(req.url)
    assert "SECRET" not in str(b.mask_headers(req.headers))


def test_json_bodies_are_exact_for_none_one_and_many_records() -> None:
    from sink.formats import render

    def recs(n: int) -> list[SinkRecord]:
        return batch(*({"id": f"R{i}"} for i in range(n))).records if n else []

    for n in (0, 1, 3, 7_000):  # 7,000 records: a body of many pieces
        ids = [{"id": f"R{i}"} for i in range(n)]
        assert orjson.loads(render("json", recs(n), "crm_x")) == ids
        assert orjson.loads(render("clari-datasets", recs(n), "crm_x")) == [
            {"sourceEntity": "crm_x", "records": ids}
        ]
        ndjson = render("ndjson", recs(n), "crm_x")
        assert [orjson.loads(x) for x in ndjson.splitlines()] == ids
        assert ndjson.endswith(b"\n") or n == 0
    pretty = [SinkRecord("t", 0, 0, None, None, None, 0, b'{\n  "id": "P1"\r\n}\n')]
    assert render("ndjson", pretty, "crm_x") == b'{"id":"P1"}\n'  # one record, one line
    wrapped = render("json", recs(2), "crm_x", b"HEAD", b"TAIL")
    assert wrapped == b'HEAD[{"id":"R0"},{"id":"R1"}]TAIL'


def test_a_large_body_is_built_in_pieces_of_about_64_kib() -> None:
    from sink.formats import PIECE_BYTES, render_pieces

    big = batch(*({"id": f"R{i}", "pad": "x" * (i % 2_000)} for i in range(4_000)))
    s = Settings(CLARI_TEMPLATE="ingest-bulk-entities", CLARI_ENTITY_TYPE="Account", **CRED)
    req = EndpointBuilder(s).build(big, True)
    inner = req.pieces[1:-1]  # between the multipart head and tail
    assert len(inner) > 50 and max(map(len, inner)) < 2 * PIECE_BYTES
    assert req.nbytes == len(req.body)
    file = req.body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
    assert [r["id"] for r in orjson.loads(file)[0]["records"]] == [f"R{i}" for i in range(4_000)]
    assert render_pieces("json", [], "x") == [b"[]"]


def test_a_parked_batch_keeps_offsets_keys_and_count_not_records() -> None:
    b = batch({"id": "A"}, {"id": "B"}, {"id": "C"}, key="k9")
    b.records[2].partition = 5  # one record from another partition
    b.park()
    assert b.records == [] and b.nbytes == 0
    assert b.parked == {("crm", 2): [40, 41], ("crm", 5): [42]}
    assert b.size == 3 and b.keys == {b"k9"}
    assert [(r.partition, r.first, r.last, r.count) for r in b.ranges()] == [
        (2, 40, 41, 2),
        (5, 42, 42, 1),
    ]
    again = batch({"id": "A"}, key="k9").records
    b.unpark(again)
    assert b.parked is None and b.size == 1 and b.nbytes == again[0].nbytes

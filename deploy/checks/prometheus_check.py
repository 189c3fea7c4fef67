"""make deploy-check, part 2: the alert rules and the dashboard against a real Prometheus.

1. promtool check rules, and promtool test rules (deploy/prometheus/alerts.test.yaml).
2. A local broker, the emulator (5 % of calls answered 500) and three sinks that give
   every metric a series: an upload sink whose topic holds a few records without an id
   (dead letters), a bulk sink (jobs), and a sink with a wrong partner key (401s).
3. Prometheus scrapes the three with the rules loaded; every expression of the
   dashboard and the rules must return series (deploy/checks/promql.py), and every rule
   must evaluate without error.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from deploy.checks.promql import RULES, evaluate, rule_health
from devkit import kafka_local
from devkit.sample_data import crm_record

ROOT = Path(__file__).resolve().parents[2]
PROM = shlex.split(os.environ.get("PROMETHEUS_HERE", "../shared/tools/prometheus-here"))
PROM_URL = f"http://127.0.0.1:{os.environ.get('PROMETHEUS_HERE_PORT', '19590')}"
CLI = str(ROOT / ".venv" / "bin" / "clari-sink")
TOKEN, PARTNER = "check-token", "check-partner"


def step(what: str, started: float) -> None:
    print(f"  {time.monotonic() - started:6.1f} s  {what}", flush=True)


def sh(*args: str) -> str:
    done = subprocess.run([*args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def seed(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(t, 3, 1) for t in ("crm", "bulk")]).values():
        fut.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(3_000):
        record = crm_record("account", i)
        if i % 600 == 0:
            del record["id"]  # refused by Clari's record contract: dead-lettered
        producer.produce("crm", key=str(i).encode(), value=orjson.dumps(record))
        producer.produce("bulk", key=str(i).encode(), value=orjson.dumps(crm_record("account", i)))
        if i % 500 == 0:
            producer.poll(0)
    producer.flush(30)


def sink(
    bootstrap: str, emulator: int, admin: int, topic: str, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    settings = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"check-{topic}-{admin}", "CLARI_ENTITY_TYPE": "Account",
        "CLARI_BASE_URL": f"http://127.0.0.1:{emulator}/v2",
        "CLARI_API_TOKEN": TOKEN, "CLARI_PARTNER_KEY": PARTNER,
        "RESPONSE_TOPIC": f"responses-{admin}", "DLQ_TOPIC": f"dlq-{admin}",
        "ADMIN_HOST": "127.0.0.1", "ADMIN_PORT": str(admin), "LOG_FORMAT": "text",
        "BATCH_LINGER_MS": "200", "JOB_POLL_INITIAL_MS": "100",
        "RETRY_BACKOFF_MAX_MS": "2000", **env,
    }  # fmt: skip
    out = log.open("wb")
    return subprocess.Popen([CLI, "run"], env={**os.environ, **settings}, stdout=out, stderr=out)


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer in {timeout} s")


def main() -> int:
    t0 = time.monotonic()
    print("promtool:")
    print(sh(*PROM, "check-rules", str(RULES)).strip())
    print(sh(*PROM, "promtool", "test", "rules", "deploy/prometheus/alerts.test.yaml").strip())
    step("rules checked and unit-tested", t0)

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="clari-prom-check-") as tmp:
        work = Path(tmp)
        broker = kafka_local.start(work / "kafka")
        try:
            step(f"broker on {broker.bootstrap}", t0)
            emu = kafka_local.free_port()
            procs.append(subprocess.Popen(
                [CLI, "emulator", "--port", str(emu), "--api-token", TOKEN,
                 "--partner-key", PARTNER, "--fault-500", "0.05", "--job-running-s", "0.5"],
                stdout=(work / "emulator.log").open("wb"), stderr=subprocess.STDOUT,
            ))  # fmt: skip
            wait_http(f"http://127.0.0.1:{emu}/_emulator/health")
            seed(broker.bootstrap)
            step("emulator up, topics seeded", t0)
            ports = [kafka_local.free_port() for _ in range(3)]
            b = broker.bootstrap
            procs.append(sink(b, emu, ports[0], "crm", work / "upload.log"))
            procs.append(sink(b, emu, ports[1], "bulk", work / "bulk.log",
                              CLARI_TEMPLATE="ingest-bulk-entities", CLARI_MODE="Upsert",
                              BATCH_SIZE="500"))  # fmt: skip
            procs.append(sink(b, emu, ports[2], "crm", work / "badkey.log",
                              CLARI_PARTNER_KEY="wrong-partner"))  # fmt: skip
            for port in ports:
                wait_http(f"http://127.0.0.1:{port}/metrics")
            step("three sinks running", t0)
            print(sh(*PROM, "up", "--rules", str(RULES), *[str(p) for p in ports]).strip())
            step("prometheus scraping", t0)
            time.sleep(20)  # several scrapes: rate() and increase() need two samples
            rows = evaluate(PROM_URL, "prometheus-here")
            health = rule_health(PROM_URL)
            step("every expression evaluated", t0)
        finally:
            subprocess.run([*PROM, "down"], cwd=ROOT, capture_output=True)
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(40)
                except subprocess.TimeoutExpired:
                    p.kill()
            broker.stop()

    print(f"\n{'source':10} {'series':>6}  expression")
    for source, name, expr, n in rows:
        print(f"{source:10} {n:>6}  {name}\n{'':18}{expr}")
    empty = [r for r in rows if r[3] == 0]
    bad = [h for h in health if h[1] != "ok"]
    print(f"\n{len(rows)} expressions, {len(empty)} without series; "
          f"{len(health)} rules, {len(bad)} not ok; {time.monotonic() - t0:.0f} s")  # fmt: skip
    for h in bad:
        print(f"  rule {h[0]}: {h[1]} {h[2]}")
    return 1 if empty or bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Prometheus metrics. Every metric lives in the registry given, so tests can use a fresh one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        p = "clari_sink_"
        self.consumed = Counter(
            p + "records_consumed", "Records read from Kafka", ["topic"], registry=r
        )
        self.delivered = Counter(p + "records_delivered", "Records accepted by the API", registry=r)
        self.dead_lettered = Counter(
            p + "records_dead_lettered",
            "Records written to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.skipped = Counter(
            p + "records_skipped", "Records skipped by policy", ["reason"], registry=r
        )
        self.requests = Counter(
            p + "api_requests",
            "API calls by HTTP status ('none': no answer)",
            ["kind", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            p + "api_request_seconds",
            "API call latency",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            p + "api_retries", "API calls that will be tried again", ["reason"], registry=r
        )
        self.batch_records = Histogram(
            p + "batch_records",
            "Records per API call",
            buckets=(1, 5, 10, 25, 50, 100, 250, 1000, 5000, 20000),
            registry=r,
        )
        self.jobs = Counter(p + "jobs", "Bulk jobs by final state", ["state"], registry=r)
        self.replayed = Counter(
            p + "records_replayed",
            "Records of failed or refused bulk jobs read back from Kafka",
            registry=r,
        )
        self.parked = Gauge(
            p + "parked_records", "Records of bulk jobs in progress, not held in memory", registry=r
        )
        self.in_flight = Gauge(p + "in_flight_requests", "Batches being delivered", registry=r)
        self.concurrency = Gauge(
            p + "concurrency_limit", "Calls allowed in flight now (adaptive)", registry=r
        )
        self.rate_share = Gauge(
            p + "rate_limit_share", "Calls per second this member may make", registry=r
        )
        self.lanes_busy = Gauge(
            p + "lanes_busy", "Key lanes with a batch waiting for its answer", registry=r
        )
        self.batches_waiting = Gauge(
            p + "batches_waiting", "Closed batches waiting for their lane or a slot", registry=r
        )
        self.paused_partitions = Gauge(
            p + "paused_partitions", "Partitions paused by backpressure", registry=r
        )
        self.buffered = Gauge(
            p + "buffered_records", "Records consumed and not yet resolved", registry=r
        )
        self.paused = Gauge(
            p + "paused", "1 while partitions are paused for backpressure", registry=r
        )
        self.active = Gauge(p + "active", "1 while the sink is activated", registry=r)
        self.assigned = Gauge(
            p + "assigned_partitions", "Partitions owned by this member", registry=r
        )
        self.commits = Counter(p + "commits", "Offset commits", ["result"], registry=r)
        self.produce_errors = Counter(
            p + "produce_errors", "Failed writes to output topics", ["topic"], registry=r
        )
        self.healthy = Gauge(p + "healthy", "1 when no component reports a problem", registry=r)
        # Per Clari entity (CLARI_TOPIC_ENTITIES: several in one deployment; sink/entities.py).
        self.entity_records = Counter(
            p + "entity_records",
            "Records per Clari entity by outcome (delivered, dead-lettered)",
            ["entity", "outcome"],
            registry=r,
        )
        self.entity_requests = Counter(
            p + "entity_api_requests",
            "Ingest and bulk calls per Clari entity by HTTP status ('none': no answer)",
            ["entity", "status"],
            registry=r,
        )
        # Per assigned partition, updated on the commit cadence (sink/lag.py).
        self.lag = Gauge(
            p + "consumer_lag",
            "Records between the partition's end and the group's committed offset",
            ["topic", "partition"],
            registry=r,
        )
        self.commit_age = Gauge(
            p + "committed_offset_age_seconds",
            "Seconds since the committed offset last moved while records wait (0 when none)",
            ["topic", "partition"],
            registry=r,
        )

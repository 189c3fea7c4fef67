"""The dashboard and the alert rules name only metrics the sink exports (a typo would
make a panel or an alert silently empty); make deploy-check evaluates them for real."""

from __future__ import annotations

import re

from deploy.checks.promql import expressions, with_bool
from sink.metrics import Metrics


def exported() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_every_metric_named_by_the_dashboard_and_rules_is_exported() -> None:
    known = exported() | {"clari_sink:consumer_lag:sum"}  # the rules' own recording
    used = {
        name
        for _, _, expr in expressions()
        for name in re.findall(r"\bclari_sink[:_][a-z_:]+", expr)
    }
    assert used and used <= known, used - known
    assert {"clari_sink_consumer_lag", "clari_sink_committed_offset_age_seconds"} <= used


def test_the_dashboard_covers_what_operators_look_at() -> None:
    exprs = " ".join(e for source, _, e in expressions() if source == "dashboard")
    for metric in (
        "records_delivered_total", "consumer_lag", "api_request_seconds_bucket",
        "api_requests_total", "api_retries_total", "records_dead_lettered_total",
        "in_flight_requests", "paused_partitions", "jobs_total",
    ):  # fmt: skip
        assert f"clari_sink_{metric}" in exprs, metric


def test_comparisons_get_bool_but_label_matchers_do_not() -> None:
    expr = 'sum(rate(x{status=~"5..",job!="a"}[5m])) > 0.25 and y == 0 and z >= bool 1'
    assert with_bool(expr) == (
        'sum(rate(x{status=~"5..",job!="a"}[5m])) > bool 0.25 and y == bool 0 and z >= bool 1'
    )

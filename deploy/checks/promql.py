"""Every PromQL expression of the dashboard and the alert rules, evaluated by a real
Prometheus: each must return at least one series.

Two rewrites make "returns series" a test of the metrics and not of the moment: the job
selector becomes the scraping job's name (the dashboard's $job; the rules'
job="clari-sink"), and each comparison gets the `bool` modifier, so that an alert's
expression answers 0 or 1 per series instead of nothing while it does not fire.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "clari-sink.json"
RULES = ROOT / "deploy" / "helm" / "clari-sink" / "files" / "alerts.yaml"
# A comparison operator outside a label matcher ({...}): not =~, !~, nor part of ==/!=.
COMPARISON = re.compile(r"(==|!=|>=|<=|[<>](?!=))(?!\s*bool)")


def expressions() -> list[tuple[str, str, str]]:
    """(source, name, expression) of every dashboard target and rule."""
    out = []
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for target in panel["targets"]:
            out.append(
                ("dashboard", f"{panel['title']} / {target['legendFormat']}", target["expr"])
            )
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            out.append(("rules", rule.get("alert") or rule["record"], rule["expr"]))
    return out


def with_bool(expr: str) -> str:
    parts = re.split(r"(\{[^}]*\})", expr)  # label matchers kept as they are
    return "".join(p if p.startswith("{") else COMPARISON.sub(r"\1 bool", p) for p in parts)


def rewrite(expr: str, job: str) -> str:
    expr = expr.replace('job=~"$job"', f'job="{job}"').replace('job="clari-sink"', f'job="{job}"')
    return with_bool(expr)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def evaluate(base: str, job: str) -> list[tuple[str, str, str, int]]:
    """(source, name, expression as sent, number of series) for each expression."""
    rows = []
    for source, name, expr in expressions():
        sent = rewrite(expr, job)
        rows.append((source, name, sent, len(query(base, sent))))
    return rows


def rule_health(base: str) -> list[tuple[str, str, str]]:
    with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as resp:
        groups = json.load(resp)["data"]["groups"]
    return [(r["name"], r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]]

"""The benchmark keeps working: run it with a tiny N (its figures are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_benchmark_runs_end_to_end(kafka: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--records", "3000", "--quick", "--no-chart",
         "--live-seconds", "0.5", "--repeat", "2", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"baseline", "upload-0ms", "upload-50ms", "bulk", "live-10k",
                            "live-half-max"}  # fmt: skip
    for name, res in results.items():
        assert res["records_per_s"] > 0, name
        if name != "baseline":
            assert res["peak_rss_mib"] > 0 and res["cpu_s_per_100k"] > 0, name
    assert results["upload-0ms"]["api_calls"] >= 30  # 3000 records, at most 100 a call
    # The baseline and bulk ran twice each, alternately; each keeps its median and its runs.
    for name in ("baseline", "bulk"):
        runs = results[name]["runs"]
        assert len(runs) == 2 and results[name]["records_per_s"] == min(runs), name

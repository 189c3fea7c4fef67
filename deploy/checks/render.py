"""deploy/kubernetes/clari-sink.yaml: the chart rendered with plain-manifests.values.yaml.

python -m deploy.checks.render --helm helm --write   (make manifests)
python -m deploy.checks.render --helm helm           exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "clari-sink"
VALUES = ROOT / "deploy" / "helm" / "plain-manifests.values.yaml"
OUT = ROOT / "deploy" / "kubernetes" / "clari-sink.yaml"
HEADER = """\
# Rendered from the Helm chart (deploy/helm/clari-sink) with
# deploy/helm/plain-manifests.values.yaml by `make manifests`. Do not edit: a unit test
# fails when this file and the chart differ.
# The Secret it reads (clari-sink-credentials) is not here: see secret.example.yaml.
"""


def render(helm: list[str]) -> str:
    done = subprocess.run(
        [*helm, "template", "clari-sink", str(CHART), "-f", str(VALUES)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    return HEADER + done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.checks.render")
    parser.add_argument("--helm", default="helm", help="the helm command")
    parser.add_argument("--write", action="store_true", help="write the file")
    args = parser.parse_args(argv)
    text = render(shlex.split(args.helm))
    if args.write:
        OUT.write_text(text)
        print(f"wrote {OUT.relative_to(ROOT)}")
        return 0
    if OUT.read_text() != text:
        print(f"{OUT.relative_to(ROOT)} differs from the chart: run make manifests")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

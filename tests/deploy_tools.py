"""The container engine, compose and Helm tools the deployment tests run, found as the
Makefile names them (ENGINE, COMPOSE, HELM, K8S_VALIDATE). A tool that is missing skips
its tests with the reason, except under CI=true, where it fails them: CI must run them
all (.ci/run points these variables at ../shared/tools when Docker is absent)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {
    "ENGINE": "docker",
    "COMPOSE": "docker compose",
    "HELM": "helm",
    "K8S_VALIDATE": "k8s-validate",
}
HOW = {
    "ENGINE": "a working Docker (or ENGINE=podman)",
    "COMPOSE": "docker compose (or COMPOSE=podman-compose)",
    "HELM": "helm 3 (or HELM=...)",
    "K8S_VALIDATE": "K8S_VALIDATE=../shared/tools/k8s-validate",
}


def command(var: str) -> list[str]:
    return shlex.split(os.environ.get(var) or DEFAULTS[var])


@cache
def _problem(var: str) -> str | None:
    cmd = command(var)
    if shutil.which(cmd[0]) is None:
        return f"{var}={shlex.join(cmd)}: not found; needs {HOW[var]}"
    probe = {"ENGINE": ["info"], "COMPOSE": ["version"], "HELM": ["version"]}.get(var)
    if probe is not None:
        try:
            done = subprocess.run(
                [*cmd, *probe], capture_output=True, text=True, timeout=600, cwd=ROOT
            )
        except subprocess.TimeoutExpired:
            return f"{var}={shlex.join(cmd)}: '{' '.join(probe)}' did not answer"
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"{var}={shlex.join(cmd)} does not work here ({last[0][:200]}); needs {HOW[var]}"
    return None


def require(*variables: str) -> list[list[str]]:
    """The commands for ``variables``, or skip (fail under CI=true) naming what is missing."""
    for var in variables:
        problem = _problem(var)
        if problem is not None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true and {problem}")
            pytest.skip(problem)
    return [command(var) for var in variables]


def run(
    cmd: list[str], timeout: float = 600, check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,  # type: ignore[call-overload]
    )
    if check and done.returncode != 0:
        out = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise AssertionError(f"{shlex.join(cmd)} exited {done.returncode}\n{out}")
    return done

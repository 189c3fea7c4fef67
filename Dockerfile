# clari-sink image. Targets (the last one is the default):
#   sink  the sink and the Clari API emulator:  docker build -t clari-sink .
#   seed  sample CRM records for the compose demo: docker build --target seed -t clari-sink-seed .
# Non-root (uid 10001), and runs with a read-only root filesystem: nothing is written
# at run time (bytecode is compiled at build time, no temporary files).

FROM python:3.11-slim AS wheel
# The sink's own wheel only: its dependencies come from the lock file, below. Files are
# copied, not bind-mounted: buildah's layer cache ignores what a bind mount holds, so a
# changed lock or source would have been served from a stale layer.
COPY pyproject.toml README.md /src/
COPY sink /src/sink
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Runtime dependencies exactly as locked: every version pinned and every file checked
# against its sha256, so a changed or substituted package fails the build instead of
# entering the image. The lock is copied alone first, so that this layer (the slow one)
# is rebuilt when the lock changes, not at every change of the code.
COPY requirements.lock /tmp/requirements.lock
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home sink \
    && pip install --require-hashes -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
WORKDIR /app
USER 10001:10001

# The demo seeder: the dev kit's sample data on top of the runtime; never in the sink.
FROM runtime AS seed
COPY devkit/__init__.py devkit/seed.py devkit/sample_data.py ./devkit/
ENTRYPOINT ["python", "-m", "devkit.seed"]

FROM runtime AS sink
ENV ADMIN_PORT=8080
EXPOSE 8080
# Follows ADMIN_PORT at run time (a port set with -e ADMIN_PORT=9090 is the one probed).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ADMIN_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["clari-sink"]
CMD ["run"]

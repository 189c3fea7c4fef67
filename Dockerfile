# clari-sink image: the sink, the Clari API emulator and the sample-data seeder.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sink ./sink
# The sink's own wheel only: its dependencies come from the lock file, below.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app sink
WORKDIR /app
# Runtime dependencies exactly as locked: every version pinned and every file checked
# against its sha256, so a changed or substituted package fails the build instead of
# entering the image. Regenerate with the pip-compile command in the lock's header.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock \
  && rm /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
# The seeder (sample CRM records) for the docker-compose demo; not used by the sink.
COPY devkit ./devkit
USER 10001
ENV PYTHONUNBUFFERED=1 ADMIN_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
ENTRYPOINT ["clari-sink"]
CMD ["run"]

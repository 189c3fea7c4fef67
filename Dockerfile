# clari-sink image: the sink, the Clari API emulator and the sample-data seeder.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sink ./sink
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app sink
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The seeder (sample CRM records) for the docker-compose demo; not used by the sink.
COPY devkit ./devkit
USER 10001
ENV PYTHONUNBUFFERED=1 ADMIN_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
ENTRYPOINT ["clari-sink"]
CMD ["run"]

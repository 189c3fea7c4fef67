"""Command line: ``clari-sink run | emulator | sample | test-send | check-config``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from sink import __version__
from sink.config import (
    Settings,
    SettingsError,
    describe_errors,
    load_settings,
    unknown_environment,
)
from sink.logs import setup_logging
from sink.masking import MASK

log = logging.getLogger("sink")
# Exit codes of `clari-sink run` (README, "Stopping"): 0 stopped cleanly (or drained),
# 1 a fatal error, 2 invalid settings, 3 stopped, but something was given up at
# SINK_SHUTDOWN_TIMEOUT_S (sink/stopping.py).
EXIT_BAD_SETTINGS = 2


def _load(args: argparse.Namespace, *, for_run: bool = False) -> tuple[Settings, list[str]]:
    """The settings and the warnings to give at start; every problem at once and exit 2
    when they cannot work."""
    path = args.config or os.environ.get("SINK_CONFIG_FILE")
    unknown = unknown_environment(os.environ)
    try:
        settings = load_settings(Path(path) if path else None, require_topics=for_run)
    except ValueError as exc:  # SettingsError, and what else a settings source may raise
        _print_warnings(unknown)  # a misspelt name is often why a setting is missing
        print("clari-sink: invalid settings, not starting:", file=sys.stderr)
        for line in describe_errors(exc):
            print(f"  - {line}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_SETTINGS) from None
    return settings, unknown + settings.warnings()


def _print_warnings(lines: list[str]) -> None:
    for line in lines:
        print(f"clari-sink: warning: {line}", file=sys.stderr)


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of a one-off command, its warnings printed."""
    settings, warnings = _load(args)
    _print_warnings(warnings)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    settings, warnings = _load(args, for_run=True)
    setup_logging(settings.log_level, settings.log_format)
    for line in warnings:  # in the service's log format, where operators look
        log.warning(line)
    from sink import runtime

    runtime.tune_malloc()
    from confluent_kafka import KafkaException

    from sink.admin import start_admin
    from sink.pipeline import Pipeline
    from sink.stopping import exit_now

    async def main() -> int:
        pipeline = Pipeline(settings)
        pipeline.stop_clock.watchdog = True  # this process may be ended by it
        runtime.tune_gc()  # after the imports: they are what it freezes
        try:
            for line in await asyncio.to_thread(pipeline.check_kafka_config):
                log.warning(line)
        except KafkaException as exc:
            print(f"clari-sink: the Kafka client refuses these settings, not starting:\n"
                  f"  - {exc.args[0].str()}", file=sys.stderr)  # fmt: skip
            return EXIT_BAD_SETTINGS
        except SettingsError as exc:  # a property librdkafka refuses, a refused login
            print("clari-sink: Kafka refuses these settings, not starting:", file=sys.stderr)
            for line in describe_errors(exc):
                print(f"  - {line}", file=sys.stderr)
            return EXIT_BAD_SETTINGS
        runner = None
        if settings.admin_port:
            try:
                runner = await start_admin(pipeline, settings.admin_host, settings.admin_port)
            except OSError as exc:
                print(f"clari-sink: the admin endpoint cannot listen, not starting:\n"
                      f"  - ADMIN_HOST={settings.admin_host} ADMIN_PORT={settings.admin_port}: "
                      f"{exc.strerror or exc}", file=sys.stderr)  # fmt: skip
                return EXIT_BAD_SETTINGS
        try:
            code = await pipeline.run(until_drained=args.until_drained)
        finally:
            if runner is not None:
                await runner.cleanup()
        if not pipeline.stopped_cleanly:
            # A thread may still be blocked in librdkafka: the interpreter would wait
            # for it at exit. The stop has done what it could; leave now.
            exit_now(code)
        return code

    return asyncio.run(main())


def cmd_emulator(args: argparse.Namespace) -> int:
    from aiohttp import web

    from sink.emulator.app import build_app
    from sink.emulator.state import EmulatorState, Faults

    logging.basicConfig(level=logging.WARNING)
    faults = Faults(
        rate_429=args.fault_429,
        rate_500=args.fault_500,
        rate_503=args.fault_503,
        reset_rate=args.fault_reset,
        latency_ms=args.latency_ms,
    )
    state = EmulatorState(
        api_token=args.api_token,
        partner_key=args.partner_key,
        rate_limit=args.rate_limit,
        job_queued_s=args.job_queued_s,
        job_running_s=args.job_running_s,
        faults=faults,
        store_records=not args.no_store,
    )
    print(
        f"Clari API emulator on http://{args.host}:{args.port} (v2 base: "
        f"http://{args.host}:{args.port}/v2)",
        flush=True,
    )
    web.run_app(
        build_app(state, timed_gc=True), host=args.host, port=args.port, print=None, access_log=None
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    masker = settings.masker()
    for name, info in Settings.model_fields.items():
        value: Any = getattr(settings, name)
        if value is None:
            text = ""
        elif hasattr(value, "get_secret_value"):
            text = MASK
        elif name == "clari_request_headers":
            text = ",".join(f"{k}:{v}" for k, v in masker.headers(settings.extra_headers).items())
        elif isinstance(value, list):
            text = ",".join(map(str, value))
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        print(f"{info.alias or name}={masker.text(text)}")
    print(f"# wire mode: {settings.wire_mode}; content format: {settings.content_format}")
    if settings.clari_template != "manual":
        print(f"# isLastBatch: {settings.is_last_batch} ({settings.is_last_batch_reason})")
    from sink import kafka_check, kafka_config

    for name in sorted(p.variable for p in settings.kafka_properties):
        prop = next(p for p in settings.kafka_properties if p.variable == name)
        print(f"{name}={MASK if prop.secret else masker.text(prop.value)}")
    print("\n".join(kafka_config.describe(settings)))
    problems = kafka_check.offline_problems(settings)  # librdkafka's word, no connection
    if problems:
        print("clari-sink: the Kafka client refuses these settings:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from sink.sampling import print_samples

    return print_samples(_settings(args), args.records, args.as_json)


def cmd_test_send(args: argparse.Namespace) -> int:
    from sink.sampling import test_send

    body = Path(args.file).read_bytes() if args.file else None
    return asyncio.run(test_send(_settings(args), body, args.records))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clari-sink", description=__doc__)
    parser.add_argument("--version", action="version", version=f"clari-sink {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="a KEY=VALUE settings file (environment variables win)")
        return p

    run = with_config(sub.add_parser("run", help="run the sink"))
    run.add_argument(
        "--until-drained",
        action="store_true",
        help="exit 0 once every assigned partition is delivered and committed",
    )
    run.set_defaults(func=cmd_run)

    with_config(
        sub.add_parser("check-config", help="validate and print the settings")
    ).set_defaults(func=cmd_check_config)

    sample = with_config(
        sub.add_parser("sample", help="print the requests the settings would send")
    )
    sample.add_argument("--records", type=int, default=5, help="records to read (default 5)")
    sample.add_argument("--json", dest="as_json", action="store_true", help="JSON output")
    sample.set_defaults(func=cmd_sample)

    send = with_config(
        sub.add_parser("test-send", help="send one sample request and show the answer")
    )
    send.add_argument("--file", help="send this body instead of the first sample's")
    send.add_argument("--records", type=int, default=5, help="records in the sample (default 5)")
    send.set_defaults(func=cmd_test_send)

    emu = sub.add_parser("emulator", help="run the Clari API emulator")
    env = os.environ.get
    emu.add_argument("--host", default=env("EMULATOR_HOST", "127.0.0.1"))
    emu.add_argument("--port", type=int, default=int(env("EMULATOR_PORT", "8081")))
    emu.add_argument("--api-token", default=env("EMULATOR_API_TOKEN", "demo-token"))
    emu.add_argument("--partner-key", default=env("EMULATOR_PARTNER_KEY", "demo-partner"))
    emu.add_argument(
        "--rate-limit",
        type=float,
        default=float(env("EMULATOR_RATE_LIMIT", "100")),
        help="requests per second per token (Clari: 100)",
    )
    emu.add_argument("--job-queued-s", type=float, default=0.2)
    emu.add_argument("--job-running-s", type=float, default=0.3)
    emu.add_argument("--fault-429", type=float, default=0.0, help="share of calls answered 429")
    emu.add_argument("--fault-500", type=float, default=0.0)
    emu.add_argument("--fault-503", type=float, default=0.0)
    emu.add_argument("--fault-reset", type=float, default=0.0, help="share of connections reset")
    emu.add_argument("--latency-ms", type=float, default=0.0, help="added latency per call")
    emu.add_argument(
        "--no-store",
        action="store_true",
        help="count records, do not keep them (bodies are checked without building the records)",
    )
    emu.set_defaults(func=cmd_emulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

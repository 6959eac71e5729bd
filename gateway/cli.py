"""`gateway` command line: serve, drift, models build-demo, events tail/export."""
from __future__ import annotations

import argparse
import logging
import sys

import orjson


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.server import serve

    _run(serve(load_config(args.config), config_path=args.config))
    return 0


def _cmd_drift(args: argparse.Namespace) -> int:
    from gateway.config import load_config

    if getattr(args, "drift_command", None) == "report":
        return _cmd_drift_report(args, load_config)
    if not args.config:
        print("gateway drift: --config is required", file=sys.stderr)
        return 2
    from gateway.drift.consumer import run_drift, settings_from_config

    _run(run_drift(settings_from_config(load_config(args.config))))
    return 0


def _cmd_drift_report(args: argparse.Namespace, load_config) -> int:
    """An HTML page from the published drift reports (the topic of --config, or --reports JSONL)."""
    from pathlib import Path

    from gateway.drift import page

    if args.reports:
        reports = page.read_jsonl(Path(args.reports))
    elif args.config:
        config = load_config(args.config)
        reports = _run(page.read_topic(config.kafka.bootstrap_servers, config.kafka.topics.drift))
    else:
        print("gateway drift report: give --config (read the drift topic) or --reports FILE.jsonl", file=sys.stderr)
        return 2
    try:
        text = page.render(reports, args.model, args.version, args.window)
    except ValueError as exc:
        print(f"gateway drift report: {exc}", file=sys.stderr)
        return 1
    Path(args.out).write_text(text)
    print(f"{args.out}: {args.model}/{args.version}, {len(reports)} reports read")
    return 0


def _cmd_build_demo(args: argparse.Namespace) -> int:
    from gateway.models import demo

    return demo.run(args)


def _cmd_events(args: argparse.Namespace) -> int:
    return _run(args.events_func(args))


def _run(coro) -> int:
    import uvloop

    return uvloop.run(coro)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument("--config", required=True, help="YAML config file, e.g. config/demo.yaml")
    serve.set_defaults(func=_cmd_serve)

    drift = sub.add_parser("drift", help="run the streaming drift consumer; `drift report`: an HTML page")
    drift.add_argument("--config", help="YAML config file (required to run the consumer)")
    drift.set_defaults(func=_cmd_drift)
    report = drift.add_subparsers(dest="drift_command").add_parser(
        "report", help="HTML page (embedded PNGs) of a model version's drift reports")
    report.add_argument("--config", help="read the reports from this config's kafka.topics.drift")
    report.add_argument("--reports", help="... or from a JSON Lines file of reports")
    report.add_argument("--model", required=True)
    report.add_argument("--version", required=True)
    report.add_argument("--window", help="window id to detail (default: the latest drifted, else the latest)")
    report.add_argument("--out", default="drift-report.html")

    models = sub.add_parser("models", help="model repository tools").add_subparsers(dest="models_command", required=True)
    from gateway.models import demo

    build = models.add_parser("build-demo", help="train the demo wine models and write them as ONNX")
    demo.add_arguments(build)
    build.set_defaults(func=_cmd_build_demo)

    from gateway.events import tools

    events = sub.add_parser("events", help="read the event log: tail, export")
    events.set_defaults(func=_cmd_events)
    tools.add_arguments(events.add_subparsers(dest="events_command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    from gateway.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"gateway: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `mta` command.

Core commands live here (serve, config, db); each area adds its own in a module of
`mta/commands/` exposing `register(subparsers)`. A command's handler takes
`(args, settings)` and returns an exit code; it may be a coroutine function.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import pkgutil
import sys

import mta.commands
from mta import __version__
from mta.commands._errors import CliError, explain
from mta.config import ConfigError, Settings
from mta.config_load import load_settings

__all__ = ["main"]

DEFAULT_CONFIG = "/etc/mta/mta.yaml"


def _cmd_serve(args, settings: Settings) -> int:
    from mta.node import WorkerRole, run_node
    from mta.pidlock import PidLock

    workers = args.workers
    if workers is None:
        from mta.supervisor import default_workers

        workers = default_workers()
    if workers < 1:
        print("mta: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.worker_index is not None:
        # Started by the supervisor below, which holds the state directory's lock.
        from mta.supervisor import bind_to_supervisor

        bind_to_supervisor()
        run_node(settings, args.config, WorkerRole(args.worker_index, workers))
        return 0

    # One node per state directory: a second one would share (and could stop) the
    # first one's embedded database. Checked before anything is touched.
    state = settings.state_path
    state.mkdir(parents=True, exist_ok=True)
    lock = PidLock(state / "serve.lock", "mta serve")
    if not lock.try_acquire():
        holder = lock.holder()
        who = f" (pid {holder[0]})" if holder else ""
        print(f"mta: another mta serve{who} is running with state directory {state}; "
              "not starting a second one", file=sys.stderr)
        return 1
    try:
        if workers == 1:
            run_node(settings, args.config)
            return 0
        from mta.supervisor import run_supervisor

        return run_supervisor(settings, args.config, workers)
    finally:
        lock.release()


def _cmd_config_check(args, settings: Settings) -> int:
    from mta.commands._startcheck import startup_problems

    problems = startup_problems(settings, args.path)
    for problem in problems[1:]:
        print(f"mta: configuration error: {problem}", file=sys.stderr)
    if problems:
        raise CliError(f"configuration error: {problems[0]}")
    print(f"{args.path}: ok")
    return 0


def _cmd_config_show(args, settings: Settings) -> int:
    from mta.config_show import effective_config, effective_tree

    if args.json:
        print(json.dumps(effective_tree(settings), indent=2))
    else:
        print(effective_config(settings), end="")
    return 0


def _cmd_db_upgrade(args, settings: Settings) -> int:
    from mta.node import database_url
    from mta.store.migrate import upgrade

    url, embedded = database_url(settings)
    try:
        upgrade(url, args.revision)
    finally:
        if embedded is not None:
            embedded.release()  # stops the embedded cluster only if this command started it
    print(f"database at {args.revision}")
    return 0


def _add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after its name. Below the top level
    they default to SUPPRESS, so a value given before the subcommand is kept."""
    default = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    parser.add_argument("--config", "-c", default=default(None), metavar="PATH",
                        help="daemon configuration (default $MTA_CONFIG, else "
                             f"{DEFAULT_CONFIG})")
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="print the traceback of an unexpected error")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share one
                out += [child, *_subparsers(child)]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mta", description="Self-hosted mail transfer agent")
    _add_global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"mta {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run one node (every listener and worker)")
    serve.add_argument("--workers", "-w", type=int, default=None, metavar="N",
                       help="worker processes sharing the listeners (default: one per "
                            "core; 1 runs everything in this process)")
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve, secrets="create")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a configuration file")
    check.add_argument("path")
    check.set_defaults(func=_cmd_config_check, config_from="path", secrets="none")
    show = config_sub.add_parser("show", help="the effective configuration (environment "
                                              "overrides applied, secrets masked)")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=_cmd_config_show)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_cmd_db_upgrade)

    for info in pkgutil.iter_modules(mta.commands.__path__):
        if info.name.startswith("_"):  # shared helpers, not a command
            continue
        module = importlib.import_module(f"mta.commands.{info.name}")
        module.register(sub)
    for child in _subparsers(parser):
        _add_global_options(child, top=False)
    return parser


def _config_path(args) -> str:
    return args.config or os.environ.get("MTA_CONFIG") or DEFAULT_CONFIG


def _run(args) -> int:
    settings = None
    if getattr(args, "needs_config", True):
        config_path = getattr(args, "config_from", None) and getattr(args, args.config_from)
        config_path = config_path or _config_path(args)
        try:
            settings = load_settings(config_path)
        except ConfigError as exc:
            hint = ("" if getattr(args, "config_from", None) or args.config else
                    "; name the file with --config PATH or $MTA_CONFIG")
            raise CliError(f"configuration error: {exc}{hint}") from None
        args.config = config_path
        from mta.checks import psl

        psl.use_state_dir(settings.state_path)  # `mta psl update`'s copy, when there is one
        secrets = getattr(args, "secrets", "load")  # none | load | create
        if secrets != "none":
            from mta.secrets import ensure_secrets

            ensure_secrets(settings, create=secrets == "create")
    result = args.func(args, settings)
    if inspect.isawaitable(result):
        result = asyncio.run(result)
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CliError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"mta: {explain(exc)}", file=sys.stderr)
        return 1

"""The command line other than `pflask run FILE`: the subcommands (through
argparse) and the original pflask's flags.

Kept apart from cli.py, whose `run` and `stop` fast paths are what scripts
start thousands of times: this module, and argparse with it, is imported only
when one of these is asked for.
"""

from __future__ import annotations

import os
import sys

from pflask.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, NoReturn


# --- subcommands ------------------------------------------------------------------------


def _argument_parser(**kwargs: Any) -> argparse.ArgumentParser:
    """An ArgumentParser whose errors are one line and exit 2 like pflask's own.

    argparse prints its usage and then the error; pflask's rule is one line
    per problem, and the usage is one `-h` away.
    """
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            where = self.prog.removeprefix("pflask").strip()
            raise UsageError(f"{where + ': ' if where else ''}{message} (see {self.prog} -h)")

    return Parser(**kwargs)


def parser() -> argparse.ArgumentParser:
    """The subcommands and their options (the man page and completion read them too)."""
    import argparse

    main = _argument_parser(
        prog="pflask",
        description="Run a command, or boot an OS, in Linux namespace containers described "
        "by flags (the original pflask's) or by a manifest (pflask run FILE).",
    )
    from pflask import __version__

    main.add_argument("--version", action="version", version=f"pflask {__version__}")
    sub = main.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "run",
        help="run a manifest's container",
        description="Run the container FILE describes: its command, or COMMAND after `--`. "
        "The compiled plan is cached by content, so an unchanged manifest starts at once.",
    )
    add_run_arguments(p)
    p = sub.add_parser("validate", help="check manifests; exit 2 with every error found")
    p.add_argument("files", nargs="+", metavar="FILE", help="manifests, or directories of them")
    p = sub.add_parser("plan", help="print the steps `run` would take")
    p.add_argument("file", metavar="FILE", help="the manifest")
    p.add_argument("--json", action="store_true", help="stable JSON instead of text")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field; list indexes count the merged lists (bases' items first)",
    )
    p.add_argument("command", nargs="*", metavar="COMMAND", help="plan COMMAND instead")
    p = sub.add_parser("schema", help="print the manifest's JSON Schema")
    p.add_argument("--markdown", action="store_true", help="the field reference as Markdown")
    p = sub.add_parser("convert", help="convert a manifest between YAML and TOML")
    p.add_argument("file", metavar="FILE", help="the manifest to convert")
    p.add_argument("--to", required=True, choices=("yaml", "toml"), help="the output format")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    p = sub.add_parser(
        "ps",
        help="list running containers: name, pid, root, uptime, command",
        description="Running containers are recorded in /run/pflask (root), else in "
        "$XDG_RUNTIME_DIR/pflask, else /run/user/UID/pflask, else /tmp/pflask-UID. "
        "Each user (root too) sees their own; root sees another user's with --owner.",
    )
    p.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    p.add_argument("-q", "--quiet", action="store_true", help="names only, one a line")
    _owner_argument(p)
    p = sub.add_parser("stop", help="stop a container: its stop signal, SIGKILL after a timeout")
    p.add_argument("name", metavar="NAME", help="the container's name or pid")
    _owner_argument(p)
    p.add_argument(
        "-t",
        "--timeout",
        type=float,
        metavar="S",
        help="seconds before SIGKILL (default: the manifest's stop.timeout)",
    )
    p = sub.add_parser(
        "exec", help="run a command in a running container (default: the user's login shell)"
    )
    p.add_argument("name", metavar="NAME", help="the container's name or pid")
    _owner_argument(p)
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARG...]",
        help="the command to run (default: the login shell /etc/passwd in the container "
        "gives its user, else /bin/sh)",
    )
    p = sub.add_parser(
        "attach", help="connect this terminal to a detached container; Ctrl-@ detaches"
    )
    p.add_argument("name", metavar="NAME", help="the container's name or pid")
    _owner_argument(p)
    _detach_keys_argument(p)
    p = sub.add_parser(
        "completion",
        help="print a shell's completion script",
        description="Print the Tab completion script for SHELL; e.g. in ~/.bashrc: "
        'eval "$(pflask completion bash)". scripts/setup installs them system-wide.',
    )
    p.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell")
    return main


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """`pflask run`'s options, for its help, the man page and completion: cli.py
    parses them by hand (argparse is too slow for the start-up path), and
    tests/test_docs.py checks that both know the same options."""
    a = p.add_argument
    a("file", metavar="FILE", help="the manifest (.yaml, .yml, .toml or .json)")
    a(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help=(
            "override a field for this run, e.g. --set root.ephemeral=true; list indexes "
            "(mounts[2]) count the merged lists, the bases' items first"
        ),
    )
    a("--name", metavar="NAME", help="the container's name (default: the manifest's)")
    a("-d", "--detach", action="store_true", help="run in the background (pflask attach NAME)")
    a("--no-cache", action="store_true", help="compile the manifest afresh; cache nothing")
    a("-v", "--verbose", action="store_true", help="trace each plan step as it is applied")
    a("command", nargs="*", metavar="-- COMMAND", help="run COMMAND instead of the manifest's")


def _owner_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--owner",
        metavar="USER",
        help="another user's container (root only; a name or uid): looked for in "
        "/run/user/UID/pflask and /tmp/pflask-UID, and acted on only if the processes "
        "it names are that user's (default: your own containers only, root's too)",
    )


def _owner(ns: argparse.Namespace) -> int | None:
    from pflask import state

    return None if ns.owner is None else state.owner_uid(ns.owner)


def subcommand(args: list[str]) -> int:
    """validate, plan, schema, convert, ps, stop, exec, attach."""
    main = parser()
    try:
        ns = main.parse_args(args)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    handler = {
        "validate": _validate,
        "plan": _plan,
        "schema": _schema,
        "convert": _convert,
        "ps": _ps,
        "stop": _stop,
        "exec": _exec,
        "attach": _attach,
        "completion": _completion,
    }.get(ns.subcommand)
    if handler is None:
        raise UsageError(f"{ns.subcommand}: not available in this version")
    return handler(ns)


def _validate(ns: argparse.Namespace) -> int:
    from pflask import context, loader
    from pflask.errors import ManifestError, ManifestErrors
    from pflask.pipeline import compile_file

    failed = False
    ctx = context.read(None)
    for file in loader.iter_files(ns.files):
        try:
            compile_file(file, (), ctx)
        except ManifestErrors as e:
            for error in e.errors:
                print(f"pflask: {error}", file=sys.stderr)
            failed = True
        except ManifestError as e:
            print(f"pflask: {e}", file=sys.stderr)
            failed = True
        else:
            print(f"{file}: ok")
    return 2 if failed else 0


def _plan(ns: argparse.Namespace) -> int:
    from pflask import context
    from pflask.pipeline import compile_file

    command = tuple(ns.command) or None
    plan, _ = compile_file(ns.file, tuple(ns.set), context.read(command))
    if ns.json:
        import json

        print(json.dumps(plan.to_json_data(), indent=2, sort_keys=True))
    else:
        print(plan.render())
    return 0


def _schema(ns: argparse.Namespace) -> int:
    from pflask import schema

    if ns.markdown:
        from pflask import reference

        sys.stdout.write(reference.markdown(schema.load()))
    else:
        sys.stdout.write(schema.text())
    return 0


def _convert(ns: argparse.Namespace) -> int:
    from pflask import loader

    loader.load(ns.file)  # the source must be valid before it is rewritten
    raw = loader.parse(loader.read(ns.file), ns.file)
    source_dir = os.path.dirname(os.path.abspath(ns.file))
    if ns.output:
        target_dir = os.path.dirname(os.path.abspath(ns.output))
        if target_dir != source_dir:
            loader.rebase(raw, source_dir, target_dir)
    text = loader.dump(loader.plain(raw), ns.to)
    if ns.output:
        with open(ns.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _ps(ns: argparse.Namespace) -> int:
    import time

    from pflask import state

    now = time.time()
    records = state.running(_owner(ns))
    if ns.quiet:
        for r in records:
            print(r.name)
        return 0
    if ns.json:
        import json

        rows = [
            {
                "name": r.name,
                "pid": r.pid or None,
                "supervisor": r.supervisor,
                "root": r.root,
                "started": r.started,
                "uptime": round(max(0.0, now - r.started), 3),
                "command": list(r.command),
                "detached": r.detached,
                "terminal": r.console,
                "stop_signal": r.stop_signal,
            }
            for r in records
        ]
        print(json.dumps(rows, indent=2))
        return 0
    import shlex

    table = [("NAME", "PID", "ROOT", "UPTIME", "COMMAND")]
    for r in records:
        table.append(
            (
                r.name,
                str(r.pid or "-"),
                r.root or "/",
                _duration(now - r.started),
                shlex.join(r.command),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[4]]).rstrip())
    return 0


def _duration(seconds: float) -> str:
    """Uptime as ps users read it: 42s, 3m07s, 2h05m, 4d03h."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _stop(ns: argparse.Namespace) -> int:
    from pflask.stop import stop_container

    stop_container(ns.name, ns.timeout, ns.owner)
    return 0


def _exec(ns: argparse.Namespace) -> int:
    from pflask import nsenter

    command = list(ns.command)
    while command and command[0].partition("=")[0] == "--owner":
        # `exec NAME --owner USER -- ...`: argparse left it to the command
        _, equals, value = command.pop(0).partition("=")
        ns.owner = value if equals else (command.pop(0) if command else "")
    if command[:1] == ["--"]:
        command = command[1:]
    return nsenter.run(ns.name, command, _owner(ns))


DETACH_KEYS = "ctrl-@"


def _detach_keys_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detach-keys",
        metavar="KEYS",
        default=DETACH_KEYS,
        help="the keys that detach, comma separated as in podman: ctrl-p,ctrl-q; "
        "'' never detaches (default: ctrl-@)",
    )


def _attach(ns: argparse.Namespace) -> int:
    from pflask import attach

    return attach.attach(ns.name, _owner(ns), attach.parse_detach_keys(ns.detach_keys))


def _completion(ns: argparse.Namespace) -> int:
    from pflask import completion

    sys.stdout.write(completion.script(ns.shell))
    return 0


def run_help() -> None:
    """`pflask run -h`: the full help (cli.py's fast path has only the usage)."""
    subcommands(parser())["run"].print_help()


def subcommands(main: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser, by name, in the order they were added."""
    import argparse

    for action in main._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# --- the original command line --------------------------------------------------------------


def classic_command(args: list[str], entry: str | None = None) -> int:
    """The original pflask: everything is a flag, the rest is the command.

    `entry`: where to cache the plan when these flags run a container.
    """
    import gc

    # cli turned the collector off for a fast start; compiling makes cyclic
    # garbage (jsonschema, the loader) that this process, which may go on to
    # supervise the container for long, should not keep.
    gc.enable()
    from pflask import classic

    parser = classic_parser()
    try:
        ns = parser.parse_args(classic.normalize(parser, args))
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    if ns.attach:
        from pflask import attach

        return attach.attach(ns.attach, keys=attach.parse_detach_keys(ns.detach_keys))
    if ns.detach_keys != DETACH_KEYS:
        raise UsageError("--detach-keys goes with --attach (the keys that detach from it)")
    data = classic.to_manifest(ns)
    if ns.verbose or ns.no_cache:
        entry = None  # never stored, so these flags never come from the cache either
    return run_manifest_data(data, ns.save, ns.plan, ns.verbose, "command line", entry)


def classic_parser() -> argparse.ArgumentParser:
    """The original pflask's options (and --version), as argparse knows them."""
    from pflask import classic

    parser = _argument_parser(
        prog="pflask",
        usage="pflask [OPTIONS] [--] [COMMAND [ARG...]]\n"
        "       pflask {run,validate,plan,schema,convert,ps,stop,exec,attach} ...",
        description="Run COMMAND (default: a shell) in new Linux namespaces. "
        "Subcommands: run FILE, validate, plan, schema, convert, ps, stop NAME, "
        "exec NAME, attach NAME (see pflask SUBCOMMAND -h).",
    )
    from pflask import __version__

    parser.add_argument("--version", action="version", version=f"pflask {__version__}")
    classic.add_arguments(parser)
    return parser


def run_manifest_data(
    data: dict[str, Any],
    save: str | None,
    show: bool,
    verbose: bool,
    origin: str,
    entry: str | None = None,
) -> int:
    """Validate a manifest mapping made from flags; save it, show its plan, or run it
    (caching the plan as `entry` first)."""
    from pflask import classic, context, loader
    from pflask.errors import ManifestError, ManifestErrors
    from pflask.pipeline import compile_data
    from pflask.plan import UNNAMED

    located = loader.located(data, origin)
    if "name" not in located:
        located["name"] = UNNAMED if not save else loader.default_name(save)
    try:
        plan = compile_data(located, origin, context.read(None))
    except ManifestErrors as e:
        raise ManifestErrors([classic.option_error(error) for error in e.errors]) from None
    except ManifestError as e:
        raise classic.option_error(e) from None
    if not show and not save and entry is not None:
        from pflask import cache

        # A seccomp profile file is read by the compiler: its content is part of the plan.
        profile = data.get("security", {}).get("seccomp", "default")
        files = () if profile in ("default", "unconfined") else (profile,)
        cache.store(entry, plan, files, {})
    plan = plan.named(os.getpid())
    if show:
        print(plan.render())
        return 0
    if save:
        if not save.endswith(loader.SUFFIXES[:3]):
            raise UsageError(f"--save {classic.shown(save)}: use a .yaml, .yml or .toml file name")
        if "name" not in data:
            located.pop("name")
        fmt = "toml" if save.endswith(".toml") else "yaml"
        text = loader.dump(loader.plain(located), fmt)
        try:
            with open(save, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise UsageError(f"--save {classic.shown(save)}: {e.strerror}") from None
        return 0
    from pflask import executor

    return executor.run(plan, verbose=verbose)

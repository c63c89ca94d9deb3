"""The command line other than `pflask run FILE`: the subcommands (through
argparse; their parsers are in options.py) and the original pflask's flags.

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
    from typing import Any


# --- subcommands ------------------------------------------------------------------------


def _owner(ns: argparse.Namespace) -> int | None:
    from pflask.run import state

    return None if ns.owner is None else state.owner_uid(ns.owner)


def subcommand(args: list[str]) -> int:
    """validate, plan, schema, convert, export, ps, stop, exec, attach."""
    from pflask.doc import options

    main = options.parser()
    try:
        ns = main.parse_args(args)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    handler = {
        "validate": _validate,
        "plan": _plan,
        "schema": _schema,
        "convert": _convert,
        "export": _export,
        "ps": _ps,
        "stop": _stop,
        "exec": _exec,
        "attach": _attach,
        "completion": _completion,
        "image": _image,
        "lock": _lock,
    }.get(ns.subcommand)
    if handler is None:
        raise UsageError(f"{ns.subcommand}: not available in this version")
    return handler(ns)


def _image(ns: argparse.Namespace) -> int:
    from pflask.commands import images

    return images.image_command(ns.action, ns.ref, ns.json)


def _lock(ns: argparse.Namespace) -> int:
    from pflask.commands import images

    return images.lock(ns.file)


def _validate(ns: argparse.Namespace) -> int:
    from pflask.compile import context
    from pflask.errors import ManifestError, ManifestErrors
    from pflask.load import loader
    from pflask.pipeline import compile_file

    failed = False
    ctx = context.read(None)
    for file in loader.iter_files(ns.files):
        try:
            compile_file(file, (), ctx, images=False)
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
    from pflask.compile import context
    from pflask.pipeline import compile_file

    command = tuple(ns.command) or None
    if ns.oci is not None:
        from pflask.errors import UsageError
        from pflask.pipeline import compile_bundle

        if ns.file is not None or ns.set or command:
            raise UsageError("plan --oci BUNDLE takes no manifest, --set or command")
        plan = compile_bundle(ns.oci, context.read(None))
    elif ns.file is None:
        from pflask.errors import UsageError

        raise UsageError("plan: a manifest FILE or --oci BUNDLE is required")
    else:
        plan, _ = compile_file(ns.file, tuple(ns.set), context.read(command))
    if ns.json:
        import json

        print(json.dumps(plan.to_json_data(), indent=2, sort_keys=True))
    else:
        print(plan.render())
    return 0


def _schema(ns: argparse.Namespace) -> int:
    from pflask.load import schema

    if ns.markdown:
        from pflask.doc import reference

        sys.stdout.write(reference.markdown(schema.load()))
    else:
        sys.stdout.write(schema.text())
    return 0


def _export(ns: argparse.Namespace) -> int:
    from pflask.commands.export import export

    print(export(ns.file, ns.oci))
    return 0


def _convert(ns: argparse.Namespace) -> int:
    from pflask.load import loader

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

    from pflask.run import state

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
    from pflask.commands.stop import stop_container

    stop_container(ns.name, ns.timeout, ns.owner)
    return 0


def _exec(ns: argparse.Namespace) -> int:
    from pflask.commands import nsenter

    command = list(ns.command)
    while command and command[0].partition("=")[0] == "--owner":
        # `exec NAME --owner USER -- ...`: argparse left it to the command
        _, equals, value = command.pop(0).partition("=")
        ns.owner = value if equals else (command.pop(0) if command else "")
    if command[:1] == ["--"]:
        command = command[1:]
    return nsenter.run(ns.name, command, _owner(ns))


def _attach(ns: argparse.Namespace) -> int:
    from pflask.run import attach

    return attach.attach(ns.name, _owner(ns), attach.parse_detach_keys(ns.detach_keys))


def _completion(ns: argparse.Namespace) -> int:
    from pflask.doc import completion

    sys.stdout.write(completion.script(ns.shell))
    return 0


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
    from pflask.doc import options
    from pflask.load import classic

    parser = options.classic_parser()
    try:
        ns = parser.parse_args(classic.normalize(parser, args))
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    if ns.attach:
        from pflask.run import attach

        return attach.attach(ns.attach, keys=attach.parse_detach_keys(ns.detach_keys))
    if ns.detach_keys != options.DETACH_KEYS:
        raise UsageError("--detach-keys goes with --attach (the keys that detach from it)")
    data = classic.to_manifest(ns)
    if ns.verbose or ns.no_cache:
        entry = None  # never stored, so these flags never come from the cache either
    return run_manifest_data(data, ns.save, ns.plan, ns.verbose, "command line", entry)


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
    from pflask.compile import context
    from pflask.compile.plan import UNNAMED, Seccomp
    from pflask.errors import ManifestError, ManifestErrors
    from pflask.load import classic, loader
    from pflask.pipeline import compile_data

    located = loader.located(data, origin)
    if "name" not in located:
        located["name"] = UNNAMED if not save else loader.default_name(save)
    try:
        plan, watch = compile_data(located, origin, context.read(None))
    except ManifestErrors as e:
        raise ManifestErrors([classic.option_error(error) for error in e.errors]) from None
    except ManifestError as e:
        raise classic.option_error(e) from None
    if not show and not save and entry is not None:
        from pflask.compile import cache

        # A seccomp profile file is read by the compiler: its content is part of the plan.
        profiles = {step.profile for step in plan.steps if isinstance(step, Seccomp)}
        files = tuple(sorted(profiles - set(loader.SECCOMP_WORDS)))
        cache.store(entry, plan, files, {}, watch)
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
    from pflask.run import supervisor

    return supervisor.run(plan, verbose=verbose)

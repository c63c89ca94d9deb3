"""The command line's entry point and its fast paths: `run FILE` and `stop NAME`.

`pflask run FILE` is started by scripts thousands of times, so it is parsed by
hand and looks in the plan cache before anything heavy is imported: a cache
hit runs the container having imported only the stdlib's builtins, `_ctypes`
and pflask's runtime modules.  Everything else (the other subcommands, the
original flags) is in commands.py and goes through argparse.
"""

from __future__ import annotations

import gc
import os
import sys

from pflask.errors import PflaskError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from pflask.compile.context import Context
    from pflask.compile.plan import Plan

SUBCOMMANDS = (
    "run",
    "validate",
    "plan",
    "schema",
    "convert",
    "export",
    "ps",
    "stop",
    "exec",
    "attach",
    "completion",
    "image",
    "lock",
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] == "run":
            return run_command(args[1:])
        if args and args[0] == "stop" and (stop := _parse_stop(args[1:])) is not None:
            from pflask.commands.stop import stop_container

            stop_container(*stop)
            return 0
        if args and args[0] in SUBCOMMANDS:
            from pflask.commands import commands

            return commands.subcommand(args)
        return classic_command(args)
    except PflaskError as e:
        for line in str(e).splitlines():
            print(f"pflask: {line}", file=sys.stderr)
        return e.status
    except Exit as e:
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


# --- run ------------------------------------------------------------------------------


def _parse_run(args: list[str]) -> tuple[str, list[str], tuple[str, ...] | None, dict[str, bool]]:
    """FILE, overrides, command, switches: a hand parser so argparse stays unloaded."""
    file: str | None = None
    overrides: list[str] = []
    command: tuple[str, ...] | None = None
    switches = {"no_cache": False, "verbose": False}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            command = tuple(args[i + 1 :])
            break
        value: str | None = None
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
        if arg in ("--set", "--name"):
            if value is None:
                i += 1
                value = args[i] if i < len(args) else None
            wanted = "PATH=VALUE" if arg == "--set" else "NAME"
            if value is None or value == "--":
                raise UsageError(f"run: {arg} needs a value ({wanted}; see pflask run -h)")
            if not value:
                raise UsageError(f"run: {arg}: the value is empty (expected {wanted})")
            overrides.append(value if arg == "--set" else f"name={value}")
        elif arg in ("-d", "--detach"):
            overrides.append("detach=true")
        elif arg == "--no-cache":
            switches["no_cache"] = True
        elif arg in ("-v", "--verbose"):
            switches["verbose"] = True
        elif arg in ("-h", "--help"):
            from pflask.doc import options

            options.run_help()
            raise Exit(0)
        elif arg.startswith("-") or file is not None:
            shown = repr(arg) if len(arg) <= 60 else f"{arg[:40]!r}... ({len(arg)} characters)"
            raise UsageError(f"run: unexpected argument {shown} (see pflask run -h)")
        else:
            file = arg
        i += 1
    if file is None:
        raise UsageError("run: which manifest? (see pflask run -h)")
    if command == ():
        raise UsageError("run: nothing after '--'")
    return file, overrides, command, switches


def _compile_aside(file: str, overrides: tuple[str, ...], ctx: Context, entry: str | None) -> Plan:
    """Compile in a child process and take only the plan back.

    YAML, jsonschema and the compiler take some 12 MB; done in the process that
    then supervises the container, they would stay resident for the
    container's whole life.  The child also fills the cache; errors are
    reported by the child and end pflask with the child's status.
    """
    import marshal

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 0
        try:
            from pflask.pipeline import compile_file

            plan, loaded = compile_file(file, overrides, ctx)
            if entry is not None:
                from pflask.compile import cache

                cache.store(entry, plan, loaded.files, loaded.env_used, loaded.stamps)
            with os.fdopen(write_end, "wb") as f:
                f.write(marshal.dumps(plan.to_wire()))
        except PflaskError as e:
            for line in str(e).splitlines():
                print(f"pflask: {line}", file=sys.stderr)
            status = e.status
        except BaseException:
            import traceback

            traceback.print_exc()
            status = 1
        sys.stderr.flush()
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    if status != 0 or not data:
        raise Exit(status or 1)
    from pflask.compile.plan import Plan

    return Plan.from_wire(marshal.loads(data))


class Exit(Exception):
    """Leave with this status; whatever had to be said was said."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def run_command(args: list[str]) -> int:
    # No cyclic garbage collection while the container starts: importing and
    # building the plan allocate enough for several collections (about 1 ms
    # here), and a collection in a forked child writes to, and so copies,
    # pages it shares with its parent.  The supervisor turns it back on once
    # the command runs (supervisor.Supervisor._started).
    gc.disable()
    file, overrides, command, switches = _parse_run(args)
    from pflask.compile import context

    ctx = context.read(command)
    plan = None
    entry = None
    if not switches["no_cache"]:
        from pflask.compile import cache

        entry = cache.key(os.path.abspath(file), tuple(overrides), ctx.key())
        plan = cache.load(entry)
    if plan is None:
        plan = _compile_aside(file, tuple(overrides), ctx, entry)
    run_plan(plan, switches["verbose"])


def run_plan(plan: Plan, verbose: bool) -> NoReturn:
    """Run the container and exit with its status."""
    from pflask.run import supervisor

    status = supervisor.run(plan, verbose=verbose)
    # Everything is done and flushed: skip the interpreter's teardown (module
    # and object finalisation costs several milliseconds per run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def classic_command(args: list[str]) -> int:
    """The original pflask's flags.

    The plan these very flags compiled to is cached like a manifest's, keyed
    by the arguments, the working directory and HOME (relative and `~`
    paths) and the user: a script repeating them skips argparse, jsonschema
    and the compiler.  The first time, commands.classic_command compiles the
    plan and stores it; flags that do not run a container (--plan, --save,
    --attach, --help, -v) are never stored, so they always get there.
    """
    gc.disable()  # as in run_command
    from pflask.compile import cache, context

    ctx = context.read(None)

    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    entry = None
    if cwd is not None:
        entry = cache.key("classic", tuple(args), cwd, os.environ.get("HOME"), ctx.key())
        plan = cache.load(entry)
        if plan is not None:
            run_plan(plan.named(os.getpid()), verbose=False)
    from pflask.commands import commands

    return commands.classic_command(args, entry)


def _parse_stop(args: list[str]) -> tuple[str, float | None, str | None] | None:
    """`stop NAME [-t S] [--owner USER]` by hand: a stop request should not wait
    for argparse (re and enum cost ~15 ms).  None: anything else, for argparse
    to answer."""
    name: str | None = None
    timeout: float | None = None
    owner: str | None = None
    items = iter(args)
    for arg in items:
        option, equals, value = arg.partition("=")
        if option in ("-t", "--timeout"):
            text = value if equals else next(items, None)
            try:
                timeout = float(text) if text is not None else None
            except ValueError:
                return None
            if timeout is None:
                return None
        elif option == "--owner":
            owner = value if equals else next(items, None)
            if not owner:
                return None
        elif arg.startswith("-") or name is not None:
            return None
        else:
            name = arg
    return None if name is None else (name, timeout, owner)

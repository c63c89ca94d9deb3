"""The command line's options, as argparse parsers: the subcommands' and the original flags'.

One description serves parsing (commands.py), `-h`, the man pages
(manpage.py) and the shell completions (completion.py), so none of them can
drift from the others.  `pflask run`'s options are parsed by hand on the fast
path (cli.py); add_run_arguments describes them for the rest.
"""

from __future__ import annotations

from pflask.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, NoReturn


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
    p.add_argument("file", nargs="?", metavar="FILE", help="the manifest")
    p.add_argument(
        "--oci",
        metavar="BUNDLE",
        help="plan an OCI bundle's config.json instead of a manifest (as pflask-oci runs it)",
    )
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
        "export",
        help="write a manifest's container as an OCI bundle (config.json) for runc or an engine",
        description="DIR/config.json describes the container `pflask run FILE` makes "
        "(hostname, mounts, environment, user, capabilities, limits), made from its plan; "
        "root.path is the manifest's root itself.  Ephemeral roots, overlay and loop "
        "mounts and network links cannot be exported (exit 2).",
    )
    p.add_argument("--oci", required=True, metavar="DIR", help="the bundle directory")
    p.add_argument("file", metavar="FILE", help="the manifest")
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
        "image",
        help="the image store: import, ls, inspect, rm, prune",
        description="Images are unpacked into a content-addressed store (root: "
        "/var/lib/pflask/images; others: $XDG_DATA_HOME/pflask/images; PFLASK_STORE "
        "overrides): import REF unpacks an image ahead of its first run, ls lists the "
        "images, inspect REF prints one as JSON, rm REF forgets it (its layers stay until "
        "prune), prune removes the layers no image uses.",
    )
    p.add_argument("action", choices=("import", "ls", "inspect", "rm", "prune"), help="what to do")
    p.add_argument(
        "ref",
        nargs="?",
        metavar="REF",
        help="an image reference (oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, "
        "docker://NAME, each optionally @sha256:HEX), or for inspect and rm a name "
        "`image ls` shows or a digest (12 digits or more)",
    )
    p.add_argument("--json", action="store_true", help="ls: a JSON list")
    p = sub.add_parser(
        "lock",
        help="pin a manifest's root.image to the digest it resolves to",
        description="Resolve FILE's root.image and write its digest into the manifest "
        "(REF becomes REF@sha256:HEX), editing only that value, so comments and layout "
        "stay and a review shows exactly the digest that changed. Locking again resolves "
        "REF without its old pin: the tag's image now.",
    )
    p.add_argument("file", metavar="FILE", help="the manifest")
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


DETACH_KEYS = "ctrl-@"


def _detach_keys_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detach-keys",
        metavar="KEYS",
        default=DETACH_KEYS,
        help="the keys that detach, comma separated as in podman: ctrl-p,ctrl-q; "
        "'' never detaches (default: ctrl-@)",
    )


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


def classic_parser() -> argparse.ArgumentParser:
    """The original pflask's options (and --version), as argparse knows them."""
    from pflask.load import classic

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

"""The man pages, pflask(1) and pflask.yaml(5), written in roff from the
definitions the program itself uses: the argparse parsers of the subcommands
and of the original flags (pflask.doc.options) and the manifest's JSON Schema
(through pflask.doc.reference, which also writes the README's reference).

So a man page cannot drift from `--help`: `scripts/update-docs` regenerates
man/ and tests/test_docs.py fails while the committed pages differ from this
module's output.  Only the sections no parser knows (exit statuses, files,
environment, examples) are prose here.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

PAGES = ("pflask.1", "pflask.yaml.5")
"""The pages, as file names (name.section) under man/ and share/man/manN."""


def escape(text: str) -> str:
    """Text as roff prints it literally: backslashes escaped, dashes as the
    minus sign (so options copied from the page work), and a leading `.` or `'`
    kept from being read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def prose(text: str) -> str:
    """Escaped text with Markdown's `code` spans in bold (schema descriptions
    and help strings use them for literal values)."""
    parts = escape(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: print it as it is
        return escape(text)
    return "".join(f"\\fB{part}\\fR" if i % 2 else part for i, part in enumerate(parts))


def _option_head(action: argparse.Action) -> str:
    """`-r, --chroot=DIR` in roff: option names bold, the value's name italic."""
    names = ", ".join(f"\\fB{escape(name)}\\fR" for name in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or action.dest.upper()
    value = f"\\fI{escape(str(metavar))}\\fR"
    if action.nargs == "?":
        return f"{names} [{value}]"
    return f"{names} {value}"


def _options(parser: argparse.ArgumentParser, out: list[str]) -> None:
    """One tagged paragraph per option and positional argument (-h aside)."""
    for action in parser._actions:
        if action.dest == "help":
            continue
        if action.option_strings:
            head = _option_head(action)
        else:
            head = f"\\fI{escape(str(action.metavar or action.dest))}\\fR"
        text = prose(action.help or "")
        if action.choices is not None and not action.option_strings:
            text = f"{text}: " + ", ".join(f"\\fB{escape(str(c))}\\fR" for c in action.choices)
        elif action.choices is not None:
            text = f"{text} (" + ", ".join(escape(str(c)) for c in action.choices) + ")"
        if action.default not in (None, [], False) and action.nargs != 0:
            text += f" (default: {escape(str(action.default))})"
        out += [".TP", head, text]


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = " ".join(parser.format_usage().split())
    return usage.removeprefix("usage: ")


def _synopsis(usage: str) -> list[str]:
    """`pflask run [-h] FILE ...` as a synopsis line: the command bold."""
    words = usage.split(" ")
    command = []
    while words and not words[0].startswith(("[", "-")) and words[0].islower():
        command.append(words.pop(0))
    return [f".B {escape(' '.join(command))}", escape(" ".join(words)), ".br"]


DESCRIPTION = """\
pflask runs a command, or boots a whole operating system, in an isolated
environment built from Linux namespaces (mount, PID, IPC, UTS, cgroup, network,
user), with bind, read-only bind, tmpfs, overlay and loop mounts, network links
moved or created for the container, cgroup limits, capabilities, and a terminal
that can be detached and attached again.

It has two front ends that describe the same container.  The original
pflask's command line (the \\fBOPTIONS\\fR below) needs no configuration:
everything is a flag, and the first word that is not an option starts the
command (with no command, a shell).  A manifest (see \\fBpflask.yaml\\fR(5)) is
a YAML, TOML or JSON file checked into a repository, validated against a JSON
Schema and compiled into a plan; \\fBpflask run\\fR \\fIFILE\\fR runs it.
\\fB\\-\\-save\\fR \\fIFILE\\fR turns a command line into a manifest.

Run by root, pflask makes no user namespace unless asked; run by an ordinary
user, it makes one, with the user as root inside (and the ids of
/etc/subuid and /etc/subgid through newuidmap(1) where a manifest maps more).
A subcommand name counts only as the first argument: \\fBpflask \\-\\- run\\fR
runs a command called run."""

EXIT_STATUS = (
    ("the command's own", "the command ran and exited with it."),
    ("128+N", "the command was killed by signal N."),
    (
        "0, 129",
        "a booted OS halted or powered off (0), or asked to reboot (129): reboot(2) in a "
        "PID namespace ends its init with SIGINT or SIGHUP.",
    ),
    ("2", "bad usage or an invalid manifest; the message names the file, line and field."),
    (
        "125",
        "pflask could not set the container up; the message names the step, the path, "
        "the system call and the errno.",
    ),
    ("126", "the command cannot be executed."),
    ("127", "the command was not found."),
)

FILES = (
    (
        "/run/pflask/",
        "running containers started by root: one record and, for a detached container, "
        "its terminal's socket, per name.",
    ),
    (
        "$XDG_RUNTIME_DIR/pflask/",
        "the same for an ordinary user (else /run/user/UID/pflask, else /tmp/pflask-UID).",
    ),
    (
        "$XDG_CACHE_HOME/pflask/",
        "compiled plans, keyed by the manifest's content, its bases, the variables it uses, "
        "pflask's version and the user (default ~/.cache/pflask); safe to delete.",
    ),
    ("/etc/subuid, /etc/subgid", "the id ranges an ordinary user may map (newuidmap(1))."),
)

ENVIRONMENT = (
    (
        "XDG_RUNTIME_DIR",
        "where an ordinary user's running containers are recorded (see FILES).",
    ),
    ("XDG_CACHE_HOME", "where compiled plans are cached (see FILES)."),
    (
        "any variable",
        "a manifest may use ${VAR} and ${VAR:-default}; with a root directory the command's "
        "environment starts empty but for env.keep and env.set (the original flags: "
        "\\-k keeps it).",
    ),
)

EXAMPLES = (
    ("Run a shell in new namespaces on the host's own root:", "pflask"),
    (
        "A command in a directory root, with the current directory bound to /src:",
        "pflask \\-\\-chroot=rootfs \\-\\-mount=bind:$PWD:/src \\-\\- ls /src",
    ),
    (
        "Discard every change to the root when the container exits:",
        "pflask \\-\\-chroot=rootfs \\-\\-ephemeral \\-\\- /bin/sh",
    ),
    ("Boot the OS in rootfs (systemd as PID 1):", "pflask \\-\\-chroot=rootfs /sbin/init"),
    (
        "Turn those flags into a manifest, then run it:",
        "pflask \\-\\-chroot=rootfs \\-\\-mount=tmp:/tmp \\-\\-save box.yaml\npflask run box.yaml",
    ),
    (
        "Another command in the manifest's container, and its plan:",
        "pflask run box.yaml \\-\\- make test\npflask plan box.yaml",
    ),
    (
        "In the background, then attach, stop:",
        "pflask run box.yaml \\-\\-name box \\-d\npflask attach box\npflask stop box",
    ),
)


def _tagged(pairs: tuple[tuple[str, str], ...], out: list[str]) -> None:
    for tag, text in pairs:
        out += [".TP", f"\\fB{escape(tag)}\\fR", escape(text)]


def _header(title: str, section: int, version: str, manual: str) -> list[str]:
    # No date: the page is generated, and must be the same on every build.
    # Left-adjusted: field paths and option lists are long words that a
    # justified line cannot stretch around (groff warns "cannot adjust").
    return [f'.TH {title} {section} "" "pflask {version}" "{manual}"', ".ad l"]


def pflask_1(main: argparse.ArgumentParser, classic: argparse.ArgumentParser, version: str) -> str:
    """pflask(1): every subcommand with its options, every original flag."""
    from pflask.doc import options

    out = _header("PFLASK", 1, version, "User Commands")
    out += [".SH NAME", "pflask \\- run a command or boot an OS in Linux namespace containers"]
    out += [".SH SYNOPSIS"]
    out += _synopsis("pflask [OPTIONS] [--] [COMMAND [ARG...]]")
    subs = options.subcommands(main)
    for parser in subs.values():
        out += _synopsis(_usage(parser))
    out += [".SH DESCRIPTION"]
    for paragraph in DESCRIPTION.split("\n\n"):
        out += [".PP", paragraph]
    out += [".SH COMMANDS"]
    for name, parser in subs.items():
        out += [".SS " + escape(f"pflask {name}")]
        out += [prose(parser.description or _help_of(main, name))]
        if len(parser._actions) > 1:
            out += [".RS"]
            _options(parser, out)
            out += [".RE"]
    out += [
        ".SH OPTIONS",
        "The original pflask's options, with the same letters.  A value may "
        "start with \\- (\\fB\\-\\-caps \\-all,+chown\\fR), as getopt(3) read it.",
    ]
    _options(classic, out)
    out += [".SH EXIT STATUS"]
    _tagged(EXIT_STATUS, out)
    out += [".SH FILES"]
    _tagged(FILES, out)
    out += [".SH ENVIRONMENT"]
    _tagged(ENVIRONMENT, out)
    out += [".SH EXAMPLES"]
    for text, command in EXAMPLES:
        out += [".PP", escape(text), ".PP", ".RS", ".nf", command, ".fi", ".RE"]
    out += [
        ".SH SEE ALSO",
        "\\fBpflask.yaml\\fR(5), \\fBunshare\\fR(1), \\fBsystemd\\-nspawn\\fR(1), "
        "\\fBbwrap\\fR(1), \\fBnamespaces\\fR(7), \\fBcapabilities\\fR(7), "
        "\\fBuser_namespaces\\fR(7)",
    ]
    return "\n".join(out) + "\n"


def _help_of(main: argparse.ArgumentParser, name: str) -> str:
    """A subcommand's one-line help, as `pflask -h` lists it."""
    import argparse

    for action in main._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help or ""
    return ""


MANIFEST_DESCRIPTION = """\
A pflask manifest describes one container: its root, command, mounts,
network, limits and privileges.  \\fBpflask run\\fR \\fIFILE\\fR runs it,
\\fBpflask validate\\fR checks it, \\fBpflask plan\\fR prints the steps a run
would take.  The format follows from the file's name: YAML (.yaml, .yml),
TOML (.toml) or JSON (.json); \\fBpflask convert\\fR converts between them.

Validation is strict: an unknown field, a wrong type or a value out of range is
reported as \\fIfile\\fR:\\fIline\\fR:\\fIcolumn\\fR: \\fIfield\\fR: \\fImessage\\fR,
with exit status 2.  \\fBversion: 1\\fR is required.

\\fBextends\\fR lists manifests this one builds on: mappings merge deeply, lists
append, scalars are replaced.  Strings may use \\fB${VAR}\\fR and
\\fB${VAR:\\-default}\\fR from the invoking environment (\\fB$$\\fR is a literal
$).  Relative host paths are relative to the file that holds them.
\\fBpflask run \\-\\-set\\fR \\fIPATH\\fR=\\fIVALUE\\fR overrides a field for one run.

The JSON Schema these fields come from is printed by \\fBpflask schema\\fR;
editors that read \\fB# yaml\\-language\\-server: $schema=\\fR\\fIURL\\fR
complete and check fields from it."""

MANIFEST_EXAMPLE = """\
version: 1
root:
  path: ./rootfs
hostname: devbox
workdir: /src
command: [/bin/sh, \\-l]
env:
  keep: [TERM, LANG]
  set:
    PROJECT: "${PROJECT:\\-pflask}"
mounts:
  \\- {type: bind, source: .., target: /src}
  \\- {type: tmp, target: /tmp, size: 64M}"""


def pflask_yaml_5(schema: dict[str, Any], version: str) -> str:
    """pflask.yaml(5): the manifest's fields, from the schema."""
    from pflask.doc import reference

    out = _header("PFLASK.YAML", 5, version, "File Formats")
    out += [".SH NAME", "pflask.yaml \\- pflask container manifests (YAML, TOML or JSON)"]
    out += [".SH DESCRIPTION"]
    for paragraph in MANIFEST_DESCRIPTION.split("\n\n"):
        out += [".PP", paragraph]
    tables = reference.tables(schema, lambda text: f"`{text}`", " | ")
    for table in tables:
        if not table.kind:
            out += [".SH FIELDS"]
        else:
            out += [".SS " + escape(f"{table.title} with type: {table.kind}"), prose(table.intro)]
        for row in table.rows:
            mark = " (required)" if row.required else ""
            # \: lets a long list of names ({nofile,nproc,...}) break after a comma.
            field = escape(row.field).replace(",", ",\\:")
            out += [".TP", f"\\fB{field}\\fR{mark} \\(em {prose(row.type)}"]
            out += [prose(row.description)]
    out += [".SH EXAMPLE", ".PP", ".RS", ".nf", MANIFEST_EXAMPLE, ".fi", ".RE"]
    out += [".SH SEE ALSO", "\\fBpflask\\fR(1)"]
    return "\n".join(out) + "\n"


def render(page: str) -> str:
    """The text of one of PAGES."""
    from pflask import __version__
    from pflask.doc import options
    from pflask.load import schema

    if page == "pflask.1":
        return pflask_1(options.parser(), options.classic_parser(), __version__)
    if page == "pflask.yaml.5":
        return pflask_yaml_5(schema.load(), __version__)
    raise ValueError(f"no man page {page}")

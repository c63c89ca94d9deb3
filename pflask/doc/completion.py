"""Tab completion scripts for bash, zsh and fish, written from the argparse
parsers pflask itself uses (pflask.doc.options), so a new option completes as
soon as it exists.

What a value completes to is the one thing a parser does not say: VALUES
names it for every option and argument that takes one, and
tests/test_completion.py fails when an option has no entry.  The scripts are
static text except for what only the running system knows: container names
(`pflask ps -q`, the caller's state directory), the host's network links
(/sys/class/net) and files.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

FILES = {"bash": "pflask.bash", "zsh": "_pflask", "fish": "pflask.fish"}
"""Each shell's script under completions/ (zsh's autoload name is the function's)."""

MANIFEST = "manifest"  # *.yaml, *.yml, *.toml, *.json (and directories, to walk into)
FILE = "file"
DIRECTORY = "directory"
CONTAINER = "container"  # a running container's name
MOUNT = "mount"  # an original --mount spec: its type first
NETIF = "netif"  # an original --netif spec: a kind or a host link
CAPS = "caps"  # all, -all, +name, -name, comma separated
COMMAND = "command"  # a command line (the first word an executable)
CHOICES = "choices"  # the parser's own choices
FREE = "free"  # anything: nothing to offer

VALUES: dict[tuple[str, str], str] = {
    # the original flags ("" = no subcommand)
    ("", "chroot"): DIRECTORY,
    ("", "image"): FREE,  # oci:DIR, docker://NAME...: a reference, not a path
    ("", "chdir"): FREE,
    ("", "hostname"): FREE,
    ("", "mount"): MOUNT,
    ("", "netif"): NETIF,
    ("", "user"): FREE,
    ("", "user_map"): FREE,
    ("", "cgroup"): FREE,
    ("", "caps"): CAPS,
    ("", "attach"): CONTAINER,
    ("", "detach_keys"): FREE,
    ("", "setenv"): FREE,
    ("", "name"): FREE,
    ("", "save"): MANIFEST,
    ("", "seccomp"): FILE,  # default, unconfined, or a profile file
    ("", "command"): COMMAND,
    ("run", "file"): MANIFEST,
    ("run", "set"): FREE,
    ("run", "name"): FREE,
    ("run", "command"): COMMAND,
    ("validate", "files"): MANIFEST,
    ("plan", "file"): MANIFEST,
    ("plan", "set"): FREE,
    ("plan", "command"): COMMAND,
    ("plan", "oci"): DIRECTORY,
    ("export", "oci"): DIRECTORY,
    ("export", "file"): MANIFEST,
    ("convert", "file"): MANIFEST,
    ("convert", "to"): CHOICES,
    ("convert", "output"): MANIFEST,
    ("stop", "name"): CONTAINER,
    ("stop", "timeout"): FREE,
    ("exec", "name"): CONTAINER,
    ("exec", "command"): COMMAND,
    ("attach", "name"): CONTAINER,
    ("ps", "owner"): FREE,
    ("stop", "owner"): FREE,
    ("exec", "owner"): FREE,
    ("attach", "owner"): FREE,
    ("attach", "detach_keys"): FREE,
    ("completion", "shell"): CHOICES,
    ("image", "action"): CHOICES,
    ("image", "ref"): FREE,
    ("lock", "file"): MANIFEST,
}

MOUNT_TYPES = ("bind:", "bind-ro:", "tmp:", "overlay:", "aufs:", "loop:", "loop-ro:")
NETIF_KINDS = ("macvlan:", "ipvlan:", "veth:")


class Argument:
    """What completion needs of one argparse action."""

    __slots__ = ("choices", "help", "kind", "names", "repeats", "takes_value")

    def __init__(self, sub: str, action: argparse.Action) -> None:
        self.names = tuple(action.option_strings)
        self.help = " ".join((action.help or "").split())
        self.takes_value = action.nargs != 0
        self.repeats = action.nargs in ("*", "+", "...") or type(action).__name__ in (
            "_AppendAction",
            "_AppendConstAction",
        )
        self.choices = tuple(str(c) for c in action.choices or ())
        self.kind = VALUES.get((sub, action.dest), "") if self.takes_value else ""


def arguments(sub: str, parser: argparse.ArgumentParser) -> list[Argument]:
    """The parser's options and positionals, -h/--version aside."""
    return [Argument(sub, a) for a in parser._actions if a.dest not in ("help", "version")]


def unclassified() -> list[str]:
    """Options and arguments that take a value VALUES says nothing about."""
    missing = []
    for sub, parser in _parsers().items():
        for argument in arguments(sub, parser):
            if argument.takes_value and not argument.kind:
                missing.append(f"{sub or 'pflask'} {'/'.join(argument.names) or 'positional'}")
    return missing


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from pflask.doc import options

    return {"": options.classic_parser(), **options.subcommands(options.parser())}


def _subcommand_helps() -> dict[str, str]:
    from pflask.doc import manpage, options

    main = options.parser()
    return {name: manpage._help_of(main, name) for name in options.subcommands(main)}


def _caps() -> list[str]:
    from pflask.kernel import capabilities

    return ["all", "-all", *(f"{sign}{name}" for name in capabilities.NAMES for sign in "+-")]


def script(shell: str) -> str:
    """The completion script for `shell` (a key of FILES)."""
    parsers = _parsers()
    if shell == "bash":
        return _bash(parsers)
    if shell == "zsh":
        return _zsh(parsers)
    if shell == "fish":
        return _fish(parsers)
    raise ValueError(f"no completion for {shell}")


# --- bash -----------------------------------------------------------------------------

_BASH_HEAD = r"""# bash completion for pflask(1); generated by `pflask completion bash`.

# Offer the candidates "$@" that start with $1, what has been typed of the
# value.  Bash splits words at ':' and '=' (COMP_WORDBREAKS), so what it
# replaces is only the part after the last of them: trim that much.
_pflask_offer() {
    local typed=$1 trim="" c
    shift
    if [[ $typed == *[:=]* ]]; then
        trim=${typed%"${typed##*[:=]}"}
    fi
    for c in "$@"; do
        [[ $c == "$typed"* ]] && COMPREPLY+=("${c#"$trim"}")
    done
}

# Complete a value of the given kind; $2 is what has been typed of it.
_pflask_value() {
    local kind=$1 typed=$2 f
    shift 2
    case $kind in
    manifest)
        while IFS= read -r f; do
            if [[ -d $f || $f == *.yaml || $f == *.yml || $f == *.toml || $f == *.json ]]; then
                COMPREPLY+=("$f")
            fi
        done < <(compgen -f -- "$typed")
        compopt -o filenames 2>/dev/null ;;
    file)
        while IFS= read -r f; do COMPREPLY+=("$f"); done < <(compgen -f -- "$typed")
        compopt -o filenames 2>/dev/null ;;
    directory)
        while IFS= read -r f; do COMPREPLY+=("$f"); done < <(compgen -d -- "$typed")
        compopt -o filenames 2>/dev/null ;;
    container)
        _pflask_offer "$typed" $(command pflask ps -q 2>/dev/null) ;;
    mount)
        _pflask_offer "$typed" MOUNT_TYPES
        compopt -o nospace 2>/dev/null ;;
    netif)
        local links=() l
        for l in /sys/class/net/*; do links+=("${l##*/}:"); done
        _pflask_offer "$typed" NETIF_KINDS "${links[@]}"
        compopt -o nospace 2>/dev/null ;;
    caps)
        local done_part=${typed%"${typed##*,}"} names=() n
        for n in CAPS; do names+=("$done_part$n"); done
        _pflask_offer "$typed" "${names[@]}"
        compopt -o nospace 2>/dev/null ;;
    command)
        while IFS= read -r f; do COMPREPLY+=("$f"); done < <(compgen -c -- "$typed") ;;
    choices)
        _pflask_offer "$typed" "$@" ;;
    esac
}
"""

_BASH_MAIN = r"""
_pflask() {
    COMPREPLY=()
    # Words up to the cursor, split at blanks only (bash's own COMP_WORDS
    # split `--mount=bind:/x` into five).
    local line=${COMP_LINE:0:COMP_POINT}
    local -a words
    read -ra words <<<"$line"
    local cur=""
    if [[ $line != *[[:space:]] ]]; then
        cur=${words[-1]}
        unset 'words[-1]'
    fi
    local sub="" first=1
    if ((${#words[@]} >= 2)) && [[ " SUBCOMMANDS " == *" ${words[1]} "* ]]; then
        sub=${words[1]}
        first=2
    elif ((${#words[@]} == 1)) && [[ $cur != -* ]]; then
        _pflask_offer "$cur" SUBCOMMANDS
        return
    fi
    # Walk the complete words: options, their values, positionals, `--`.
    local i w kind="" positional=0 rest=0 after=0
    for ((i = first; i < ${#words[@]}; i++)); do
        w=${words[i]}
        if ((rest)); then
            positional=$((positional + 1))
            after=$((after + 1))
        elif [[ $w == -- ]]; then
            rest=1
        elif [[ $w == -* && $w != *=* && $w != - ]]; then
            kind=$(_pflask_option "$sub" "$w")
            if [[ -n $kind ]] && ((i + 1 < ${#words[@]})); then
                i=$((i + 1))
                kind=""
            fi
        elif [[ $w != -* ]]; then
            positional=$((positional + 1))
            if [[ -z $sub ]]; then  # the original flags: the command starts here
                rest=1
                after=1
            fi
        fi
    done
    # What the word under the cursor is.
    if ((!rest)) && [[ -n $kind ]]; then
        _pflask_value "$kind" "$cur" $(_pflask_choices "$sub" "${words[-1]}")
    elif ((!rest)) && [[ $cur == --*=* ]]; then
        kind=$(_pflask_option "$sub" "${cur%%=*}")
        [[ -n $kind ]] && _pflask_value "$kind" "${cur#*=}" $(_pflask_choices "$sub" "${cur%%=*}")
    elif ((!rest)) && [[ $cur == -* ]]; then
        _pflask_offer "$cur" $(_pflask_options "$sub")
    elif ((rest && after > 0)); then
        _pflask_value file "$cur"  # the command's own arguments
    elif ((rest)) && [[ -z $sub ]]; then
        _pflask_value command "$cur"
    else
        kind=$(_pflask_positional "$sub" "$positional")
        _pflask_value "${kind:-file}" "$cur" $(_pflask_positional_choices "$sub")
    fi
}
complete -F _pflask pflask
"""


def _bash(parsers: dict[str, argparse.ArgumentParser]) -> str:
    from pflask.doc import options

    head = (
        _BASH_HEAD.replace("MOUNT_TYPES", " ".join(MOUNT_TYPES))
        .replace("NETIF_KINDS", " ".join(NETIF_KINDS))
        .replace("CAPS", " ".join(_caps()))
    )
    names_of, kinds, choices, positionals, positional_choices = [], [], [], [], []
    for sub, parser in parsers.items():
        args = arguments(sub, parser)
        names = " ".join(n for a in args for n in a.names)
        names_of.append(f"    {sub or 'pflask'}) echo {names} ;;")
        for a in args:
            for name in a.names:
                if a.kind:
                    kinds.append(f"    '{sub} {name}') echo {a.kind} ;;")
                if a.choices:
                    choices.append(f"    '{sub} {name}') echo {' '.join(a.choices)} ;;")
        plain = [a for a in args if not a.names]
        for index, a in enumerate(plain):
            pattern = f"'{sub} {index}'" + (f" | '{sub} '*" if a.repeats else "")
            positionals.append(f"    {pattern}) echo {a.kind or FILE} ;;")
            if a.choices:
                positional_choices.append(f"    {sub}) echo {' '.join(a.choices)} ;;")
    body = [
        head,
        "# The options of a subcommand ('pflask': the original flags).",
        "_pflask_options() {\n    case ${1:-pflask} in",
        *names_of,
        "    esac\n}",
        "",
        "# The kind of value an option takes (nothing: it takes none).",
        '_pflask_option() {\n    case "$1 ${2%%=*}" in',
        *kinds,
        "    esac\n}",
        "",
        "# The choices an option offers.",
        '_pflask_choices() {\n    case "$1 ${2%%=*}" in',
        *choices,
        "    esac\n}",
        "",
        "# The kind of the Nth (from 0) positional argument of a subcommand.",
        '_pflask_positional() {\n    case "$1 $2" in',
        *positionals,
        "    esac\n}",
        "",
        "_pflask_positional_choices() {\n    case $1 in",
        *positional_choices,
        "    esac\n}",
        _BASH_MAIN.replace("SUBCOMMANDS", " ".join(options.subcommands(options.parser()))),
    ]
    return "\n".join(body)


# --- zsh ------------------------------------------------------------------------------


def _zq(text: str) -> str:
    """`text` inside single quotes, for zsh."""
    return text.replace("'", "'\\''")


def _zhelp(text: str) -> str:
    """A description inside _arguments' [...]: brackets and colons escaped."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


_ZSH_ACTIONS = {
    MANIFEST: "_pflask_manifests",
    FILE: "_files",
    DIRECTORY: "_files -/",
    CONTAINER: "_pflask_containers",
    MOUNT: "_pflask_mounts",
    NETIF: "_pflask_netifs",
    CAPS: "_pflask_caps",
    COMMAND: "_command_names -e",
    FREE: " ",
}

_ZSH_HEAD = r"""#compdef pflask
# zsh completion for pflask(1); generated by `pflask completion zsh`.

# Manifests and directories only (_files would fall back to every file).
_pflask_manifests() { _path_files -g '*.(yaml|yml|toml|json)(-.)' -g '*(-/)' }
_pflask_containers() {
    local -a names
    names=(${(f)"$(command pflask ps -q 2>/dev/null)"})
    compadd -a names
}
_pflask_mounts() { compadd -S '' -- MOUNT_TYPES }
_pflask_netifs() {
    local -a links
    links=(/sys/class/net/*(N:t))
    compadd -S '' -- NETIF_KINDS ${^links}:
}
_pflask_caps() {
    compset -P '*,'
    compadd -S '' -- CAPS
}
"""


def _zsh_specs(sub: str, parser: argparse.ArgumentParser) -> list[str]:
    specs = []
    for a in arguments(sub, parser):
        action = " "
        if a.choices:
            action = "(" + " ".join(a.choices) + ")"
        elif a.kind:
            action = _ZSH_ACTIONS[a.kind]
        if a.names:
            exclusive = f"({' '.join(a.names)})" if len(a.names) > 1 and not a.repeats else ""
            star = "*" if a.repeats else ""
            for name in a.names:
                if not a.takes_value:
                    spec = f"{exclusive}{star}{name}[{_zhelp(a.help)}]"
                else:
                    suffix = "=" if name.startswith("--") else "+"
                    spec = f"{exclusive}{star}{name}{suffix}[{_zhelp(a.help)}]:value:{action}"
                specs.append(f"'{_zq(spec)}'")
        elif a.kind == COMMAND:
            specs.append("'*::command:_normal'")
        else:
            star = "*" if a.repeats else ""
            specs.append(f"'{_zq(f'{star}:{_zhelp(a.help) or a.kind}:{action}')}'")
    return specs


def _zsh(parsers: dict[str, argparse.ArgumentParser]) -> str:
    head = (
        _ZSH_HEAD.replace("MOUNT_TYPES", " ".join(MOUNT_TYPES))
        .replace("NETIF_KINDS", " ".join(NETIF_KINDS))
        .replace("CAPS", " ".join(_caps()))
    )
    helps = _subcommand_helps()
    described = " ".join(f"'{_zq(name)}:{_zq(_zhelp(text))}'" for name, text in helps.items())
    out = [head, "_pflask() {", f"    local -a subcommands=({described})"]
    out += [
        "    if (( CURRENT == 2 )) && [[ $words[2] != -* ]]; then",
        "        _describe -t subcommands subcommand subcommands",
        "        return",
        "    fi",
        "    case $words[2] in",
    ]
    for sub, parser in parsers.items():
        if not sub:
            continue
        out += [
            f"    {sub})",
            "        shift words; (( CURRENT-- ))",
            "        _arguments -s -S \\",
            *(f"            {spec} \\" for spec in _zsh_specs(sub, parser)),
            "            && return ;;",
        ]
    out += [
        "    *)",
        "        _arguments -s -S \\",
        *(f"            {spec} \\" for spec in _zsh_specs("", parsers[""])),
        "            && return ;;",
        "    esac",
        "}",
        "",
        'if [[ $zsh_eval_context[-1] == loadautofunc ]]; then _pflask "$@"; '
        "else compdef _pflask pflask; fi",
    ]
    return "\n".join(out) + "\n"


# --- fish -----------------------------------------------------------------------------

_FISH_HEAD = r"""# fish completion for pflask(1); generated by `pflask completion fish`.

# True when the command line's first argument is one of $argv (a subcommand
# counts only there), or with no argument: when there is no subcommand.
function __pflask_sub
    set -l words (commandline -opc)
    if test (count $argv) -eq 0
        test (count $words) -lt 2; or not contains -- $words[2] SUBCOMMANDS
        return
    end
    test (count $words) -ge 2; and contains -- $words[2] $argv
end
function __pflask_first
    test (count (commandline -opc)) -eq 1
end
function __pflask_dashdash
    contains -- -- (commandline -opc)
end
function __pflask_containers
    command pflask ps -q 2>/dev/null
end
function __pflask_manifests
    for path in (commandline -ct)*
        if test -d $path
            echo $path/
        else if string match -qr -- '\.(yaml|yml|toml|json)$' $path
            echo $path
        end
    end
end
function __pflask_netifs
    printf '%s\n' NETIF_KINDS
    for link in /sys/class/net/*
        echo (basename $link):
    end
end
function __pflask_caps
    set -l typed (string replace -r -- '^--caps=' '' (commandline -ct))
    set -l done_part (string replace -r -- '[^,]*$' '' $typed)
    for name in CAPS
        echo $done_part$name
    end
end

complete -c pflask -f
"""

_FISH_ARGS = {
    MANIFEST: "-a '(__pflask_manifests)'",
    FILE: "-F",
    DIRECTORY: "-a '(__fish_complete_directories)'",
    CONTAINER: "-a '(__pflask_containers)'",
    MOUNT: "-a 'MOUNT_TYPES'",
    NETIF: "-a '(__pflask_netifs)'",
    CAPS: "-a '(__pflask_caps)'",
    COMMAND: "-a '(__fish_complete_command)'",
    FREE: "",
}


def _fq(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(parsers: dict[str, argparse.ArgumentParser]) -> str:
    from pflask.doc import options

    subs = " ".join(options.subcommands(options.parser()))
    head = (
        _FISH_HEAD.replace("SUBCOMMANDS", subs)
        .replace("NETIF_KINDS", " ".join(NETIF_KINDS))
        .replace("CAPS", " ".join(_caps()))
    )
    out = [head]
    for name, text in _subcommand_helps().items():
        out.append(f"complete -c pflask -n __pflask_first -a {name} -d {_fq(text)}")
    for sub, parser in parsers.items():
        condition = f"'__pflask_sub {sub}'" if sub else "__pflask_sub"
        for a in arguments(sub, parser):
            value = _FISH_ARGS.get(a.kind, "").replace("MOUNT_TYPES", " ".join(MOUNT_TYPES))
            if a.choices:
                value = f"-a {_fq(' '.join(a.choices))}"
            parts = [f"complete -c pflask -n {condition}"]
            if a.names:
                for name in a.names:
                    parts.append(f"-l {name[2:]}" if name.startswith("--") else f"-s {name[1:]}")
                if a.takes_value:
                    parts.append("-r")
            elif not sub:
                continue  # the original flags' command: any word after the options
            else:
                # fish cannot tell positionals apart: the command is what follows `--`.
                dashdash = (
                    "; and __pflask_dashdash'"
                    if a.kind == COMMAND
                    else "; and not __pflask_dashdash'"
                )
                parts[0] = parts[0][:-1] + dashdash
            if value:
                parts.append(value)
            parts.append(f"-d {_fq(a.help)}")
            out.append(" ".join(parts))
    return "\n".join(out) + "\n"

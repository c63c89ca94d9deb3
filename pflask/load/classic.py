"""The original pflask command line, as a second front end to the manifest.

Every option of the original man page, with the same letters, fills the same
manifest mapping a file would; `--save FILE` writes that mapping out so a long
command line can become a checked-in manifest.  Host paths are made absolute
against the current directory, so the saved file means the same anywhere.
"""

from __future__ import annotations

import os

from pflask.errors import ManifestError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a(
        "-r",
        "--chroot",
        "--root",  # its name until December 2013, which the original README's examples use
        metavar="DIR",
        help="use DIR as the container's root directory",
    )
    a(
        "--image",
        metavar="REF",
        help="use an image as the container's root: oci:DIR[:TAG], oci-archive:FILE[:TAG], "
        "docker-archive:FILE or docker://NAME[:TAG], each optionally @sha256:HEX",
    )
    a("-c", "--chdir", metavar="DIR", help="change to DIR inside the container")
    a("-t", "--hostname", metavar="NAME", help="set the container's hostname")
    a(
        "-m",
        "--mount",
        metavar="SPEC",
        action="append",
        default=[],
        help="bind:SRC:DST, bind-ro:SRC:DST, tmp:DST, overlay:ROOT_DIR:DST:WORK_DIR, "
        "aufs:DIR:DST (DST / or the --chroot DIR: a copy-on-write root), "
        "loop:IMAGE:DST[:FSTYPE], loop-ro:IMAGE:DST[:FSTYPE]; "
        "',' may replace ':' (the original's first syntax)",
    )
    a(
        "-n",
        "--netif",
        metavar="SPEC",
        action="append",
        nargs="?",
        const="",
        default=None,
        help="a network namespace; SPEC moves or creates a link: DEV:NAME, "
        "macvlan:MASTER:NAME, ipvlan:MASTER:NAME, veth:OUTSIDE:INSIDE (',' may replace ':')",
    )
    a("-u", "--user", metavar="USER", help="run the command as USER (name or uid[:gid])")
    a(
        "-e",
        "--user-map",
        metavar="MAP",
        action="append",
        default=[],
        help="map ids INSIDE:OUTSIDE:COUNT in the user namespace (uids and gids)",
    )
    a("-w", "--ephemeral", action="store_true", help="discard changes to the root")
    a(
        "-g",
        "--cgroup",
        metavar="CONTROLLER",
        action="append",
        default=[],
        help="make a cgroup in CONTROLLER's hierarchy for the container",
    )
    a("-b", "--caps", metavar="CAPS", help="capabilities: all, -all, +name, -name, comma separated")
    a(
        "--seccomp",
        metavar="PROFILE",
        help="the seccomp filter: default, unconfined, or a Docker/OCI JSON profile file",
    )
    a("-d", "--detach", action="store_true", help="run in the background (pflask attach NAME)")
    a("-a", "--attach", metavar="PID", help="attach to a detached container (name or pid)")
    a(
        "--detach-keys",
        metavar="KEYS",
        default="ctrl-@",
        help="with --attach: the keys that detach, comma separated as in podman "
        "(ctrl-p,ctrl-q; default: ctrl-@)",
    )
    a(
        "-s",
        "--setenv",
        metavar="NAME=VALUE,...",
        action="append",
        default=[],
        help="set environment variables (comma separated)",
    )
    a("-k", "--keepenv", action="store_true", help="do not clear the environment")
    a("-U", "--no-userns", action="store_true", help="no user namespace")
    a("-M", "--no-mountns", action="store_true", help="no mount namespace")
    a("-N", "--no-netns", action="store_true", help="no network namespace")
    a("-I", "--no-ipcns", action="store_true", help="no IPC namespace")
    a("-H", "--no-utsns", action="store_true", help="no UTS namespace")
    a("-P", "--no-pidns", action="store_true", help="no PID namespace")
    a("--no-cgroupns", action="store_true", help="no cgroup namespace")
    a("--name", help="the container's name (default: pflask-PID)")
    a("--save", metavar="FILE", help="write the manifest (.yaml or .toml) instead of running")
    a("--plan", action="store_true", help="print the plan instead of running")
    a("--no-cache", action="store_true", help="compile these flags afresh; cache nothing")
    a("-v", "--verbose", action="store_true", help="trace each plan step as it is applied")
    a("command", nargs="*", metavar="COMMAND", help="the command and its arguments")


def normalize(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """Options as getopt(3) read them in the original: values may start with
    `-` (`--caps -all`), and the first non-option word starts the command
    (`pflask -r root ls -l`), so the command's own options are never ours.

    Unlike getopt, an option whose value is missing is a usage error naming
    it: at the end of the line, before `--`, or before another of our long
    options (`--chroot --plan`: a directory called `--plan` is far less
    likely than a forgotten value).  An empty value is one too: no option
    here means anything by it (a bare `--netif` is written without one).
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            return [*out, "--", *args[i + (1 if arg == "--" else 0) :]]
        name, has_value, value = arg.partition("=")
        action = parser._option_string_actions.get(name)
        if action is None and not arg.startswith("--") and len(arg) > 2:
            action = parser._option_string_actions.get(arg[:2])  # -rDIR
            if action is not None and action.nargs != 0:
                out.append(f"{arg[:2]}={_value(parser, action, arg[:2], arg[2:])}")
                i += 1
                continue
        if action is None or action.nargs == 0:
            out.append(arg)
            i += 1
            continue
        if has_value:
            out.append(f"{name}={_value(parser, action, name, value)}")
            i += 1
            continue
        following = args[i + 1] if i + 1 < len(args) else None
        if action.nargs == "?" and (
            following is None or (following and ":" not in following and "," not in following)
        ):
            out.append(arg)  # a bare --netif; an empty word after it is its empty value
            i += 1
            continue
        out.append(f"{name}={_value(parser, action, name, following)}")
        i += 2
    return out


def _value(
    parser: argparse.ArgumentParser, action: argparse.Action, option: str, value: str | None
) -> str:
    """`value` for `option`, or the usage error saying that it is missing or empty."""
    wanted = action.metavar or action.dest.upper()
    if value is None or value == "--" or _is_long_option(parser, value):
        raise UsageError(f"{option} needs a value ({wanted})")
    if not value and action.nargs != "?":
        raise UsageError(f"{option}: the value is empty (expected {wanted})")
    return value


def _is_long_option(parser: argparse.ArgumentParser, word: str) -> bool:
    return word.startswith("--") and word.partition("=")[0] in parser._option_string_actions


def shown(value: str, width: int = 60) -> str:
    """`value` quoted for a message, its middle elided when long: an error
    about a 10 KB argument should still be one readable line."""
    if len(value) > width:
        value = value[: width // 2] + "..." + value[-width // 2 :]
    return repr(value)


MAX_ID = 4294967294
"""The largest uid or gid: (uid_t)-1 means "no id" to the kernel."""


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _id(what: str, text: str) -> int:
    """A uid, gid or id count.  A number far beyond any id is a usage error
    before int() sees it (int() refuses thousands of digits with a
    ValueError); the schema judges the exact range of the rest."""
    if len(text.lstrip("0")) > len(str(MAX_ID)):
        raise UsageError(f"{what}: {shown(text, 24)} is too large (ids go up to {MAX_ID})")
    return int(text)


# Which option filled a manifest field, to name the option in an error about its value.
FIELD_OPTIONS = (
    ("root.ephemeral", "--ephemeral"),
    ("root.image", "--image"),
    ("root", "--chroot"),
    ("workdir", "--chdir"),
    ("hostname", "--hostname"),
    ("mounts", "--mount"),
    ("network", "--netif"),
    ("namespaces", "the --no-*ns options"),
    ("user", "--user"),
    ("idmap", "--user-map"),
    ("cgroup", "--cgroup"),
    ("capabilities", "--caps"),
    ("env.clear", "--keepenv"),
    ("env", "--setenv"),
    ("name", "--name"),
    ("command", "the command"),
    ("detach", "--detach"),
    ("security.seccomp", "--seccomp"),
)


def option_error(error: ManifestError) -> ManifestError:
    """An error about a manifest field the flags filled, as one about the option.

    The mapping came from the command line, so `command line: hostname:`
    would make the user guess which flag it was; `--hostname:` does not.
    """
    field = error.field or ""
    for prefix, option in FIELD_OPTIONS:
        if field == prefix or field.startswith((prefix + ".", prefix + "[")):
            label = option if field == option.removeprefix("--") else f"{option}: {field}"
            return ManifestError(error.message, field=label)
    return error


def _host(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _container(spec: str, path: str) -> str:
    if not path.startswith("/"):
        raise UsageError(
            f"--mount {shown(spec)}: the target {shown(path)} must be an absolute path"
        )
    return path


def separator(spec: str) -> str:
    """The separator of a --mount or --netif SPEC: `:` (the original since
    2015), or `,` where the spec has no colon (the original's 2013 syntax,
    which its man page and README examples use: `--mount tmp,$HOME`).  A
    colon anywhere decides, so a path with a comma in it keeps working in the
    colon form."""
    return ":" if ":" in spec or "," not in spec else ","


def mount_spec(spec: str) -> dict[str, Any]:
    """One --mount SPEC as a manifest mount entry."""
    sep = separator(spec)
    kind, _, rest = spec.partition(sep)
    parts = rest.split(sep) if rest else []
    shapes = {
        "bind": (2, "bind:SRC:DST"),
        "bind-ro": (2, "bind-ro:SRC:DST"),
        "tmp": (1, "tmp:DST"),
        "overlay": (3, "overlay:ROOT_DIR:DST:WORK_DIR"),
        "aufs": (2, "aufs:DIR:DST"),
        "loop": (2, "loop:IMAGE:DST[:FSTYPE]"),
        "loop-ro": (2, "loop-ro:IMAGE:DST[:FSTYPE]"),
    }
    if kind not in shapes:
        raise UsageError(
            f"--mount {shown(spec)}: unknown type {shown(kind)} (one of {', '.join(shapes)})"
        )
    count, shape = shapes[kind]
    optional_extra = kind.startswith("loop")
    if (len(parts) != count and not (optional_extra and len(parts) == count + 1)) or not all(parts):
        raise UsageError(f"--mount {shown(spec)}: expected {shape}")
    if kind in ("bind", "bind-ro"):
        entry: dict[str, Any] = {
            "type": "bind",
            "source": _host(parts[0]),
            "target": _container(spec, parts[1]),
        }
        if kind == "bind-ro":
            entry["readonly"] = True
        return entry
    if kind == "tmp":
        return {"type": "tmp", "target": _container(spec, parts[0])}
    if kind == "overlay":
        # The original's overlay: ROOT_DIR is the writable layer over DST's content.
        return {
            "type": "aufs",
            "source": _host(parts[0]),
            "target": _container(spec, parts[1]),
            "work": _host(parts[2]),
        }
    if kind == "aufs":
        return {"type": "aufs", "source": _host(parts[0]), "target": _container(spec, parts[1])}
    entry = {"type": "loop", "source": _host(parts[0]), "target": _container(spec, parts[1])}
    if len(parts) == 3:
        entry["fstype"] = parts[2]
    if kind == "loop-ro":
        entry["readonly"] = True
    return entry


NETIF_SHAPES = "DEV[:NAME], macvlan:MASTER:NAME, ipvlan:MASTER:NAME or veth:OUTSIDE:INSIDE"


def _link_names(spec: str, names: list[str]) -> None:
    """Refuse a name no link can have (the kernel's dev_valid_name: 1 to 15
    bytes, no `/`, no white space, not `.` or `..`) with the shapes --netif
    takes: a wrong spec is far more often a wrong shape than a wrong name."""
    for name in names:
        size = len(name.encode())
        if (
            not 0 < size <= 15
            or name in (".", "..")
            or "/" in name
            or any(c.isspace() for c in name)
        ):
            raise UsageError(
                f"--netif {shown(spec)}: {shown(name, 24)} is not a link name; "
                f"expected {NETIF_SHAPES} (',' may replace ':')"
            )


def netif_spec(spec: str) -> dict[str, Any] | None:
    """One --netif SPEC as a manifest interface; None for a bare --netif."""
    if not spec:
        return None
    parts = spec.split(separator(spec))
    if parts[0] in ("macvlan", "ipvlan", "veth") and len(parts) == 3:
        _link_names(spec, parts[1:])
        if parts[0] == "veth":
            return {"type": "veth", "host": parts[1], "name": parts[2]}
        return {"type": parts[0], "master": parts[1], "name": parts[2]}
    if parts[0] in ("macvlan", "ipvlan", "veth"):
        shape = "veth:OUTSIDE:INSIDE" if parts[0] == "veth" else f"{parts[0]}:MASTER:NAME"
        raise UsageError(f"--netif {shown(spec)}: expected {shape}")
    if len(parts) > 2:
        raise UsageError(f"--netif {shown(spec)}: expected {NETIF_SHAPES} (',' may replace ':')")
    _link_names(spec, parts)
    if len(parts) == 1:
        return {"type": "move", "device": parts[0]}
    return {"type": "move", "device": parts[0], "name": parts[1]}


def _user_map(spec: str) -> dict[str, int]:
    parts = spec.split(":")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise UsageError(f"--user-map {shown(spec)}: expected INSIDE:OUTSIDE:COUNT (numbers)")
    inside, outside, count = (_id(f"--user-map {shown(spec)}", p) for p in parts)
    return {"inside": inside, "outside": outside, "count": count}


def _setenv(specs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for spec in specs:
        for item in spec.split(","):
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise UsageError(f"--setenv {shown(item)}: expected NAME=VALUE")
            values[name] = value
    return values


def to_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """The manifest mapping these flags describe (validated later, like a file's)."""
    data: dict[str, Any] = {"version": 1}
    if args.name:
        data["name"] = args.name
    if args.chroot:
        data["root"] = {"path": _host(args.chroot)}
    if args.image:
        if args.chroot:
            raise UsageError("--image and --chroot: a root is a directory or an image, not both")
        from pflask.load import imageref

        data["root"] = {"image": imageref.with_path(args.image, _host)}
    if args.ephemeral:
        if not args.chroot and not args.image:
            raise UsageError("--ephemeral needs --chroot")
        data["root"]["ephemeral"] = True
    if args.hostname:
        data["hostname"] = args.hostname
    if args.command:
        data["command"] = list(args.command)
    if args.chdir:
        data["workdir"] = args.chdir
    if args.user:
        user = args.user
        data["user"] = _id(f"--user {shown(user)}", user) if _is_number(user) else user
    env: dict[str, Any] = {}
    if args.keepenv:
        env["clear"] = False
    values = _setenv(args.setenv)
    if values:
        env["set"] = values
    if env:
        data["env"] = env
    namespaces: dict[str, Any] = {}
    for flag, name in (
        ("no_mountns", "mount"),
        ("no_pidns", "pid"),
        ("no_ipcns", "ipc"),
        ("no_utsns", "uts"),
        ("no_cgroupns", "cgroup"),
        ("no_userns", "user"),
        ("no_netns", "net"),
    ):
        if getattr(args, flag):
            namespaces[name] = False
    interfaces = [i for i in (netif_spec(s) for s in args.netif or ()) if i is not None]
    if args.netif is not None and not args.no_netns:
        namespaces["net"] = True
    if args.no_netns and args.netif:
        raise UsageError("--netif and --no-netns contradict each other")
    if namespaces:
        data["namespaces"] = namespaces
    if args.user_map:
        ranges = [_user_map(spec) for spec in args.user_map]
        data["idmap"] = {"uid": ranges, "gid": [dict(r) for r in ranges]}
    if args.mount:
        data["mounts"] = [mount_spec(spec) for spec in args.mount]
    if interfaces:
        data["network"] = {"interfaces": interfaces}
    if args.cgroup:
        data["cgroup"] = {"controllers": list(args.cgroup)}
    if args.caps:
        data["capabilities"] = args.caps
    if args.seccomp:
        from pflask.load.loader import SECCOMP_WORDS

        profile = args.seccomp if args.seccomp in SECCOMP_WORDS else _host(args.seccomp)
        data.setdefault("security", {})["seccomp"] = profile
    if args.detach:
        data["detach"] = True
    return data

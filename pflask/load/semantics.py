"""Rules a JSON Schema cannot state, checked with the same file:line:col places.

Runs only after the schema accepted the document, so shapes are known good.
Rules that depend on who runs pflask (loop mounts need root, say) are the
compiler's; these hold for everybody.
"""

from __future__ import annotations

import itertools

from pflask.errors import shown
from pflask.load.positions import entry_name, error_at

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pflask.errors import ManifestError
    from pflask.load.positions import LocDict

ID_MAX = 4294967294
"""The largest uid or gid: (uid_t)-1 means "no change" to chown(2) and setresuid(2)."""
BYTES_MAX = 1 << 53
"""8 PiB, the largest memory limit or tmpfs size: well short of where the
kernel's page counters saturate (a cgroup limit that silently becomes "max")
and of 2^64 bytes, where tmpfs's size= wraps; also exact as a JSON number."""
NOFILE_MAX = 2147483584
"""The kernel's ceiling for fs.nr_open (INT_MAX rounded down to a multiple of
BITS_PER_LONG): setrlimit(RLIMIT_NOFILE) above it fails on every host."""
LINK_NAME_MAX = 15
"""Bytes in a network link's name (IFNAMSIZ less its NUL)."""


def check(data: LocDict) -> list[ManifestError]:
    errors: list[ManifestError] = []
    for rule in (
        _capabilities,
        _cgroup,
        _idmap,
        _network,
        _mounts,
        _root,
        _namespaces,
        _rlimits,
        _stop,
        _sizes,
        _user,
    ):
        errors.extend(rule(data))
    return errors


def _capabilities(data: LocDict) -> list[ManifestError]:
    spec = data.get("capabilities")
    if spec is None:
        return []
    from pflask.kernel import capabilities

    items = [spec] if isinstance(spec, str) else list(spec)
    errors = []
    for index, item in enumerate(items):
        path: tuple[Any, ...] = (
            ("capabilities",) if isinstance(spec, str) else ("capabilities", index)
        )
        # The longest name, `+CAP_DAC_READ_SEARCH`, is 20 characters: a longer
        # one is refused before parse() quotes it and looks for a near miss.
        long = next((name for name in item.split(",") if len(name.strip()) > 32), None)
        if long is not None:
            errors.append(error_at(data, path, f"{shown(long)} is not a capability name"))
            continue
        try:
            capabilities.parse(item)
        except ValueError as e:
            errors.append(error_at(data, path, str(e)))
    return errors


def _cgroup(data: LocDict) -> list[ManifestError]:
    names = data.get("cgroup", {}).get("controllers", [])
    if not names:
        return []
    from pflask.kernel.controllers import check_name

    errors = []
    for index, name in enumerate(names):
        try:
            check_name(name)
        except ValueError as e:
            errors.append(error_at(data, ("cgroup", "controllers", index), str(e)))
    return errors


def _idmap(data: LocDict) -> list[ManifestError]:
    errors = []
    for kind in ("uid", "gid"):
        ranges = data.get("idmap", {}).get(kind, [])
        for side in ("inside", "outside"):
            spans = sorted((r[side], r[side] + r["count"], i) for i, r in enumerate(ranges))
            for (_, end, _), (start, _, index) in itertools.pairwise(spans):
                if start < end:
                    errors.append(
                        error_at(
                            data,
                            ("idmap", kind, index),
                            f"{side} range overlaps another {kind} range",
                        )
                    )
        for index, r in enumerate(ranges):
            for side in ("inside", "outside"):
                if r[side] + r["count"] - 1 > ID_MAX:
                    errors.append(
                        error_at(
                            data,
                            ("idmap", kind, index),
                            f"{side} + count goes past {kind} {ID_MAX}",
                        )
                    )
        if ranges and not any(r["inside"] == 0 for r in ranges):
            errors.append(error_at(data, ("idmap", kind), f"no range maps {kind} 0 (root) inside"))
    return errors


def _network(data: LocDict) -> list[ManifestError]:
    import ipaddress

    errors = []
    interfaces = data.get("network", {}).get("interfaces", [])
    seen: dict[str, int] = {}
    host_seen: dict[str, int] = {}
    for index, iface in enumerate(interfaces):
        name = iface.get("name") or iface.get("device")
        if name in seen:
            error = error_at(data, ("network", "interfaces", index, "name"), "")
            other = entry_name(data, ("network", "interfaces", seen[name]), error.file)
            other = other.removeprefix("network.")
            message = f"interface name {name!r} is already used by {other}"
            errors.append(error_at(data, ("network", "interfaces", index, "name"), message))
        seen.setdefault(name, index)
        for key in ("name", "host", "device", "master"):
            # The schema's pattern counts characters; the kernel counts bytes.
            value = iface.get(key)
            if value is not None and (len(value.encode()) > LINK_NAME_MAX or value in (".", "..")):
                message = (
                    f"{shown(value)} is not a link name (1 to {LINK_NAME_MAX} bytes, not . or ..)"
                )
                errors.append(error_at(data, ("network", "interfaces", index, key), message))
        host_name = iface.get("host") or iface.get("device")
        if host_name is not None:
            if host_name in host_seen:
                here = error_at(data, ("network", "interfaces", index), "").file
                other = entry_name(data, ("network", "interfaces", host_seen[host_name]), here)
                other = other.removeprefix("network.")
                message = f"host link {host_name!r} is already used by {other}"
                errors.append(error_at(data, ("network", "interfaces", index), message))
            host_seen.setdefault(host_name, index)
        for key in ("address", "host_address", "gateway"):
            values = iface.get(key)
            if values is None:
                continue
            listed = [values] if isinstance(values, str) else list(values)
            for position, value in enumerate(listed):
                path: tuple[Any, ...] = ("network", "interfaces", index, key)
                if not isinstance(values, str):
                    path = (*path, position)
                try:
                    if key == "gateway":
                        ipaddress.ip_address(value)
                    else:
                        ipaddress.ip_interface(value)
                except ValueError:
                    what = "an IP address" if key == "gateway" else "an address/prefix"
                    errors.append(error_at(data, path, f"{shown(value)} is not {what}"))
    return errors


def _mounts(data: LocDict) -> list[ManifestError]:
    errors = []
    for index, mount in enumerate(data.get("mounts", [])):
        if mount["type"] == "overlay" and ("upper" in mount) != ("work" in mount):
            errors.append(
                error_at(
                    data,
                    ("mounts", index),
                    "overlay: upper and work go together (give both, or neither for a tmpfs upper)",
                )
            )
    return errors


def _root(data: LocDict) -> list[ManifestError]:
    root = data.get("root", {})
    if "image" in root:
        from pflask.load import imageref

        if "path" in root:
            return [error_at(data, ("root", "image"), "a root is a path or an image, not both")]
        try:
            imageref.parse(root["image"])
        except imageref.BadReference as e:
            return [error_at(data, ("root", "image"), str(e))]
        if "upper" in root and root.get("ephemeral"):
            return [error_at(data, ("root", "upper"), "keeps changes: it cannot go with ephemeral")]
    elif "upper" in root:
        return [error_at(data, ("root", "upper"), "keeps an image's changes: it needs root.image")]
    if root.get("ephemeral") and root.get("readonly"):
        return [error_at(data, ("root", "readonly"), "an ephemeral root cannot also be read-only")]
    if (root.get("ephemeral") or root.get("readonly")) and not ("path" in root or "image" in root):
        return [error_at(data, ("root",), "ephemeral and readonly need root.path or root.image")]
    return []


def _namespaces(data: LocDict) -> list[ManifestError]:
    ns = data.get("namespaces", {})
    errors = []
    if "hostname" in data and ns.get("uts") is False:
        errors.append(error_at(data, ("hostname",), "a hostname needs the UTS namespace"))
    if data.get("network", {}).get("interfaces") and ns.get("net") is False:
        errors.append(error_at(data, ("network",), "interfaces need the network namespace"))
    needs_mount_ns = data.get("mounts") or {"path", "image"} & set(data.get("root", {}))
    if needs_mount_ns and ns.get("mount") is False:
        errors.append(
            error_at(data, ("namespaces", "mount"), "mounts and a root need the mount namespace")
        )
    return errors


def _rlimits(data: LocDict) -> list[ManifestError]:
    errors = []
    for name, value in data.get("security", {}).get("rlimits", {}).items():
        if name == "nofile":
            numbers = value.values() if isinstance(value, dict) else (value,)
            if any(isinstance(n, int) and n > NOFILE_MAX for n in numbers):
                message = f"must be <= {NOFILE_MAX} (the kernel's largest fs.nr_open)"
                errors.append(error_at(data, ("security", "rlimits", name), message))
        if isinstance(value, dict):
            soft, hard = (-1 if v == "unlimited" else v for v in (value["soft"], value["hard"]))
            if hard != -1 and (soft == -1 or soft > hard):
                errors.append(
                    error_at(
                        data, ("security", "rlimits", name), "the soft limit exceeds the hard limit"
                    )
                )
    return errors


def _stop(data: LocDict) -> list[ManifestError]:
    name = data.get("stop", {}).get("signal")
    if name is None:
        return []
    from pflask.kernel.signals import signal_number

    try:
        signal_number(name)
    except ValueError as e:
        return [error_at(data, ("stop", "signal"), str(e))]
    return []


def _sizes(data: LocDict) -> list[ManifestError]:
    """Byte counts written with a suffix (`64M`) are checked once multiplied."""
    from pflask.load.manifest import parse_size

    places: list[tuple[tuple[Any, ...], Any]] = [
        (("cgroup", "memory"), data.get("cgroup", {}).get("memory")),
        (("root", "size"), data.get("root", {}).get("size")),
    ]
    for index, mount in enumerate(data.get("mounts", [])):
        if mount["type"] == "tmp":
            places.append((("mounts", index, "size"), mount.get("size")))
    errors = []
    for path, value in places:
        if value is None:
            continue
        size = parse_size(value)
        if size < 1:
            errors.append(error_at(data, path, "must be at least 1 byte"))
        elif size > BYTES_MAX:
            errors.append(error_at(data, path, f"must be at most 8 PiB ({BYTES_MAX} bytes)"))
    return errors


def _user(data: LocDict) -> list[ManifestError]:
    """Numeric ids in `user: "UID:GID"` have the range an integer `user` has."""
    user = data.get("user")
    if not isinstance(user, str):
        return []
    for part in user.split(":"):
        if part.isdigit() and int(part) > ID_MAX:
            return [error_at(data, ("user",), f"id {shown(part)} is above {ID_MAX}")]
    return []

"""`pflask export --oci DIR FILE`: a manifest written out as an OCI bundle.

For users whose engine wants bundles: DIR/config.json describes the container
`pflask run FILE` makes, so that runc (or pflask-oci) runs it with the same
hostname, mounts, environment, user, capabilities and limits.  It is made
from the compiled plan, not from the manifest: the plan holds every decision
(the default capability profile, masked paths, /dev, /run, the tmpfs
bounds), so what runs is what `pflask plan` shows.  The bundle's root.path
is the manifest's root directory itself (an absolute path; nothing is
copied).

What a bundle cannot carry is refused with a one-line error (exit 2): an
ephemeral root, overlay, aufs and loop mounts, network links made on the
host, a booting init's extras.  The default seccomp filter is pflask's
compiled BPF, which config.json cannot hold: a profile *file*
(`security.seccomp: FILE`) is embedded, the default one is left out and
said so on stderr.
"""

from __future__ import annotations

import os
import sys

from pflask.compile import plan as p
from pflask.errors import ManifestError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RLIMIT_INFINITY = 2**64 - 1
UNSUPPORTED = {
    "ephemeral_root": "an ephemeral root (root.ephemeral)",
    "overlay": "overlay and aufs mounts",
    "loop": "loop mounts",
    "veth": "network links (network.interfaces)",
    "move_link": "network links (network.interfaces)",
    "macvlan": "network links (network.interfaces)",
    "configure_link": "network links (network.interfaces)",
    "boot_id": "booting an init (its boot id)",
    "etc_hostname": "booting an init (its /etc/hostname)",
    "idmap_layers": "an image root under an id map that moves its owners (idmapped layers)",
}
OCI_NAMESPACES = {
    "pid": "pid",
    "net": "network",
    "mount": "mount",
    "ipc": "ipc",
    "uts": "uts",
    "user": "user",
    "cgroup": "cgroup",
}


def export(file: str, directory: str) -> str:
    """Write DIR/config.json for the manifest `file`; return its path."""
    from pflask.compile import context
    from pflask.pipeline import compile_file

    the_plan, _ = compile_file(file, (), context.read(None))
    config = to_config(the_plan, file)
    os.makedirs(directory, exist_ok=True)
    import json

    path = os.path.join(directory, "config.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return path


def _refuse(source: str, what: str) -> ManifestError:
    return ManifestError(f"an OCI bundle cannot say {what}: not exported", source)


def to_config(the_plan: p.Plan, source: str) -> dict[str, Any]:
    """config.json (runtime-spec 1.2) for a compiled plan."""
    if the_plan.root is None:
        raise ManifestError("an OCI bundle needs a root of its own: set root.path", source)
    namespaces: list[str] = []
    mounts: list[dict[str, Any]] = []
    linux: dict[str, Any] = {}
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "cwd": "/",
        "noNewPrivileges": False,
    }
    config: dict[str, Any] = {
        "ociVersion": "1.2.0",
        "process": process,
        "root": {"path": the_plan.root, "readonly": False},
        "mounts": mounts,
        "linux": linux,
    }
    for step in the_plan.steps:
        if step.kind in UNSUPPORTED:
            raise _refuse(source, UNSUPPORTED[step.kind])
        if isinstance(step, p.Unshare):
            namespaces += [n for n in step.namespaces if n not in namespaces]
        elif isinstance(step, (p.UidMap, p.GidMap)):
            key = "uidMappings" if isinstance(step, p.UidMap) else "gidMappings"
            linux[key] = [
                {"containerID": inside, "hostID": outside, "size": count}
                for inside, outside, count in step.ranges
            ]
        elif isinstance(step, p.Cgroup):
            linux["resources"] = _resources(step)
        elif isinstance(step, p.Propagation):
            linux["rootfsPropagation"] = "r" + step.mode
        elif isinstance(step, p.MountFs):
            flags = step.flags
            if step.target == "/dev":
                # pflask binds the host's nodes onto a nodev /dev; runc makes
                # them with mknod(2) there, and its devices cgroup is the policy.
                flags = tuple(f for f in flags if f != "nodev")
            options = [*flags, *(o for o in step.data.split(",") if o)]
            mounts.append(
                {
                    "destination": step.target,
                    "type": step.fstype,
                    "source": step.source or step.fstype,
                    "options": options,
                }
            )
        elif isinstance(step, p.Bind):
            if step.inside:
                raise _refuse(source, "a bind from inside the container")
            options = ["rbind" if step.recursive else "bind", *(["ro"] if step.readonly else [])]
            mounts.append(
                {
                    "destination": step.target,
                    "type": "bind",
                    "source": step.source,
                    "options": [*options, *step.flags],
                }
            )
        elif isinstance(step, p.Console):
            process["terminal"] = the_plan.terminal == "true"
        elif isinstance(step, p.MaskPaths):
            linux["maskedPaths"] = list(step.paths)
        elif isinstance(step, p.ReadonlyPaths):
            linux["readonlyPaths"] = list(step.paths)
        elif isinstance(step, p.RemountRoot):
            config["root"]["readonly"] = True
        elif isinstance(step, p.Hostname):
            config["hostname"] = step.name
        elif isinstance(step, p.Rlimits):
            process["rlimits"] = [
                {
                    "type": f"RLIMIT_{name.upper()}",
                    "soft": RLIMIT_INFINITY if soft < 0 else soft,
                    "hard": RLIMIT_INFINITY if hard < 0 else hard,
                }
                for name, soft, hard in step.limits
            ]
        elif isinstance(step, p.NoNewPrivs):
            process["noNewPrivileges"] = True
        elif isinstance(step, p.Seccomp):
            _seccomp(step, linux)
        elif isinstance(step, p.SwitchUser):
            _user(step.user, the_plan.root, process)
        elif isinstance(step, p.Capabilities):
            caps = [f"CAP_{name.upper()}" for name in step.keep]
            process["capabilities"] = {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                **({"inheritable": caps, "ambient": caps} if step.ambient else {}),
            }
        elif isinstance(step, p.Environment):
            process["env"] = _environment(step, process, the_plan.root)
        elif isinstance(step, p.Chdir):
            process["cwd"] = step.path
        elif isinstance(step, p.Exec):
            process["args"] = list(step.argv)
    linux["namespaces"] = [{"type": OCI_NAMESPACES[n]} for n in namespaces]
    return config


def _resources(step: p.Cgroup) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if step.memory is not None:
        resources["memory"] = {"limit": step.memory}
    pids = step.pids if step.pids is not None else step.default_pids
    if pids is not None:
        resources["pids"] = {"limit": pids}
    if step.cpu is not None:
        resources["cpu"] = {"quota": round(step.cpu * 100000), "period": 100000}
    # A group without a device policy under pflask relies on nodev mounts;
    # runc denies every device but those allowed, so allow the standard set.
    from pflask.compile.compiler import DEVICE_RULES

    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for rule in step.devices or DEVICE_RULES:
        kind, numbers, access = rule.split()
        major, minor = numbers.split(":")
        entry: dict[str, Any] = {"allow": True, "type": kind, "access": access}
        if major != "*":
            entry["major"] = int(major)
        if minor != "*":
            entry["minor"] = int(minor)
        rules.append(entry)
    resources["devices"] = rules
    return resources


def _seccomp(step: p.Seccomp, linux: dict[str, Any]) -> None:
    if step.profile in ("default", "config.json"):
        print(
            "pflask: warning: the default seccomp filter is compiled BPF, which config.json "
            "cannot hold: the bundle runs without it (set security.seccomp to a profile "
            "file to carry one)",
            file=sys.stderr,
        )
        return
    from pflask.load import loader

    profile = loader.read_json(step.profile)
    linux["seccomp"] = profile


def _user(spec: str, root: str, process: dict[str, Any]) -> None:
    """The numbers a bundle needs, looked up in the root's passwd and group as
    the container's SwitchUser step would."""
    from pflask.run import users

    user = users.lookup(spec, root)
    process["user"] = {
        "uid": user.uid,
        "gid": user.gid,
        "additionalGids": list(user.groups),  # as SwitchUser passes them to setgroups(2)
    }


def _environment(step: p.Environment, process: dict[str, Any], root: str) -> list[str]:
    """The command's environment as pflask would build it now (kept variables
    from this environment; USER, LOGNAME and HOME from the user)."""
    env: dict[str, str] = {}
    source = {} if step.clear else dict(os.environ)
    env.update(source)
    if step.clear:
        env.update({k: os.environ[k] for k in step.keep if k in os.environ})
    if step.user_vars:
        from pflask.run import users

        name, home = users.name_and_home(int(process["user"]["uid"]), root)
        env.update(USER=name, LOGNAME=name, HOME=home)
    env.update(step.set)
    return [f"{k}={v}" for k, v in env.items()]

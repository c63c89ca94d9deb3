"""The cgroup controllers Linux has (cgroups(7)), by name.

A kernel fact, not a host's: the manifest's validation (semantics.py) tells a
typo from a real controller with it, before anything looks at the host, and
cgroups.py uses the same names to tell a typo (ValueError) from a controller
this host does not have (SyscallError ENOENT).  Kept apart from cgroups.py,
which makes groups, so that validation does not import the code that runs.
"""

from __future__ import annotations

V1_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)
"""Controllers the kernel can bind to a v1 hierarchy."""
V2_CONTROLLERS = frozenset(
    {
        "cpu",
        "cpuset",
        "dmem",
        "hugetlb",
        "io",
        "memory",
        "misc",
        "pids",
        "rdma",
    }
)
"""Controllers a cgroup2 tree can offer in cgroup.controllers."""


def check_name(controller: str) -> None:
    """Raise ValueError, with a suggestion, for a name no kernel gives a controller.

    Checked against the controllers Linux has (cgroups(7)), without looking
    at the host (whether this host has it is `create`'s business), by the
    manifest's validation: `create` takes the names as checked.
    """
    known = set(V1_CONTROLLERS | V2_CONTROLLERS)
    if controller in known or (controller.startswith("name=") and len(controller) > 5):
        return
    import difflib

    close = difflib.get_close_matches(controller, sorted(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(known))
    raise ValueError(f"unknown cgroup controller {controller!r} ({hint})")

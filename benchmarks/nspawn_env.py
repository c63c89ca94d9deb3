"""A mount namespace in which systemd-nspawn runs on this kind of host."""

from __future__ import annotations

import os
import shutil
import sys

MARKER = "PFLASK_BENCH_PRIVATE_NS"


def private_nspawn_namespace() -> None:
    """systemd-nspawn wants /run/systemd/nspawn on a tmpfs, which a host whose
    /run is not a tmpfs (this VM) does not give it: re-run the calling
    benchmark in a private mount namespace that has one.  Every tool measured
    runs in it alike."""
    if os.environ.get(MARKER) or not shutil.which("systemd-nspawn"):
        return
    os.environ[MARKER] = "1"
    script = 'mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn && exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
    os.execvp("unshare", [*argv, sys.executable, *sys.argv])

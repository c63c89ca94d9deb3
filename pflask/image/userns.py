"""An ordinary user's layers are unpacked in a user namespace mapped as its
containers are by default (0 -> the user, 1..N -> its /etc/subuid and
/etc/subgid range), so a file the image gives to uid 1000 belongs to uid
1000 in the container too (on the host: the range's 1000th id).

Such files are not the user's own on the host, so removing them (prune, a
failed unpack) happens in the same namespace.  Without a range or shadow's
newuidmap/newgidmap, the caller falls back to unpacking as the user itself,
every file the user's (root's, inside the container).
"""

from __future__ import annotations

import os
import sys

from pflask.errors import SetupError
from pflask.kernel import libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def maps() -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]] | None:
    """The uid and gid maps an ordinary user's unpack uses, or None without
    a subordinate range or the helpers (the compiler's default, the same)."""
    from pflask.compile import context

    ctx = context.read(None)
    if ctx.uid == 0 or not ctx.id_helpers or not ctx.subuid or not ctx.subgid:
        return None
    (ustart, ucount), (gstart, gcount) = ctx.subuid[0], ctx.subgid[0]
    return ((0, ctx.uid, 1), (1, ustart, ucount)), ((0, ctx.gid, 1), (1, gstart, gcount))


def run(body: Callable[[], None], what: str) -> bool:
    """Run `body` in a child process, root in a new user namespace with the
    maps above; False (nothing run) when there are none.  A SetupError in
    the child is raised here with its message."""
    ids = maps()
    if ids is None:
        return False
    from pflask.run import idmap

    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    error_r, error_w = os.pipe2(os.O_CLOEXEC)
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        status = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            os.close(error_r)
            libc.unshare(libc.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            if os.read(go_r, 1) == b"g":
                body()
                status = 0
        except SetupError as e:
            os.write(error_w, str(e).encode(errors="replace")[:4096])
        except BaseException as e:
            os.write(error_w, f"{type(e).__name__}: {e}".encode(errors="replace")[:4096])
        sys.stderr.flush()
        os._exit(status)
    os.close(ready_w)
    os.close(go_r)
    os.close(error_w)
    try:
        if os.read(ready_r, 1) != b"u":
            raise SetupError(f"{what}: the unpacking process could not make a user namespace")
        try:
            idmap.write_map(pid, "uid", ids[0], helper=True)
            idmap.write_map(pid, "gid", ids[1], helper=True)
        except OSError as e:
            raise SetupError(f"{what}: {e}") from None
        os.write(go_w, b"g")
        os.close(go_w)
        go_w = -1
        with os.fdopen(error_r, "rb", closefd=False) as f:
            message = f.read().decode(errors="replace")
    finally:
        if go_w >= 0:
            os.close(go_w)
        os.close(ready_r)
        _, wait_status = os.waitpid(pid, 0)
        os.close(error_r)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        raise SetupError(message or f"{what}: the unpacking process failed")
    return True

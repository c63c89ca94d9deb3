"""Issue #20, "real use", the rest of items 8 and 9: what a booted or
ephemeral Debian root left wrong, through the installed CLI.

- item 9: in an ephemeral root an ordinary user's mapped root could not
  write /root (it belongs to the host's root, unmapped inside);
- item 8: mount points pflask made in a root that is not ephemeral stayed
  behind after the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import run_pflask
from helpers import shell as sh
from test_boot import debian_root  # noqa: F401  (the session's debootstrapped root)

from pflask import plan as p
from pflask.compiler import compile_plan
from pflask.context import Context
from pflask.manifest import from_data

pytestmark = pytest.mark.usefixtures("host_clean")

ROOT = Context(uid=0, gid=0)
USER = Context(uid=1000, gid=1000, subuid=((100000, 65536),), subgid=((200000, 65536),))


def _plan(data: dict[str, Any], ctx: Context) -> p.Plan:
    return compile_plan(from_data({"version": 1, "name": "c", **data}), ctx)


def _home_tmpfs(the_plan: p.Plan) -> list[p.MountFs]:
    return [s for s in the_plan.steps if isinstance(s, p.MountFs) and s.target == "/root"]


# ---------------------------------------------------------------- item 9: /root, ephemeral


def test_an_ephemeral_root_in_a_user_namespace_gets_a_home_of_its_own() -> None:
    ephemeral = {"root": {"path": "/os", "ephemeral": True}}
    [home] = _home_tmpfs(_plan(ephemeral, USER))
    assert home.fstype == "tmpfs" and "mode=700" in home.data
    assert {"nosuid", "nodev"} <= set(home.flags)
    sized = _plan({"root": {"path": "/os", "ephemeral": True, "size": "64M"}}, USER)
    assert "size=67108864" in _home_tmpfs(sized)[0].data  # bounded as the root's changes are
    # not when /root is the container's own: changes kept, or no user
    # namespace, or host root mapped as root
    assert not _home_tmpfs(_plan({"root": {"path": "/os"}}, USER))
    assert not _home_tmpfs(_plan(ephemeral, ROOT))
    identity = {**ephemeral, "uid_map": [[0, 0, 65536]], "gid_map": [[0, 0, 65536]]}
    assert not _home_tmpfs(_plan(identity, ROOT))


def test_the_mapped_root_writes_its_home_in_an_ephemeral_debian(
    shared_tmp: Path,
    debian_root: Path,  # noqa: F811
    test_user: Any,
) -> None:
    """`bash: /root/.bashrc: Permission denied` no more: an ordinary user's
    root inside has a writable home, and nothing of it reaches the root."""
    before = sorted(p.name for p in (debian_root / "root").iterdir())
    script = "cd && echo hi > .note && cat .note && stat -c '%U %a' /root && echo $HOME"
    result = run_pflask(
        f"--chroot={debian_root}",
        "--ephemeral",
        "--",
        *sh(script),
        user="pflask-test",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["hi", "root 700", "/root"]
    # an interactive bash reads its .bashrc without complaint
    bash = run_pflask(
        f"--chroot={debian_root}", "--ephemeral", "--", "bash", "-ic", "true", user="pflask-test"
    )
    assert "Permission denied" not in bash.stderr, bash.stderr
    assert sorted(p.name for p in (debian_root / "root").iterdir()) == before

"""Issue #20, "real use", items 4, 7 and 10: what `stop`, `exec` and `attach`
did that surprised people, through the installed CLI.

Item 7: `pflask stop` on a command that ignores SIGTERM says what it waits for
and when it escalates. Item 10: `pflask exec NAME` runs the user's login
shell; the classic `--detach` prints a name `--attach` finds; `--detach-keys`.
Item 4: `pflask exec` leaves nothing in the container's cgroups.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import pflask_cmd, run_pflask, wait_for
from test_state import detached as detached  # a fixture shared with that module
from test_state import entry
from test_terminal import manifest

pytestmark = pytest.mark.usefixtures("host_clean")


def unique(prefix: str = "ru") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def box(shared_tmp: Path, busybox_root: Path) -> Path:
    return manifest(shared_tmp, name=unique("box"), root={"path": str(busybox_root)})


# ---------------------------------------------------- item 7: stop says what it waits for


def test_stop_says_what_it_waits_for_and_when_it_escalates(box: Path) -> None:
    name = unique()
    script = "trap '' TERM; echo up; sleep 60 & wait; wait"
    proc = subprocess.Popen(
        [*pflask_cmd(), "run", str(box), "--name", name, "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    wait_for(lambda: (entry(name) or {}).get("pid"), timeout=5)
    stopper = subprocess.Popen(
        [*pflask_cmd(), "stop", name, "-t", "2"], stderr=subprocess.PIPE, text=True
    )
    assert stopper.stderr is not None
    started = time.monotonic()
    # The first line comes while it waits, long before the SIGKILL.
    first = stopper.stderr.readline()
    assert time.monotonic() - started < 1.5
    assert first == f"pflask: waiting up to 2 s for {name} to stop (SIGTERM sent); then SIGKILL\n"
    rest = stopper.stderr.read()
    assert stopper.wait(timeout=10) == 0
    assert 1.9 < time.monotonic() - started < 6
    assert rest == f"pflask: {name} did not stop within 2 s; sending SIGKILL\n"
    assert proc.wait(timeout=5) == 137


def test_stop_that_succeeds_at_once_is_quiet(box: Path, detached: Any) -> None:
    name = unique()
    assert detached(box, name, "sleep", "60").returncode == 0
    result = run_pflask("stop", name)
    assert result.returncode == 0
    assert result.stderr == ""
    assert entry(name) is None

"""Shared fixtures.  Helpers are in helpers.py (``from helpers import ...``).

Fixtures:
  test_user             (session) the unprivileged user, a helpers.UserInfo
  shared_tmp            (function) a fresh directory every user can traverse/read
  busybox_root          (session) a tiny busybox root filesystem; do not write to it
  writable_busybox_root (function) a private copy of it
  host_clean            (function) fails the test if the host state changed;
                        enable it for a whole module with
                        ``pytestmark = pytest.mark.usefixtures("host_clean")``
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import sys
import sysconfig
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest
from helpers import (
    SESSION_ENV,
    TEST_USER,
    HostState,
    UserInfo,
    copy_tree,
    make_busybox_root,
    pflask_cmd,
    remove_tree,
    run_as,
    user_info,
    wait_until_clean,
)

DEFAULT_TIMEOUT = 300
"""Per-test timeout (pytest-timeout) unless one is configured or marked."""
BOOT_TIMEOUT = 1800

os.environ.setdefault(SESSION_ENV, uuid.uuid4().hex)


def _check_installed_pflask() -> str | None:
    """The tests must exercise the pflask installed in this interpreter's
    environment (a wheel; or an editable install, for developers), never a
    checkout that happens to be on sys.path."""
    try:
        dist = importlib.metadata.distribution("pflask")
    except importlib.metadata.PackageNotFoundError:
        return (
            f"pflask is not installed for {sys.executable}: run scripts/setup, "
            "then /opt/pflask/bin/pytest"
        )
    editable = False
    direct = dist.read_text("direct_url.json")
    if direct:
        with contextlib.suppress(ValueError):
            editable = bool(json.loads(direct).get("dir_info", {}).get("editable"))
    import pflask

    where = Path(pflask.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    if not editable and not where.is_relative_to(site):
        return (
            f"imported pflask from {where}, not from the installed wheel in {site}: "
            "run /opt/pflask/bin/pytest (not `python -m pytest`) and keep tests/ "
            "without __init__.py"
        )
    if not Path(pflask_cmd()[0]).exists():
        return f"{pflask_cmd()[0]} is missing: run scripts/setup"
    return None


def pytest_configure(config: pytest.Config) -> None:
    problem = _check_installed_pflask()
    if problem:
        raise pytest.UsageError(problem)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A hung container must not eat CI's whole time budget.
    if not config.pluginmanager.hasplugin("timeout"):
        return
    if (
        config.getoption("timeout", None) is not None
        or os.environ.get("PYTEST_TIMEOUT")
        or config.getini("timeout")
    ):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            limit = BOOT_TIMEOUT if item.get_closest_marker("boot") else DEFAULT_TIMEOUT
            item.add_marker(pytest.mark.timeout(limit))


# --------------------------------------------------------------------------- user


@pytest.fixture(scope="session")
def test_user() -> UserInfo:
    """The unprivileged user (pflask-test) with its /etc/subuid, /etc/subgid
    ranges.  Fails (never skips) when scripts/setup has not been run."""
    try:
        info = user_info(TEST_USER)
    except KeyError:
        pytest.fail(f"user {TEST_USER} does not exist: run scripts/setup as root")
    if info.subuid is None or info.subgid is None:
        pytest.fail(f"{TEST_USER} has no /etc/subuid or /etc/subgid range: run scripts/setup")
    probe = run_as([sys.executable, "-c", "import pflask"], user=TEST_USER, cwd="/", timeout=60)
    if probe.returncode != 0:
        pytest.fail(
            f"{TEST_USER} cannot run {sys.executable} / import pflask "
            f"(is the venv readable by all users? run scripts/setup):\n{probe.stderr}"
        )
    return info


# --------------------------------------------------------------------------- temp dirs


@pytest.fixture(scope="session")
def _shared_session_dir() -> Iterator[Path]:
    # No "pflask" in the name: /tmp/*pflask* means a leak to HostState.
    path = Path(tempfile.mkdtemp(prefix="pft-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    if os.environ.get("PFLASK_TEST_KEEP_TMP"):
        return
    problem = remove_tree(path)
    if problem:
        warnings.warn(problem, stacklevel=1)


_counter = count(1)


def _safe_name(name: str) -> str:
    name = re.sub(r"pflask", "pf", name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


@pytest.fixture
def shared_tmp(_shared_session_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A new directory (0755, owned by root) that the test user can traverse
    and read, unlike tmp_path.  Kept until the end of the session (set
    PFLASK_TEST_KEEP_TMP=1 to keep it afterwards).  chown it to the test user
    when that user must write to it."""
    path = _shared_session_dir / f"t{next(_counter):04d}-{_safe_name(request.node.name)}"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def busybox_root(_shared_session_dir: Path) -> Path:
    """A busybox root filesystem (see helpers.make_busybox_root), built once
    per session and shared: use it read-only."""
    return make_busybox_root(_shared_session_dir / "busybox-root")


@pytest.fixture
def writable_busybox_root(busybox_root: Path, shared_tmp: Path) -> Path:
    """A private copy of busybox_root that the test may change."""
    return copy_tree(busybox_root, shared_tmp / "root")


# --------------------------------------------------------------------------- host state


@pytest.fixture
def host_clean() -> Iterator[HostState]:
    """Fail the test if it left anything on the host (mounts, links, netns,
    loop devices, pflask cgroups, /tmp or /run entries, processes), allowing
    ~2 s for asynchronous teardown.  Yields the state captured before."""
    before = HostState.capture()
    yield before
    diff = wait_until_clean(before)
    if diff:
        pytest.fail(f"the test left the host changed:\n{diff}", pytrace=False)

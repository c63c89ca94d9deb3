"""The Python API (pflask.api, pflask.run.zygote): many real containers from one process.

Every test starts real containers from this pytest process, as a program
using the API would, and checks the host is left as it was (the zygote is
ended first: it lives as long as its caller otherwise).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import HostState, run_as

import pflask
from pflask import api


@pytest.fixture
def clean(host_clean: HostState) -> Iterator[HostState]:
    """host_clean, with this process's zygote ended before the host is compared."""
    yield host_clean
    api.close()


@pytest.fixture
def box(busybox_root: Path, clean: HostState) -> pflask.Container:
    return pflask.Container({"version": 1, "root": {"path": str(busybox_root)}, "name": "apitest"})


# --- results --------------------------------------------------------------------------


def test_exit_status_and_output_are_the_commands(box: pflask.Container) -> None:
    result = box.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.status, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert box.run(["true"]).status == 0


def test_a_command_killed_by_a_signal_is_128_plus_n(box: pflask.Container) -> None:
    assert box.run(["sh", "-c", "kill -KILL $$"]).status == 128 + signal.SIGKILL


def test_input_is_fed_and_a_megabyte_each_way_does_not_deadlock(box: pflask.Container) -> None:
    data = os.urandom(1 << 20)
    result = box.run(["sh", "-c", "cat; cat /proc/self/cmdline >&2"], input=data)
    assert result.status == 0
    assert result.stdout == data
    assert result.stderr == b"cat\0/proc/self/cmdline\0"


def test_streams_can_be_files_devnull_or_inherited(box: pflask.Container, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_text("from a file\n")
    with open(source, "rb") as stdin, open(tmp_path / "out", "wb") as stdout:
        result = box.run(["cat"], stdin=stdin, stdout=stdout, stderr=pflask.DEVNULL)
    assert (result.status, result.stdout, result.stderr) == (0, None, None)
    assert (tmp_path / "out").read_text() == "from a file\n"
    read_end, write_end = os.pipe()
    try:
        assert box.run(["echo", "to an fd"], stdout=write_end).status == 0
        assert os.read(read_end, 100) == b"to an fd\n"
    finally:
        os.close(read_end)
        os.close(write_end)
    # The default stdin is /dev/null: `cat` ends at once.
    assert box.run(["cat"]).stdout == b""


def test_the_manifests_command_and_other_commands_from_one_container(
    busybox_root: Path, clean: HostState
) -> None:
    box = pflask.Container(
        {"version": 1, "root": {"path": str(busybox_root)}, "command": ["echo", "default"]}
    )
    assert box.run().stdout == b"default\n"
    assert box.run(["echo", "other"]).stdout == b"other\n"
    assert box.plan(["echo", "other"]) is box.plan(["echo", "other"])  # compiled once


def test_runs_are_named_apart_and_look_alike_inside(box: pflask.Container) -> None:
    first = box.run(["hostname"])
    second = box.run(["hostname"])
    assert first.stdout == second.stdout == b"apitest\n"
    assert first.name != second.name
    assert first.name.startswith("apitest-") and second.name.startswith("apitest-")
    assert box.run(["true"], name="chosen").name == "chosen"


def test_an_image_root_is_resolved_once_with_its_configs_defaults(
    busybox_root: Path, shared_tmp: Path, monkeypatch: pytest.MonkeyPatch, clean: HostState
) -> None:
    from imagetools import busybox_layer, directory, entry, layer, oci

    monkeypatch.setenv("PFLASK_STORE", str(shared_tmp / "store"))
    top = layer(directory("etc"), entry("etc/motd", b"from the image\n"))
    config = {"Env": ["GREETING=hello"], "WorkingDir": "/etc", "Cmd": ["cat", "motd"]}
    digest = oci(shared_tmp / "img", [busybox_layer(busybox_root), top], config=config)
    box = pflask.Container({"version": 1, "root": {"image": f"oci:{shared_tmp / 'img'}@{digest}"}})
    assert box.run().stdout == b"from the image\n"  # the image's Cmd, in its WorkingDir
    assert box.run(["sh", "-c", "echo $GREETING; pwd"]).stdout == b"hello\n/etc\n"


# --- what reaches the container -------------------------------------------------------


def test_the_container_gets_none_of_the_callers_fds_or_environment(
    box: pflask.Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PFLASK_API_SECRET", "hunter2")
    with open(tmp_path / "held", "w") as held:
        os.set_inheritable(held.fileno(), True)  # even an fd the caller lets children have
        result = box.run(["sh", "-c", "ls /proc/1/fd; env"])
    assert result.status == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert [line for line in lines if "=" not in line] == ["0", "1", "2"]  # PID 1's fds
    assert "PFLASK_API_SECRET=hunter2" not in lines


# --- errors ---------------------------------------------------------------------------


def test_a_bad_manifest_raises_manifest_error_naming_file_line_and_field(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("version: 1\nhostnam: x\n")
    with pytest.raises(pflask.ManifestError) as caught:
        pflask.Container.load(manifest)
    assert f"{manifest}:2:1: hostnam: unknown field" in str(caught.value)
    assert caught.value.status == 2
    with pytest.raises(pflask.ManifestError, match="bogus: unknown field"):
        pflask.Container({"version": 1, "bogus": True})


def test_a_failed_step_raises_start_error_naming_it(busybox_root: Path, clean: HostState) -> None:
    box = pflask.Container(
        {
            "version": 1,
            "root": {"path": str(busybox_root)},
            "mounts": [{"type": "tmp", "target": "/bin/busybox/below"}],
        }
    )
    with pytest.raises(pflask.StartError) as caught:
        box.run(["true"])
    error = caught.value
    assert error.status == 125
    assert error.step is not None
    assert str(error).startswith(f"step {error.step} (mount tmpfs on /bin/busybox/below")
    assert "ENOTDIR" in str(error)


def test_a_command_not_found_or_not_executable_is_127_or_126(box: pflask.Container) -> None:
    with pytest.raises(pflask.StartError) as missing:
        box.run(["/no/such/command"])
    assert missing.value.status == 127
    assert "/no/such/command: command not found" in str(missing.value)
    with pytest.raises(pflask.StartError) as not_executable:
        box.run(["/etc/passwd"])
    assert not_executable.value.status == 126


def test_a_name_in_use_is_a_start_error(box: pflask.Container) -> None:
    async def both() -> list[object]:
        return await asyncio.gather(
            box.run_async(["sleep", "1"], name="twice"),
            box.run_async(["sleep", "1"], name="twice"),
            return_exceptions=True,
        )

    results = asyncio.run(both())
    ran = [r for r in results if isinstance(r, pflask.Result)]
    refused = [r for r in results if isinstance(r, pflask.StartError)]
    assert len(ran) == len(refused) == 1
    assert ran[0].status == 0
    assert "a container named 'twice' is already running" in str(refused[0])


def test_a_detached_manifest_is_refused(busybox_root: Path) -> None:
    box = pflask.Container({"version": 1, "root": {"path": str(busybox_root)}, "detach": True})
    with pytest.raises(pflask.PflaskError, match="foreground"):
        box.run(["true"])


# --- timeouts, cancellation, interruption ---------------------------------------------


def test_a_timeout_stops_the_container_and_keeps_its_output(box: pflask.Container) -> None:
    started = time.monotonic()
    with pytest.raises(pflask.Timeout) as caught:
        box.run(["sh", "-c", "echo before; exec sleep 60"], timeout=0.5)
    assert time.monotonic() - started < 5
    assert caught.value.stdout == b"before\n"
    assert caught.value.result.status == 128 + signal.SIGTERM
    assert isinstance(caught.value, TimeoutError)


def test_a_command_ignoring_the_stop_signal_is_killed_after_the_stop_timeout(
    busybox_root: Path, clean: HostState
) -> None:
    box = pflask.Container(
        {
            "version": 1,
            "root": {"path": str(busybox_root)},
            "pid1": "command",  # PID 1 of its namespace: the kernel drops unhandled signals
            "stop": {"timeout": 0.5},
        }
    )
    started = time.monotonic()
    with pytest.raises(pflask.Timeout) as caught:
        box.run(["sleep", "60"], timeout=0.3)
    assert time.monotonic() - started < 5
    assert caught.value.result.status == 128 + signal.SIGKILL


def test_a_cancelled_run_stops_its_container(box: pflask.Container, clean: HostState) -> None:
    async def cancelled() -> None:
        await asyncio.wait_for(box.run_async(["sleep", "60"]), timeout=0.5)

    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(cancelled())
    # The container stops at once (its supervisor was told), with the zygote still up.
    deadline = time.monotonic() + 5
    while _sleepers() or _listed():
        assert time.monotonic() < deadline, (_sleepers(), _listed())
        time.sleep(0.05)
    assert time.monotonic() - started < 6
    assert api._zygote is not None and api._zygote.alive()


def _sleepers() -> list[str]:
    """This test's `sleep 60` processes (the cancelled container's command)."""
    return [p.cmdline for p in HostState.capture().processes if p.cmdline == "sleep 60"]


def _listed() -> str:
    """What `pflask ps` lists (nothing, once the container is gone)."""
    listing = subprocess.run(
        [str(Path(sys.executable).with_name("pflask")), "ps"], capture_output=True, text=True
    )
    return "\n".join(line for line in listing.stdout.splitlines()[1:] if "apitest" in line)


def test_every_host_step_says_what_it_imports() -> None:
    """The zygote imports each plan's host-step modules once (preload_host):
    a step missing from the table would be imported in every supervisor."""
    from pflask.run import supervisor

    assert set(supervisor.HOST_MODULES) == set(supervisor.HOST_STEPS)


# --- many at once ---------------------------------------------------------------------


def test_a_hundred_concurrent_runs_all_succeed(box: pflask.Container) -> None:
    async def many() -> list[pflask.Result]:
        return await asyncio.gather(*(box.run_async(["sh", "-c", f"echo {n}"]) for n in range(100)))

    results = asyncio.run(many())
    assert [r.status for r in results] == [0] * 100
    assert [r.stdout for r in results] == [f"{n}\n".encode() for n in range(100)]
    assert len({r.name for r in results}) == 100


def test_runs_from_threads_at_once(box: pflask.Container) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: box.run(["echo", str(n)]), range(32)))
    assert [r.stdout for r in results] == [f"{n}\n".encode() for n in range(32)]


# --- the caller's end -----------------------------------------------------------------


def _program(tmp_path: Path, root: Path, body: str) -> Path:
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import sys
            import pflask
            box = pflask.Container({{"version": 1, "root": {{"path": {str(root)!r}}}}})
            """
        )
        + textwrap.dedent(body)
    )
    script.chmod(0o644)
    return script


def test_a_killed_caller_leaves_nothing_behind(
    busybox_root: Path, tmp_path: Path, clean: HostState
) -> None:
    script = _program(
        tmp_path,
        busybox_root,
        """\
        print("running", flush=True)
        box.run(["sleep", "60"])
        """,
    )
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert caller.stdout is not None
        assert caller.stdout.readline() == b"running\n"
        time.sleep(0.5)  # the container runs
        caller.kill()
    finally:
        caller.wait()
    # The zygote sees its socket end and stops the container; everything goes.


def test_an_ordinary_user_runs_containers_through_the_api(
    busybox_root: Path, shared_tmp: Path, clean: HostState
) -> None:
    script = _program(
        shared_tmp,
        busybox_root,
        """\
        result = box.run(["sh", "-c", "id -u; cat /proc/self/uid_map"])
        print(result.status, result.stdout.decode().split())
        import asyncio
        async def some():
            return await asyncio.gather(*(box.run_async(["true"]) for _ in range(10)))
        print([r.status for r in asyncio.run(some())])
        """,
    )
    result = run_as([sys.executable, str(script)], user="pflask-test")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.startswith("0 ['0',"), first  # root inside, a user namespace
    assert second == str([0] * 10)


def test_two_containers_in_turn_and_a_new_zygote_after_close(
    busybox_root: Path, clean: HostState
) -> None:
    """The zygote keeps a supervisor forked ahead for the last plan it ran:
    another plan's run dismisses it; a closed zygote is started again."""
    first = pflask.Container({"version": 1, "root": {"path": str(busybox_root)}, "hostname": "a"})
    second = pflask.Container({"version": 1, "root": {"path": str(busybox_root)}, "hostname": "b"})
    seen = [box.run(["hostname"]).stdout for box in (first, second, first, first, second)]
    assert seen == [b"a\n", b"b\n", b"a\n", b"a\n", b"b\n"]
    api.close()
    assert first.run(["hostname"]).stdout == b"a\n"

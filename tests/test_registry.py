"""Registry images: Debian's docker-registry on 127.0.0.1 (a free port, its
own configuration and storage), an image pushed to it with skopeo and run by
digest with pflask, as root and as an ordinary user; and the message when
skopeo is missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TEST_USER, UserInfo, run_pflask
from imagetools import busybox_layer, entry, layer, manifest, oci

pytestmark = pytest.mark.usefixtures("host_clean")

REGISTRY = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A registry on 127.0.0.1 only; its address (HOST:PORT)."""
    if REGISTRY is None or SKOPEO is None:
        pytest.fail("docker-registry and skopeo are missing: run scripts/setup")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'storage'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    proc = subprocess.Popen(
        [REGISTRY, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the registry did not start: {proc.stderr}") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def push(where: Path, registry: str, name: str, busybox_root: Path, text: bytes) -> str:
    """An image pushed to the registry; its digest there."""
    oci(
        where / name,
        [busybox_layer(busybox_root), layer(entry("hello", text))],
        config={"Cmd": ["/bin/cat", "/hello"]},
    )
    subprocess.run(
        [
            SKOPEO or "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{where / name}:latest",
            f"docker://{registry}/{name}:latest",
        ],
        check=True,
    )
    inspected = subprocess.run(
        [
            SKOPEO or "skopeo",
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            f"docker://{registry}/{name}:latest",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return inspected.stdout.strip()


@pytest.mark.parametrize("who", ["root", "user"])
def test_an_image_from_a_registry_runs_by_digest(
    registry: str, shared_tmp: Path, busybox_root: Path, test_user: UserInfo, who: str
) -> None:
    digest = push(shared_tmp, registry, "box", busybox_root, b"from the registry\n")
    if who == "user":
        os.chown(shared_tmp, test_user.uid, test_user.gid)
        # A login session's runtime directory: without one skopeo looks for
        # credentials in /run/containers/UID, which root's podman made 0700.
        runtime = shared_tmp / "run"
        runtime.mkdir(mode=0o700)
        os.chown(runtime, test_user.uid, test_user.gid)
        env = {
            "XDG_DATA_HOME": str(shared_tmp / "data"),
            "XDG_CACHE_HOME": str(shared_tmp / "c"),
            "XDG_RUNTIME_DIR": str(runtime),
        }
    else:
        env = {"PFLASK_STORE": str(shared_tmp / "store")}
    env["PFLASK_REGISTRY_TLS_VERIFY"] = "0"
    user = TEST_USER if who == "user" else None
    path = manifest(shared_tmp, f"docker://{registry}/box:latest@{digest}")
    result = run_pflask("run", path, env=env, user=user, timeout=60)
    assert (result.returncode, result.stdout) == (0, "from the registry\n"), result.stderr
    # Pinned and stored: the next compile needs no registry at all.
    result = run_pflask("run", "--no-cache", path, env=env, user=user, timeout=60)
    assert "fetching" not in result.stderr
    assert (result.returncode, result.stdout) == (0, "from the registry\n"), result.stderr


def test_a_registry_pin_to_another_image_is_refused(
    registry: str, shared_tmp: Path, busybox_root: Path
) -> None:
    push(shared_tmp, registry, "box", busybox_root, b"one\n")
    wrong = "sha256:" + "0" * 64
    path = manifest(shared_tmp, f"docker://{registry}/box@{wrong}")
    env = {"PFLASK_STORE": str(shared_tmp / "store"), "PFLASK_REGISTRY_TLS_VERIFY": "0"}
    result = run_pflask("run", path, env=env, timeout=60)
    assert result.returncode == 125
    assert f"docker://{registry}/box@{wrong}: skopeo copy failed" in result.stderr


def test_without_skopeo_the_message_says_so(shared_tmp: Path) -> None:
    path = manifest(shared_tmp, "docker://127.0.0.1:1/box:latest")
    env = {"PFLASK_STORE": str(shared_tmp / "store"), "PATH": "/nonexistent"}
    result = run_pflask("run", path, env=env)
    assert result.returncode == 125
    assert "needs skopeo, which is not installed (Debian package skopeo)" in result.stderr

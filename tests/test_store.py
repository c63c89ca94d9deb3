"""The image store: trusted only while it is its owner's alone, unpacks that
a killed pflask left are swept and never used, and `pflask image` and
`pflask lock` manage it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_pflask
from imagetools import busybox_layer, entry, layer, manifest, oci

from pflask.errors import SetupError
from pflask.image import store
from pflask.load import imageref

pytestmark = pytest.mark.usefixtures("host_clean")

SMALL = layer(entry("hello", b"hello\n"))


def test_root_refuses_a_store_others_can_write(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store.Store(str(path))
    os.chmod(path / "layers", 0o777)
    with pytest.raises(SetupError, match=r"layers is writable by others \(mode 777\): refused"):
        store.Store(str(path))
    os.chmod(path / "layers", 0o700)
    os.chown(path / "images", 1000, 1000)
    with pytest.raises(SetupError, match="belongs to uid 1000, not 0: refused"):
        store.Store(str(path))


def test_root_refuses_a_store_below_a_directory_others_can_write(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)  # not sticky: anyone could rename the store away
    with pytest.raises(SetupError, match="shared is writable by others"):
        store.Store(str(parent / "store"))


def test_a_symlink_in_the_stores_place_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "layers").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SetupError, match="is not a directory"):
        store.Store(str(tmp_path / "store"))


def test_a_layer_directory_is_trusted_only_if_the_stores_own(tmp_path: Path) -> None:
    s = store.Store(str(tmp_path / "store"))
    diff_id = "sha256:" + "1" * 64
    os.makedirs(os.path.join(s.layer_dir(diff_id), "root"))
    os.chown(s.layer_dir(diff_id), 1000, 1000)
    with pytest.raises(SetupError, match="belongs to uid 1000"):
        s.has_layer(diff_id)


def test_a_killed_unpack_leaves_nothing_that_is_used(tmp_path: Path) -> None:
    """An unpack killed halfway stays in tmp/, never in layers/, and the
    next unpack sweeps it."""
    oci(tmp_path / "img", [SMALL])
    stale = tmp_path / "store" / "tmp"
    stale.mkdir(parents=True)
    os.chmod(tmp_path / "store", 0o700)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    half = stale / f"{dead.stdout.strip()}.abcdef"
    (half / "root").mkdir(parents=True)
    (half / "root" / "half-written").write_text("x")
    os.environ["PFLASK_STORE"] = str(tmp_path / "store")
    try:
        resolved = store.resolve(imageref.parse(f"oci:{tmp_path}/img"), progress=False)
    finally:
        del os.environ["PFLASK_STORE"]
    assert os.listdir(stale) == []
    assert os.listdir(resolved.layers[0]) == ["hello"]


def test_image_import_ls_inspect_rm_prune(shared_tmp: Path, busybox_root: Path) -> None:
    env = {"PFLASK_STORE": str(shared_tmp / "store")}
    digest = oci(shared_tmp / "img", [busybox_layer(busybox_root), SMALL])

    def pflask(*args: str) -> str:
        result = run_pflask("image", *args, env=env, cwd=shared_tmp)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert pflask("import", "oci:img").strip() == digest
    listing = pflask("ls")
    assert digest[:19] in listing and f"oci:{shared_tmp}/img" in listing
    assert f'"digest": "{digest}"' in pflask("inspect", digest[7:19])
    assert f'"digest": "{digest}"' in pflask("inspect", "oci:img")
    assert pflask("prune").startswith("removed 0 layers")
    assert "removed" in pflask("rm", "oci:img")
    assert pflask("ls").splitlines()[1:] == []
    assert pflask("prune").startswith("removed 2 layers")
    assert os.listdir(shared_tmp / "store" / "layers") == []
    missing = run_pflask("image", "inspect", "oci:img", env=env, cwd=shared_tmp)
    assert missing.returncode == 2 and "no image 'oci:img'" in missing.stderr


def test_lock_pins_the_image_in_the_manifests_own_text(
    shared_tmp: Path, busybox_root: Path
) -> None:
    env = {"PFLASK_STORE": str(shared_tmp / "store")}
    digest = oci(shared_tmp / "img", [busybox_layer(busybox_root), SMALL])
    path = manifest(shared_tmp, "oci:./img:latest", command=["/bin/cat", "/hello"])
    path.write_text("# the example\n" + path.read_text())
    before = path.read_text()
    result = run_pflask("lock", path, env=env)
    assert result.returncode == 0, result.stderr
    after = path.read_text()
    assert after == before.replace("oci:./img:latest", f"oci:./img:latest@{digest}")
    # The tag moves: the locked manifest still runs the image it was locked to.
    oci(shared_tmp / "img", [busybox_layer(busybox_root), layer(entry("hello", b"moved\n"))])
    run = run_pflask("run", path, env=env)
    assert (run.returncode, run.stdout) == (0, "hello\n"), run.stderr
    again = run_pflask("lock", path, env=env)
    assert again.returncode == 0
    assert path.read_text() != after  # re-locking takes the tag's new image

"""Loop mounts: images built here (ext4, squashfs, iso9660, vfat), attached through
/dev/loop-control with autoclear, probed, read-only, and freed afterwards.

Loop mounts need root: the kernel does not mount block devices from a user
namespace, and pflask refuses them there (exit 2).  Every test checks the host
afterwards (host_clean): no mount, no loop device still attached to an image.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import describe, pflask_cmd, run_pflask
from helpers import shell as sh

from pflask.run import loop

pytestmark = pytest.mark.usefixtures("host_clean")


def manifest(directory: Path, **fields: Any) -> Path:
    path = directory / "box.yaml"
    fields.setdefault("name", f"loop{os.getpid()}-{directory.name[1:5]}")
    path.write_text(yaml.safe_dump({"version": 1, **fields}))
    return path


def kernel_has(fstype: str) -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == fstype for line in f if line.strip())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def content(shared_tmp: Path) -> Path:
    directory = shared_tmp / "content"
    (directory / "sub").mkdir(parents=True)
    (directory / "hello").write_text("hello from the image\n")
    (directory / "sub/deep").write_text("deep\n")
    return directory


def ext4_image(content: Path, path: Path) -> Path:
    subprocess.run(["truncate", "-s", "8M", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(path)], check=True)
    return path


def squashfs_image(content: Path, path: Path) -> Path:
    subprocess.run(
        ["mksquashfs", str(content), str(path), "-quiet", "-noappend", "-no-progress"],
        check=True,
        capture_output=True,
    )
    return path


def iso_image(content: Path, path: Path) -> Path:
    subprocess.run(["genisoimage", "-quiet", "-R", "-o", str(path), str(content)], check=True)
    return path


def vfat_image(content: Path, path: Path) -> Path:
    subprocess.run(["truncate", "-s", "2M", str(path)], check=True)
    subprocess.run(["mkfs.vfat", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture
def ext4(content: Path, shared_tmp: Path) -> Path:
    return ext4_image(content, shared_tmp / "disk.img")


def debugfs_cat(image: Path, name: str) -> str:
    result = subprocess.run(
        ["debugfs", "-R", f"cat {name}", str(image)], capture_output=True, text=True, check=True
    )
    return result.stdout


def run_ok(*args: Any) -> subprocess.CompletedProcess[str]:
    result = run_pflask(*args)
    assert result.returncode == 0, describe(result)
    return result


def test_ext4_image_is_mounted_read_write(shared_tmp: Path, ext4: Path, busybox_root: Path) -> None:
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[{"type": "loop", "source": str(ext4), "target": "/var"}],
    )
    result = run_ok(
        "run",
        path,
        "--",
        *sh("cat /var/hello /var/sub/deep; echo written > /var/new; grep ' /var ' /proc/mounts"),
    )
    lines = result.stdout.splitlines()
    assert lines[:2] == ["hello from the image", "deep"]
    device, _, fstype, options = lines[2].split()[:4]
    assert device.startswith("/dev/loop") and fstype == "ext4"
    assert options.split(",")[0] == "rw"
    assert debugfs_cat(ext4, "/new") == "written\n"  # the write went into the image


@pytest.mark.parametrize("how", ["manifest", "classic"])
def test_read_only_image_cannot_be_written(
    shared_tmp: Path, ext4: Path, busybox_root: Path, how: str
) -> None:
    before = digest(ext4)
    script = (
        "cat /var/hello; touch /var/x 2>&1; dev=$(grep ' /var ' /proc/mounts | cut -d' ' -f1); "
        "cat /sys/block/${dev#/dev/}/ro"
    )
    if how == "manifest":
        path = manifest(
            shared_tmp,
            root={"path": str(busybox_root)},
            mounts=[{"type": "loop", "source": str(ext4), "target": "/var", "readonly": True}],
        )
        result = run_ok("run", path, "--", *sh(script))
    else:
        result = run_ok("-r", busybox_root, "-m", f"loop-ro:{ext4}:/var:ext4", "--", *sh(script))
    assert result.stdout.splitlines() == [
        "hello from the image",
        "touch: /var/x: Read-only file system",
        "1",  # the loop device itself is read-only
    ]
    assert digest(ext4) == before


@pytest.mark.parametrize("fstype", ["squashfs", "auto"])
def test_squashfs_image_with_the_classic_spec(
    content: Path, shared_tmp: Path, busybox_root: Path, fstype: str
) -> None:
    image = squashfs_image(content, shared_tmp / "image.sqfs")
    spec = f"loop:{image}:/var" + ("" if fstype == "auto" else f":{fstype}")
    result = run_ok(
        "-r", busybox_root, "-m", spec, "--", *sh("cat /var/sub/deep; touch /var/x 2>&1; true")
    )
    assert (
        result.stdout == "deep\ntouch: /var/x: Read-only file system\n"
    )  # squashfs is read-only by nature


def test_probe_recognises_the_images_built_here(content: Path, shared_tmp: Path) -> None:
    assert loop.probe(str(ext4_image(content, shared_tmp / "a.img"))) == "ext4"
    assert loop.probe(str(squashfs_image(content, shared_tmp / "b.sqfs"))) == "squashfs"
    assert loop.probe(str(iso_image(content, shared_tmp / "c.iso"))) == "iso9660"
    assert loop.probe(str(vfat_image(content, shared_tmp / "d.img"))) == "vfat"
    blank = shared_tmp / "blank.img"
    blank.write_bytes(b"\0" * 70000)
    assert loop.probe(str(blank)) is None


@pytest.mark.parametrize("fstype", ["iso9660", "vfat"])
def test_iso9660_and_vfat_images(
    content: Path, shared_tmp: Path, busybox_root: Path, fstype: str
) -> None:
    # This machine's kernel lacks iso9660 and vfat (see /proc/filesystems): the
    # test asserts a clear error and a freed device there, and the contents
    # where the kernel has them.
    if fstype == "iso9660":
        image = iso_image(content, shared_tmp / "image.iso")
    else:
        image = vfat_image(content, shared_tmp / "image.img")
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[{"type": "loop", "source": str(image), "target": "/var", "readonly": True}],
    )
    result = run_pflask("run", path, "--", *sh("ls /var"))
    if kernel_has(fstype):
        assert result.returncode == 0, describe(result)
        if fstype == "iso9660":
            assert result.stdout.split() == ["hello", "sub"]
    else:
        assert result.returncode == 125
        assert f"as {fstype}: this kernel has no {fstype} filesystem" in result.stderr
        assert "ENODEV" in result.stderr


def test_an_unknown_image_is_tried_with_each_kernel_filesystem(
    shared_tmp: Path, busybox_root: Path
) -> None:
    image = shared_tmp / "noise.img"
    image.write_bytes(bytes(range(256)) * 4096)
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[{"type": "loop", "source": str(image), "target": "/var"}],
    )
    result = run_pflask("run", path, "--", "true")
    assert result.returncode == 125
    assert "no filesystem this kernel knows recognises the image (tried " in result.stderr
    assert "ext4" in result.stderr.split("(tried ")[1]


def test_probing_falls_back_to_the_kernels_filesystems(
    ext4: Path, shared_tmp: Path, busybox_root: Path
) -> None:
    # An image whose magic pflask does not know: the table of magics is emptied
    # in a separate process, which then mounts for real in its own namespace.
    target = shared_tmp / "mnt"
    target.mkdir()
    script = f"""
import os
from pflask.kernel import libc
from pflask.run import loop, mounts
loop.MAGIC = ()
libc.unshare(libc.CLONE_NEWNS)
mounts.make_private("private")
root = mounts.Root({str(shared_tmp)!r})
loop.mount_image(root, {str(ext4)!r}, "/mnt", "auto", True, "", ())
print(open({str(target / "hello")!r}).read(), end="")
with open("/proc/self/mountinfo") as f:
    print([line.split(" - ")[1].split()[0] for line in f if " {target} " in line][0])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello from the image", "ext4"]


def test_a_wrong_fstype_fails_and_frees_the_device(
    shared_tmp: Path, ext4: Path, busybox_root: Path
) -> None:
    result = run_pflask("-r", busybox_root, "-m", f"loop:{ext4}:/var:squashfs", "--", "true")
    assert result.returncode == 125
    assert "as squashfs" in result.stderr and "mount(2)" in result.stderr


def test_a_read_only_image_file_needs_loop_ro(
    shared_tmp: Path, ext4: Path, busybox_root: Path
) -> None:
    # root ignores file permissions, so the read-only file is on a read-only bind
    ro_dir = shared_tmp / "ro"
    ro_dir.mkdir()
    script = (
        f"mount --bind {shared_tmp} {ro_dir} && mount -o remount,bind,ro {ro_dir} && "
        f"exec {' '.join(pflask_cmd())} -r {busybox_root} -m loop:{ro_dir}/disk.img:/var "
        f"-- true"
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 125, result.stderr
    assert "EROFS" in result.stderr and "loop-ro:" in result.stderr


@pytest.mark.parametrize("how", ["manifest", "classic"])
def test_an_ordinary_user_gets_a_clear_error(
    shared_tmp: Path, ext4: Path, busybox_root: Path, how: str, test_user: Any
) -> None:
    if how == "manifest":
        path = manifest(
            shared_tmp,
            root={"path": str(busybox_root)},
            mounts=[{"type": "loop", "source": str(ext4), "target": "/var"}],
        )
        result = run_pflask("run", path, "--", "true", user="pflask-test")
    else:
        result = run_pflask("-r", busybox_root, "-m", f"loop:{ext4}:/var", user="pflask-test")
    assert result.returncode == 2
    assert "mounts[0]: loop mounts need root without a user namespace" in result.stderr


def test_the_target_is_resolved_inside_the_root(
    shared_tmp: Path, ext4: Path, writable_busybox_root: Path
) -> None:
    host = shared_tmp / "host"
    host.mkdir()
    (writable_busybox_root / "data").symlink_to(host)
    result = run_ok(
        "-r",
        writable_busybox_root,
        "-m",
        f"loop-ro:{ext4}:/data/disk",
        "--",
        *sh("cat /data/disk/hello"),
    )
    assert result.stdout == "hello from the image\n"
    assert (writable_busybox_root / str(host).lstrip("/") / "disk").is_dir()
    assert list(host.iterdir()) == []


def test_two_images_and_the_same_image_twice_read_only(
    content: Path, shared_tmp: Path, ext4: Path, busybox_root: Path
) -> None:
    image = squashfs_image(content, shared_tmp / "image.sqfs")
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[
            {"type": "loop", "source": str(ext4), "target": "/var", "readonly": True},
            {"type": "loop", "source": str(ext4), "target": "/home", "readonly": True},
            {"type": "loop", "source": str(image), "target": "/root"},
        ],
    )
    result = run_ok("run", path, "--", *sh("cat /var/hello /home/hello /root/hello"))
    assert result.stdout == "hello from the image\n" * 3

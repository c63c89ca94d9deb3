"""Id maps (pflask.run.idmap) as root with an image root: root's store keeps
the layers' own ids, so under a map that moves them (0 -> 100000) the
container's first process mounts the store idmapped with that map before its
user namespace exists (plan.IdmapLayers).  The files show their image owners
inside, writes land in the tmpfs upper, and neither the host's mount table
nor the store's layers change; a filesystem the kernel cannot idmap is a
setup error naming the step and mount_setattr(2)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import describe, in_child, ok, pflask_cmd, read_mounts, run_pflask
from imagetools import busybox_layer, directory, entry, layer, manifest, oci

from pflask.kernel import libc
from pflask.run import idmap

pytestmark = pytest.mark.usefixtures("host_clean")

MOVED = [{"inside": 0, "outside": 100000, "count": 65536}]
SHOW = (
    "stat -c %u:%g /bin/busybox /home/alice/notes; cat /proc/self/uid_map /proc/self/gid_map; "
    "cat /home/alice/notes; echo hi > /new; stat -c %u:%g /new; rm /bin/true"
)


def owned_image(where: Path, busybox_root: Path) -> None:
    owned = layer(
        directory("home/alice", uid=1000, gid=1000, mode=0o700),
        entry("home/alice/notes", b"mine\n", uid=1000, gid=1000, mode=0o600),
    )
    oci(where / "img", [busybox_layer(busybox_root), owned])


def run(path: Path, store: Path) -> subprocess.CompletedProcess[str]:
    return run_pflask("run", path, env={"PFLASK_STORE": str(store)}, timeout=60)


def test_root_runs_an_image_under_a_map_that_moves_its_ids(
    shared_tmp: Path, busybox_root: Path
) -> None:
    owned_image(shared_tmp, busybox_root)
    store = shared_tmp / "store"
    path = manifest(
        shared_tmp, "oci:./img", idmap={"uid": MOVED, "gid": MOVED}, command=["/bin/sh", "-c", SHOW]
    )
    result = run(path, store)
    assert result.returncode == 0, describe(result)
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines == [
        ["0:0"],  # the image's root, root inside
        ["1000:1000"],  # the image's uid 1000, 1000 inside
        ["0", "100000", "65536"],
        ["0", "100000", "65536"],
        ["mine"],  # alice's 0600 file, read by the container's root (CAP_DAC_OVERRIDE)
        ["0:0"],  # written: on the tmpfs upper, the container's root's
    ]
    # The store's layers on the host are as unpacked: owners, no new file,
    # nothing removed.
    notes = next(store.glob("layers/*/root/home/alice/notes"))
    assert (notes.stat().st_uid, notes.stat().st_gid) == (1000, 1000)
    busybox = next(store.glob("layers/*/root/bin/busybox"))
    assert (busybox.stat().st_uid, busybox.stat().st_gid) == (0, 0)
    assert next(store.glob("layers/*/root/bin/true"), None) is not None
    assert not list(store.glob("layers/*/root/new"))

    # namespaces.user: true maps root's default range: the same, from the cache too.
    path = manifest(
        shared_tmp,
        "oci:./img",
        namespaces={"user": True},
        command=["/bin/sh", "-c", "stat -c %u:%g /bin/busybox /home/alice/notes"],
    )
    for _ in range(2):
        result = run(path, store)
        assert (result.returncode, result.stdout) == (0, "0:0\n1000:1000\n"), describe(result)


def test_whiteouts_and_opaque_directories_hold_through_the_idmapped_store(
    shared_tmp: Path, busybox_root: Path
) -> None:
    """The layers' whiteouts (0/0 character devices) and opaque directories
    (user.overlay.opaque, read with userxattr) work as without a map."""
    below = layer(
        directory("opt/a"),
        entry("opt/a/old", b"old\n"),
        entry("opt/gone", b"gone\n"),
    )
    above = layer(
        directory("opt/a"),
        entry("opt/a/.wh..wh..opq", b""),
        entry("opt/a/new", b"new\n"),
        entry("opt/.wh.gone", b""),
    )
    oci(shared_tmp / "img", [busybox_layer(busybox_root), below, above])
    path = manifest(
        shared_tmp,
        "oci:./img",
        idmap={"uid": MOVED, "gid": MOVED},
        command=["/bin/sh", "-c", "ls /opt /opt/a; stat -c %u:%g /opt/a/new"],
    )
    result = run(path, shared_tmp / "store")
    shown = ["/opt:", "a", "/opt/a:", "new", "0:0"]
    assert (result.returncode, result.stdout.split()) == (0, shown), describe(result)


def test_the_idmapped_store_never_shows_on_the_host(shared_tmp: Path, busybox_root: Path) -> None:
    """While the container runs, the host's mount table has no mount of the
    store (the idmapped clone lives in the container's namespaces only), even
    with the store on a shared mount, whose peers would receive it."""
    owned_image(shared_tmp, busybox_root)
    shared = shared_tmp / "shared"
    store = shared / "store"
    store.mkdir(parents=True, mode=0o700)
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        _watch_the_host_while_it_runs(shared_tmp, store)
    finally:
        subprocess.run(["umount", str(shared)], check=True)


def _watch_the_host_while_it_runs(shared_tmp: Path, store: Path) -> None:
    script = "stat -c %u:%g /home/alice/notes; read line"
    path = manifest(
        shared_tmp,
        "oci:./img",
        idmap={"uid": MOVED, "gid": MOVED},
        command=["/bin/sh", "-c", script],
    )
    running = subprocess.Popen(
        [*pflask_cmd(), "run", str(path)],
        env={**os.environ, "PFLASK_STORE": str(store)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert running.stdout is not None and running.stdin is not None
        assert running.stdout.readline() == "1000:1000\n"
        on_host = [m for m in read_mounts() if str(store) in m.target]
        assert on_host == []
        running.stdin.write("done\n")
        running.stdin.close()
        assert running.wait(timeout=30) == 0
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()


def test_a_user_namespace_fd_mapped_as_asked() -> None:
    """idmap.userns_fd: a namespace with the maps given, whose maker is reaped
    (host_clean: no process left)."""

    def body(out: int) -> None:
        fd = idmap.userns_fd(((0, 100000, 65536),), ((0, 200000, 10), (10, 300000, 1)))
        libc.setns(fd, libc.CLONE_NEWUSER, "the map's namespace")
        for kind in ("uid", "gid"):
            with open(f"/proc/self/{kind}_map") as f:
                os.write(out, " ".join(f.read().split()).encode() + b"\n")

    assert ok(in_child(body)) == "0 100000 65536\n0 200000 10 10 300000 1\n"


def test_a_store_the_kernel_cannot_idmap_is_a_setup_error(
    shared_tmp: Path, busybox_root: Path
) -> None:
    """ramfs has no idmapped mounts: mount_setattr(2) says EINVAL, reported as
    step 1's failure (exit 125, one line), with nothing left mounted."""
    owned_image(shared_tmp, busybox_root)
    ram = shared_tmp / "ram"
    ram.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "-o", "mode=700", "ramfs", str(ram)], check=True)
    try:
        path = manifest(
            shared_tmp, "oci:./img", idmap={"uid": MOVED, "gid": MOVED}, command=["/bin/true"]
        )
        result = run(path, ram / "store")
    finally:
        subprocess.run(["umount", str(ram)], check=True)
    assert (result.returncode, result.stdout) == (125, ""), describe(result)
    error = [line for line in result.stderr.splitlines() if not line.startswith("pflask: unpack")]
    assert len(error) == 1, result.stderr
    assert error[0].startswith("pflask: step 1 (idmapped mount of the image store "), error
    assert "mount_setattr(2)" in error[0] and "EINVAL" in error[0], error


def test_root_upper_under_a_map_that_moves_ids_is_refused(
    shared_tmp: Path, busybox_root: Path
) -> None:
    """The upper directory is the host's, not idmapped: its files would have
    the wrong owners, so the manifest is refused (exit 2, one line)."""
    owned_image(shared_tmp, busybox_root)
    path = manifest(
        shared_tmp,
        "oci:./img",
        root={"upper": str(shared_tmp / "keep")},
        idmap={"uid": MOVED, "gid": MOVED},
        command=["/bin/true"],
    )
    result = run(path, shared_tmp / "store")
    assert (result.returncode, result.stdout) == (2, ""), describe(result)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"pflask: {path}:")
    assert ": root.upper: root.image: " in result.stderr and "0->100000 (65536)" in result.stderr
    assert not (shared_tmp / "keep").exists()

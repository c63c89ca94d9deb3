"""Containers from images, as root and as an ordinary user: the root is an
overlay of the image's layers, its config gives defaults the manifest
overrides, a re-tagged image is not served from a stale cached plan, and a
tampered layer is refused before anything runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import TEST_USER, UserInfo, describe, run_pflask
from imagetools import blob, busybox_layer, directory, entry, layer, manifest, oci, symlink

pytestmark = pytest.mark.usefixtures("host_clean")

CONFIG = {
    "Env": ["GREETING=from-the-image", "PATH=/bin"],
    "WorkingDir": "/etc",
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ['echo "$GREETING in $(pwd) as $(id -u)"; cat /etc/motd'],
}


def top_layer(text: str = "motd of layer 2\n") -> bytes:
    return layer(
        directory("etc"),
        entry("etc/motd", text.encode()),
        entry("etc/.wh.hostname", b""),
    )


def setup_image(where: Path, busybox_root: Path, **kw: object) -> str:
    return oci(where / "img", [busybox_layer(busybox_root), top_layer()], config=CONFIG, **kw)


def env_for(where: Path, user: UserInfo | None) -> dict[str, str | None]:
    """A private store (root) or data home (the user) under `where`."""
    if user is None:
        return {"PFLASK_STORE": str(where / "store")}
    return {"XDG_DATA_HOME": str(where / "data"), "XDG_CACHE_HOME": str(where / "cache")}


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest, test_user: UserInfo, shared_tmp: Path) -> UserInfo | None:
    if request.param == "user":
        os.chown(shared_tmp, test_user.uid, test_user.gid)
        return test_user
    return None


def run(path: Path, who: UserInfo | None, where: Path, *args: str) -> tuple[int, str, str]:
    result = run_pflask(
        "run", path, *args, user=TEST_USER if who else None, env=env_for(where, who), timeout=60
    )
    return result.returncode, result.stdout, result.stderr


def test_the_image_runs_with_its_configs_defaults(
    shared_tmp: Path, busybox_root: Path, who: UserInfo | None
) -> None:
    setup_image(shared_tmp, busybox_root)
    path = manifest(shared_tmp, "oci:./img:latest")
    status, out, err = run(path, who, shared_tmp)
    assert status == 0, err
    assert out == "from-the-image in /etc as 0\nmotd of layer 2\n"
    # The layers unpacked once: the second start unpacks nothing.
    status, out, err = run(path, who, shared_tmp, "--", "/bin/sh", "-c", "ls /etc; echo x > /x")
    assert status == 0, err
    assert "unpacking" not in err
    assert out.split() == ["group", "motd", "passwd"]  # hostname: whited out by layer 2


def test_the_manifest_overrides_the_config(
    shared_tmp: Path, busybox_root: Path, who: UserInfo | None
) -> None:
    setup_image(shared_tmp, busybox_root)
    path = manifest(
        shared_tmp,
        "oci:./img",
        command=["/bin/sh", "-c", 'echo "$GREETING $OTHER in $(pwd)"'],
        env={"set": {"GREETING": "from-the-manifest", "OTHER": "too"}},
        workdir="/tmp",
    )
    status, out, err = run(path, who, shared_tmp)
    assert status == 0, err
    assert out == "from-the-manifest too in /tmp\n"


def test_changes_vanish_with_the_container_and_leave_the_layers_alone(
    shared_tmp: Path, busybox_root: Path, who: UserInfo | None
) -> None:
    setup_image(shared_tmp, busybox_root)
    path = manifest(shared_tmp, "oci:./img")
    status, _, err = run(path, who, shared_tmp, "--", "/bin/sh", "-c", "rm /etc/motd; echo > /new")
    assert status == 0, err
    status, out, err = run(path, who, shared_tmp, "--", "/bin/sh", "-c", "cat /etc/motd; ls /")
    assert status == 0, err
    assert out.startswith("motd of layer 2\n") and "new" not in out.split()


def test_root_upper_keeps_changes(
    shared_tmp: Path, busybox_root: Path, who: UserInfo | None
) -> None:
    setup_image(shared_tmp, busybox_root)
    keep = shared_tmp / "keep"
    keep.mkdir()
    if who is not None:
        os.chown(keep, who.uid, who.gid)
    path = manifest(shared_tmp, "oci:./img", root={"upper": "keep"})
    status, _, err = run(path, who, shared_tmp, "--", "/bin/sh", "-c", "echo kept > /etc/motd")
    assert status == 0, err
    status, out, err = run(path, who, shared_tmp, "--", "/bin/cat", "/etc/motd")
    assert (status, out) == (0, "kept\n"), err
    assert (keep / "upper" / "etc" / "motd").read_text() == "kept\n"


def test_a_retagged_image_is_not_served_from_a_stale_plan(
    shared_tmp: Path, busybox_root: Path, who: UserInfo | None
) -> None:
    setup_image(shared_tmp, busybox_root)
    path = manifest(shared_tmp, "oci:./img:latest", command=["/bin/cat", "/etc/motd"])
    assert run(path, who, shared_tmp)[1] == "motd of layer 2\n"
    oci(shared_tmp / "img", [busybox_layer(busybox_root), top_layer("retagged\n")], config=CONFIG)
    status, out, err = run(path, who, shared_tmp)
    assert (status, out) == (0, "retagged\n"), err


def test_a_tampered_layer_is_refused_naming_the_blob(
    shared_tmp: Path, busybox_root: Path, who: UserInfo | None
) -> None:
    digest = setup_image(shared_tmp, busybox_root)
    image = json.loads(blob(shared_tmp / "img", digest).read_bytes())
    layer_digest = image["layers"][1]["digest"]
    path_of_blob = blob(shared_tmp / "img", layer_digest)
    data = bytearray(path_of_blob.read_bytes())
    data[-12] ^= 0xFF  # in gzip's trailer: the stream still inflates
    path_of_blob.write_bytes(bytes(data))
    path = manifest(shared_tmp, f"oci:./img@{digest}")
    status, out, err = run(path, who, shared_tmp)
    assert status == 125, describe
    assert f"layer 2/2 {layer_digest}" in err
    assert out == ""
    store = shared_tmp / ("data/pflask/images" if who else "store")
    assert len(os.listdir(store / "layers")) == 1  # only the good layer
    assert os.listdir(store / "tmp") == []


def test_the_classic_image_flag(shared_tmp: Path, busybox_root: Path) -> None:
    setup_image(shared_tmp, busybox_root)
    result = run_pflask(
        "--image",
        f"oci:{shared_tmp}/img",
        "--",
        "/bin/cat",
        "/etc/motd",
        env=env_for(shared_tmp, None),
    )
    assert (result.returncode, result.stdout) == (0, "motd of layer 2\n"), result.stderr


def test_the_example_runs_pinned_as_root_and_as_a_user(
    shared_tmp: Path, test_user: UserInfo
) -> None:
    """examples/image.yaml's pin is what scripts/example-image builds (as
    scripts/setup does) from this machine's busybox-static."""
    repo = Path(__file__).resolve().parent.parent
    import shutil
    import subprocess
    import sys

    built = subprocess.run(
        [sys.executable, repo / "scripts" / "example-image", shared_tmp / "image"],
        capture_output=True,
        text=True,
        check=True,
    )
    pinned = (repo / "examples" / "image.yaml").read_text()
    assert f"@{built.stdout.strip()}" in pinned, "re-run scripts/example-image and re-pin"
    shutil.copy(repo / "examples" / "image.yaml", shared_tmp / "image.yaml")
    for who in (None, test_user):
        if who is not None:  # root's store is refused below another user's directory
            os.chown(shared_tmp, test_user.uid, test_user.gid)
        status, out, err = run(shared_tmp / "image.yaml", who, shared_tmp)
        assert status == 0, err
        assert out.endswith("hello from an image, as root in /root\n"), out


def test_an_ordinary_users_layers_keep_their_owners_inside(
    shared_tmp: Path, busybox_root: Path, test_user: UserInfo
) -> None:
    """Unpacked in a user namespace mapped as the container's (0 -> the user,
    1.. -> its /etc/subuid range): a file the image gives uid 1000 is 1000's
    in the container, and `image prune` removes what that left on the host."""
    os.chown(shared_tmp, test_user.uid, test_user.gid)
    owned = layer(
        directory("home/alice", uid=1000, gid=1000),
        entry("home/alice/notes", b"mine\n", uid=1000, gid=1000, mode=0o600),
        entry("usr/bin/ping", b"#!/bin/sh\n", mode=0o4755),
    )
    oci(shared_tmp / "img", [busybox_layer(busybox_root), owned])
    path = manifest(
        shared_tmp,
        "oci:./img",
        command=["/bin/sh", "-c", "stat -c '%u:%g %a' /home/alice/notes /usr/bin/ping /etc/passwd"],
    )
    status, out, err = run(path, test_user, shared_tmp)
    assert status == 0, err
    assert out.split("\n")[:3] == ["1000:1000 600", "0:0 4755", "0:0 644"]
    assert test_user.subuid is not None
    store = shared_tmp / "data" / "pflask" / "images"
    notes = next(store.glob("layers/*/root/home/alice/notes"))
    assert notes.stat().st_uid == test_user.subuid[0] + 999
    env = env_for(shared_tmp, test_user)
    assert run_pflask("image", "rm", digest_of_only(store), user=TEST_USER, env=env).returncode == 0
    result = run_pflask("image", "prune", user=TEST_USER, env=env)
    assert result.returncode == 0, result.stderr
    assert list(store.glob("layers/*")) == []


def digest_of_only(store: Path) -> str:
    (record,) = store.glob("images/*.json")
    return "sha256:" + record.name.removesuffix(".json")


def test_a_disk_image_is_the_root_and_is_never_written(
    shared_tmp: Path, busybox_root: Path
) -> None:
    """`disk:FILE`, like nspawn -i: a raw filesystem image through a loop
    device (read-only), changes on a tmpfs; the loop device goes with it."""
    import hashlib
    import subprocess

    image = shared_tmp / "root.sqfs"
    subprocess.run(
        ["mksquashfs", busybox_root, image, "-quiet", "-noappend", "-no-progress"], check=True
    )
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    path = manifest(
        shared_tmp,
        "disk:./root.sqfs",
        command=["/bin/sh", "-c", "echo changed > /etc/passwd; cat /etc/passwd"],
    )
    status, out, err = run(path, None, shared_tmp)
    assert (status, out) == (0, "changed\n"), err
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


def test_a_disk_image_needs_root(shared_tmp: Path, test_user: UserInfo) -> None:
    (shared_tmp / "root.img").write_bytes(b"\0" * 4096)
    os.chown(shared_tmp, test_user.uid, test_user.gid)
    path = manifest(shared_tmp, "disk:./root.img")
    status, _, err = run(path, test_user, shared_tmp)
    assert status == 2
    assert "root.image: a disk image is mounted through a loop device, which needs root" in err


def test_a_hostile_layer_is_refused_in_every_way_of_unpacking(
    shared_tmp: Path, busybox_root: Path, who: UserInfo | None
) -> None:
    """The same checks hold in an ordinary user's user namespace, where the
    unpacking process is root over the user's files: a symlink to the user's
    own directory, then a file through it, writes nothing there."""
    victim = shared_tmp / "victim"
    victim.mkdir()
    if who is not None:
        os.chown(victim, who.uid, who.gid)
    hostile = layer(
        symlink("etc", str(victim)),
        entry("etc/planted", b"owned\n"),
    )
    oci(shared_tmp / "img", [busybox_layer(busybox_root), hostile])
    status, _, err = run(manifest(shared_tmp, "oci:./img"), who, shared_tmp)
    assert status == 125, err
    assert "layer 2/2" in err and "refused" in err
    assert os.listdir(victim) == []


def test_root_runs_an_image_under_an_id_map_of_each_id_to_itself(
    shared_tmp: Path, busybox_root: Path
) -> None:
    """A user namespace whose map keeps every id needs no idmapped store:
    the layers' owners show as they are (a map that moves them: test_idmap)."""
    setup_image(shared_tmp, busybox_root)
    command = ["/bin/sh", "-c", "stat -c '%u:%g' /etc/passwd /etc/motd; touch /ran"]
    same = [{"inside": 0, "outside": 0, "count": 65536}]
    path = manifest(shared_tmp, "oci:./img", idmap={"uid": same, "gid": same}, command=command)
    status, out, err = run(path, None, shared_tmp)
    assert (status, out) == (0, "0:0\n0:0\n"), err

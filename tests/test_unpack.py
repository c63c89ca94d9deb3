"""Unpacking a layer: what a layer holds is kept (owners, modes, devices,
links, xattrs, whiteouts in overlayfs form), and a hostile layer writes
nothing outside its directory: each attack is a test."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagetools import directory, entry, hardlink, layer, symlink

from pflask.errors import SetupError
from pflask.image import layout, unpack
from pflask.image.source import Layer


@pytest.fixture
def place(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(the layer's directory, a sibling directory the layer must not touch)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("host\n")
    dest = tmp_path / "layer"
    dest.mkdir()
    yield dest, outside
    assert sorted(os.listdir(outside)) == ["passwd"], "the layer wrote outside its directory"
    assert (outside / "passwd").read_text() == "host\n"
    assert not (tmp_path / "escaped").exists()
    assert not Path("/escaped-by-a-layer").exists()


def run(dest: Path, tar: bytes, how: str = "tar", digest: str | None = None) -> unpack.Stats:
    stored = layout.compress(tar, how)
    info = Layer(digest=digest or layout.digest_of(stored), diff_id=layout.digest_of(tar))
    fd = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    try:
        return unpack.unpack(io.BytesIO(stored), info, fd, "layer 1/1")
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["tar", "gzip", "zstd"])
def test_tar_gzip_and_zstd_layers_unpack_alike(place: tuple[Path, Path], how: str) -> None:
    dest, _ = place
    tar = layer(directory("etc"), entry("etc/motd", b"hi\n" * 100_000))
    stats = run(dest, tar, how)
    assert (dest / "etc" / "motd").read_bytes() == b"hi\n" * 100_000
    assert stats.bytes == len(tar)
    assert stats.entries == 2


def test_owners_modes_devices_links_and_xattrs_are_kept_as_root(place: tuple[Path, Path]) -> None:
    dest, _ = place
    run(
        dest,
        layer(
            directory("usr", mode=0o755),
            directory("usr/bin", mode=0o555),  # files go in before its mode is set
            entry("usr/bin/su", b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
            entry("usr/bin/tool", b"x", mode=0o2750, uid=1000, gid=50),
            hardlink("usr/bin/tool2", "usr/bin/tool"),
            symlink("usr/bin/sh", "/bin/busybox"),
            entry("null", kind=tarfile.CHRTYPE, mode=0o666, device=(1, 3)),
            entry("fifo", kind=tarfile.FIFOTYPE, mode=0o600),
            entry("attr", b"", pax={"SCHILY.xattr.user.note": "kept"}),
            entry("capped", b"", pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}),
        ),
    )
    su = (dest / "usr/bin/su").lstat()
    assert stat.S_IMODE(su.st_mode) == 0o4755
    tool = (dest / "usr/bin/tool").lstat()
    assert (tool.st_uid, tool.st_gid, stat.S_IMODE(tool.st_mode)) == (1000, 50, 0o2750)
    assert (dest / "usr/bin/tool2").lstat().st_ino == tool.st_ino
    assert os.readlink(dest / "usr/bin/sh") == "/bin/busybox"
    assert stat.S_IMODE((dest / "usr/bin").lstat().st_mode) == 0o555
    null = (dest / "null").lstat()
    assert (
        stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    )
    assert stat.S_ISFIFO((dest / "fifo").lstat().st_mode)
    assert os.getxattr(dest / "attr", "user.note") == b"kept"


def test_whiteouts_and_opaque_directories_take_overlayfs_form(place: tuple[Path, Path]) -> None:
    dest, _ = place
    run(
        dest,
        layer(
            directory("etc"),
            entry("etc/.wh.hostname", b""),
            directory("var/cache"),
            entry("var/cache/.wh..wh..opq", b""),
            entry("var/cache/new", b"new"),
        ),
    )
    hidden = (dest / "etc/hostname").lstat()
    assert stat.S_ISCHR(hidden.st_mode) and hidden.st_rdev == os.makedev(0, 0)
    assert not (dest / "etc/.wh.hostname").exists()
    assert os.getxattr(dest / "var/cache", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(dest / "var/cache", "user.overlay.opaque") == b"y"
    assert not (dest / "var/cache/.wh..wh..opq").exists()
    assert (dest / "var/cache/new").read_bytes() == b"new"


def test_a_layers_own_overlay_xattrs_are_dropped(place: tuple[Path, Path]) -> None:
    """trusted.overlay.redirect (or metacopy, origin) in a layer would steer
    overlayfs to other files: never taken from a layer."""
    dest, _ = place
    pax = {
        "SCHILY.xattr.trusted.overlay.redirect": "/etc/shadow",
        "SCHILY.xattr.user.overlay.redirect": "/etc/shadow",
        "SCHILY.xattr.trusted.other": "x",
    }
    run(dest, layer(directory("d", pax=pax), entry("f", b"", pax=pax)))
    for name in ("d", "f"):
        assert os.listxattr(dest / name, follow_symlinks=False) == []


ATTACKS = {
    "dot-dot": layer(entry("../escaped", b"x")),
    "dot-dot inside": layer(directory("a"), entry("a/../../escaped", b"x")),
    "absolute": layer(entry("/escaped-by-a-layer", b"x")),
    "symlink then a file through it": layer(
        symlink("etc", "../outside"), entry("etc/passwd", b"owned\n")
    ),
    "absolute symlink then a file through it": layer(
        symlink("etc", "/"), entry("etc/escaped-by-a-layer", b"owned\n")
    ),
    "symlink then a directory through it": layer(
        symlink("etc", "../outside"), directory("etc/sub")
    ),
    "hard link out of the layer": layer(hardlink("passwd", "../outside/passwd")),
    "hard link to an absolute path": layer(hardlink("shadow", "/etc/shadow")),
    "hard link through a symlink": layer(
        symlink("up", "../outside"), hardlink("passwd", "up/passwd")
    ),
    "whiteout through a symlink": layer(symlink("etc", "../outside"), entry("etc/.wh.passwd", b"")),
    "opaque through a symlink": layer(symlink("etc", "../outside"), entry("etc/.wh..wh..opq", b"")),
    "whiteout of the parent": layer(entry(".wh...", b"")),
    "too deep": layer(entry("a/" * 300 + "f", b"x")),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_hostile_layer_writes_nothing_outside(place: tuple[Path, Path], attack: str) -> None:
    dest, _ = place
    with pytest.raises(SetupError, match="layer 1/1: refused: "):
        run(dest, ATTACKS[attack])


def test_a_symlink_replaced_by_a_directory_is_not_followed(place: tuple[Path, Path]) -> None:
    """A later member of the same name replaces the symlink: the directory is
    made in the layer, not where the symlink pointed."""
    dest, outside = place
    run(dest, layer(symlink("etc", str(outside)), directory("etc"), entry("etc/passwd", b"in\n")))
    assert (dest / "etc").is_dir() and not (dest / "etc").is_symlink()
    assert (dest / "etc/passwd").read_text() == "in\n"


def test_an_oversized_layer_is_refused(
    place: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, _ = place
    monkeypatch.setattr(unpack, "MAX_LAYER_BYTES", 64 << 10)
    with pytest.raises(SetupError, match=r"is over 65536 bytes"):
        run(dest, layer(entry("big", b"\0" * (1 << 20))), "gzip")


def test_a_member_claiming_more_than_the_stream_holds_is_refused(
    place: tuple[Path, Path],
) -> None:
    dest, _ = place
    info, _ = entry("big", b"", size=1 << 30)
    tar = info.tobuf(tarfile.PAX_FORMAT) + b"x" * 4096
    with pytest.raises(SetupError, match="layer 1/1: "):
        run(dest, tar)


def test_a_tampered_blob_or_diff_id_is_refused_naming_both(place: tuple[Path, Path]) -> None:
    dest, _ = place
    tar = layer(entry("f", b"x"))
    wrong = "sha256:" + "0" * 64
    with pytest.raises(SetupError) as error:
        run(dest, tar, "gzip", digest=wrong)
    assert f"blob does not match its digest: expected {wrong}, got sha256:" in str(error.value)
    info = Layer(digest="", diff_id=wrong)
    fd = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(SetupError, match=f"does not match its diff-id: expected {wrong}"):
            unpack.unpack(io.BytesIO(tar), info, fd, "layer 1/1")
    finally:
        os.close(fd)

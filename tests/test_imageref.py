"""Image references: the forms a manifest, --image and `pflask image` take,
and the errors a wrong one gets (placed in the manifest, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_pflask

from pflask.load import imageref
from pflask.load.imageref import BadReference, Reference

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:/srv/img", Reference(transport="oci", path="/srv/img")),
        ("oci:/srv/img:v1", Reference(transport="oci", path="/srv/img", tag="v1")),
        ("oci:./a:b/c", Reference(transport="oci", path="./a:b/c")),
        (
            f"oci:img:v1@sha256:{HEX}",
            Reference(transport="oci", path="img", tag="v1", digest=f"sha256:{HEX}"),
        ),
        ("oci-archive:x.tar", Reference(transport="oci-archive", path="x.tar")),
        ("docker-archive:x.tar", Reference(transport="docker-archive", path="x.tar")),
        (
            "docker-archive:x.tar:example:latest",
            Reference(transport="docker-archive", path="x.tar", tag="example:latest"),
        ),
        (
            f"docker://127.0.0.1:5000/box:1@sha256:{HEX}",
            Reference(transport="docker", path="127.0.0.1:5000/box:1", digest=f"sha256:{HEX}"),
        ),
        ("disk:/srv/root.img", Reference(transport="disk", path="/srv/root.img")),
    ],
)
def test_references_parse(text: str, expected: Reference) -> None:
    ref = imageref.parse(text)
    assert ref == expected
    assert imageref.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("img", "expected oci:DIR"),
        ("tarball:x", "expected oci:DIR"),
        ("oci:", "which directory"),
        ("oci:img@sha256:1234", "is no digest"),
        ("oci:img@md5:" + "0" * 32, "is no digest"),
        (f"disk:x@sha256:{HEX}", "cannot be pinned"),
        ("docker://", "expected HOST/NAME"),
        ("oci:" + "x" * 5000, "longer than"),
    ],
)
def test_bad_references_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(BadReference, match=says):
        imageref.parse(text)


def test_relative_paths_are_made_absolute_and_docker_names_kept() -> None:
    def fix(path: str) -> str:
        return "/base/" + path

    assert imageref.with_path("oci:img:v1", fix) == "oci:/base/img:v1"
    assert imageref.with_path("docker://host/img:v1", fix) == "docker://host/img:v1"
    assert imageref.with_path("nonsense", fix) == "nonsense"


def test_a_bad_image_in_a_manifest_is_placed_and_exits_2(shared_tmp: Path) -> None:
    path = shared_tmp / "box.yaml"
    path.write_text("version: 1\nname: box\nroot:\n  image: 'oci:img@sha256:12'\n")
    result = run_pflask("validate", path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"pflask: {path}:4:10: root.image: 'sha256:12' is no digest "
        "(expected sha256: and 64 hex digits)"
    )


def test_a_root_is_a_path_or_an_image(shared_tmp: Path) -> None:
    path = shared_tmp / "box.yaml"
    path.write_text("version: 1\nname: box\nroot:\n  path: /srv\n  image: oci:/srv/img\n")
    result = run_pflask("validate", path)
    assert result.returncode == 2
    assert "root.image: a root is a path or an image, not both" in result.stderr
    path.write_text("version: 1\nname: box\nroot:\n  path: /srv\n  upper: /srv/keep\n")
    result = run_pflask("validate", path)
    assert result.returncode == 2
    assert "root.upper: keeps an image's changes: it needs root.image" in result.stderr


def test_image_and_chroot_flags_exclude_each_other() -> None:
    result = run_pflask("--image", "oci:/srv/img", "--chroot", "/srv")
    assert result.returncode == 2
    assert "a root is a directory or an image, not both" in result.stderr


def test_validate_checks_a_reference_without_fetching_or_unpacking(shared_tmp: Path) -> None:
    path = shared_tmp / "box.yaml"
    path.write_text("version: 1\nname: box\nroot:\n  image: oci:./not-built-yet:v1\n")
    result = run_pflask("validate", path, env={"PFLASK_STORE": str(shared_tmp / "store")})
    assert (result.returncode, result.stdout) == (0, f"{path}: ok\n"), result.stderr
    assert not (shared_tmp / "store").exists()

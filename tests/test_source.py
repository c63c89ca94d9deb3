"""Reading images where they lie: OCI layouts, OCI archives, docker-archives;
tags, pins and tampered blobs; hostile JSON and archives end fast."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from imagetools import blob, entry, layer, oci

from pflask.errors import SetupError
from pflask.image import layout, source
from pflask.load import imageref

LAYER = layer(entry("hello", b"hello\n"))
OTHER = layer(entry("other", b"other\n"))


def open_ref(text: str) -> source.Image:
    image, blobs = source.open_image(imageref.parse(text))
    blobs.close()
    return image


def test_a_layout_resolves_by_tag_by_pin_or_alone(tmp_path: Path) -> None:
    first = oci(tmp_path / "img", [LAYER], tag="v1", config={"Cmd": ["/hello"]})
    second = oci(tmp_path / "img", [LAYER, OTHER], tag="v2")
    assert open_ref(f"oci:{tmp_path}/img:v1").digest == first
    image = open_ref(f"oci:{tmp_path}/img:v2")
    assert image.digest == second
    assert [x.diff_id for x in image.layers] == [layout.digest_of(LAYER), layout.digest_of(OTHER)]
    assert image.config["config"] == {}
    assert open_ref(f"oci:{tmp_path}/img@{first}").config["config"] == {"Cmd": ["/hello"]}
    with pytest.raises(SetupError, match=r"holds 2 images: which tag\? \(v1, v2\)"):
        open_ref(f"oci:{tmp_path}/img")
    with pytest.raises(SetupError, match=r"no image tagged 'v3' \(tags: v1, v2\)"):
        open_ref(f"oci:{tmp_path}/img:v3")


def test_a_pin_wins_over_a_moved_tag(tmp_path: Path) -> None:
    """A pinned image is read by its digest: moving the tag changes nothing."""
    first = oci(tmp_path / "img", [LAYER])
    oci(tmp_path / "img", [OTHER])  # `latest` now names another image
    assert open_ref(f"oci:{tmp_path}/img:latest@{first}").digest == first
    assert open_ref(f"oci:{tmp_path}/img:latest").digest != first


def test_a_pin_to_another_image_is_refused_naming_both(tmp_path: Path) -> None:
    oci(tmp_path / "img", [LAYER])
    other = "sha256:" + "0" * 64
    with pytest.raises(SetupError, match="0000000000"):
        open_ref(f"oci:{tmp_path}/img@{other}")


@pytest.mark.parametrize("which", ["manifest", "config"])
def test_a_tampered_manifest_or_config_is_refused_naming_the_blob(
    tmp_path: Path, which: str
) -> None:
    digest = oci(tmp_path / "img", [LAYER], config={"Cmd": ["/hello"]})
    manifest = json.loads(blob(tmp_path / "img", digest).read_bytes())
    target = digest if which == "manifest" else manifest["config"]["digest"]
    path = blob(tmp_path / "img", target)
    path.write_bytes(path.read_bytes().replace(b"sha256", b"SHA256", 1))
    with pytest.raises(SetupError) as error:
        open_ref(f"oci:{tmp_path}/img")
    message = str(error.value)
    assert f"{which} blob {target} does not match its digest: expected {target}, got sha256:" in (
        message
    )


def test_oci_and_docker_archives_give_the_same_image(tmp_path: Path) -> None:
    digest = oci(tmp_path / "img", [LAYER, OTHER], config={"Env": ["A=1"]})
    layout.archive(str(tmp_path / "img"), str(tmp_path / "img.tar"))
    image = open_ref(f"oci-archive:{tmp_path}/img.tar")
    assert image.digest == digest
    image_id = layout.docker_archive(str(tmp_path / "d.tar"), [LAYER, OTHER], {"Env": ["A=1"]})
    docker = open_ref(f"docker-archive:{tmp_path}/d.tar")
    assert docker.digest == image_id
    assert [x.diff_id for x in docker.layers] == [x.diff_id for x in image.layers]
    assert docker.config["config"] == {"Env": ["A=1"]}
    assert open_ref(f"docker-archive:{tmp_path}/d.tar@{image_id}").digest == image_id
    assert open_ref(f"docker-archive:{tmp_path}/d.tar:example:latest").digest == image_id
    with pytest.raises(SetupError, match="no image tagged 'other:1'"):
        open_ref(f"docker-archive:{tmp_path}/d.tar:other:1")
    with pytest.raises(SetupError, match="does not match its pin"):
        open_ref(f"docker-archive:{tmp_path}/d.tar@sha256:{'1' * 64}")


def test_hostile_json_is_refused_quickly(tmp_path: Path) -> None:
    img = tmp_path / "img"
    img.mkdir()
    cases = {
        "big": b'{"manifests": [' + b'{"a": 1},' * 600_000 + b"{}]}",
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "deep-but-parsable": b'{"manifests":' + b"[" * 40 + b"]" * 40 + b"}",
        "not json": b"\xff\xfe",
    }
    for name, data in cases.items():
        (img / "index.json").write_bytes(data)
        start = time.monotonic()
        with pytest.raises(SetupError) as error:
            open_ref(f"oci:{img}")
        assert time.monotonic() - start < 1, name
        assert "index.json" in str(error.value), name


def test_a_fifo_in_a_blobs_place_does_not_hang(tmp_path: Path) -> None:
    import os

    oci(tmp_path / "img", [LAYER])
    (tmp_path / "img" / "index.json").unlink()
    os.mkfifo(tmp_path / "img" / "index.json")
    with pytest.raises(SetupError, match="not a regular file"):
        open_ref(f"oci:{tmp_path}/img")


def test_an_archive_with_a_huge_extended_header_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info, data = entry("index.json", b"{}")
        tar.addfile(info, io.BytesIO(data or b""))
    raw = bytearray(out.getvalue())
    # A pax header claiming 4 GiB: tarfile would read it whole into memory.
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 4 << 30
    hostile = header.tobuf(tarfile.USTAR_FORMAT) + bytes(raw)
    (tmp_path / "x.tar").write_bytes(hostile)
    start = time.monotonic()
    with pytest.raises(SetupError, match="extended header"):
        open_ref(f"oci-archive:{tmp_path}/x.tar")
    assert time.monotonic() - start < 1

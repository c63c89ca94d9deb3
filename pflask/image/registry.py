"""Registry images (`docker://NAME[:TAG][@sha256:HEX]`), fetched with skopeo.

pflask speaks no registry protocol itself: skopeo (a real, maintained
tool, Debian's `skopeo` package) copies the image into an OCI layout in the
store (oci/), and from there it is read, verified and unpacked like any
other layout.  A pin is passed on to skopeo and checked again here.
"""

from __future__ import annotations

import os
import subprocess

from pflask.errors import SetupError
from pflask.load.imageref import Reference

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pflask.image.store import Store

TIMEOUT = 600.0


def fetch(ref: Reference, store: Store, tls_verify: bool | None = None) -> Reference:
    """Copy `ref` into a layout under the store's tmp/ (the caller removes it
    once the layers are unpacked); the `oci:` reference to read it by.

    `tls_verify`: None follows the environment (PFLASK_REGISTRY_TLS_VERIFY=0
    for a plain-HTTP registry on localhost, as tests use)."""
    layout = os.path.join(store.path, "tmp", f"{os.getpid()}.{os.urandom(6).hex()}")
    tag = "fetched"
    # A pin replaces the tag (skopeo takes one or the other, and the digest decides).
    source = (
        f"docker://{_repository(ref.path)}@{ref.digest}" if ref.digest else f"docker://{ref.path}"
    )
    if tls_verify is None:
        tls_verify = os.environ.get("PFLASK_REGISTRY_TLS_VERIFY", "1") != "0"
    argv = [
        "skopeo",
        "copy",
        "--quiet",
        # Without it skopeo may convert a Docker manifest to OCI form, which
        # changes the digest a pin names; with it, such a copy is refused.
        "--preserve-digests",
        f"--src-tls-verify={'true' if tls_verify else 'false'}",
        source,
        f"oci:{layout}:{tag}",
    ]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False)
    except FileNotFoundError:
        raise SetupError(
            f"{ref}: fetching from a registry needs skopeo, which is not installed "
            "(Debian package skopeo)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"{ref}: skopeo copy took more than {TIMEOUT:g}s") from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise SetupError(
            f"{ref}: skopeo copy failed: {detail[-1] if detail else result.returncode}"
        )
    return Reference(transport="oci", path=layout, tag=tag, digest=ref.digest)


def _repository(name: str) -> str:
    """HOST/NAME:TAG without its tag (a port's colon is followed by a slash)."""
    head, colon, tail = name.rpartition(":")
    return head if colon and "/" not in tail else name

"""pflask: Linux namespace containers from flags or checked-in manifests.

The Python API (pflask.api) is reachable from here, imported on first use
(the command line, which imports this package on every start, never pays
for it)::

    import pflask

    result = pflask.Container.load("sandbox.yaml").run(["make", "test"], timeout=60)
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pflask.api import (
        CAPTURE,
        DEVNULL,
        INHERIT,
        Container,
        Result,
        StartError,
        Timeout,
    )
    from pflask.errors import ManifestError, ManifestErrors, PflaskError

__all__ = [
    "CAPTURE",
    "DEVNULL",
    "INHERIT",
    "Container",
    "ManifestError",
    "ManifestErrors",
    "PflaskError",
    "Result",
    "StartError",
    "Timeout",
]


def __getattr__(name: str) -> object:
    if name in ("ManifestError", "ManifestErrors", "PflaskError"):
        from pflask import errors

        return getattr(errors, name)
    if name in __all__:
        from pflask import api

        return getattr(api, name)
    raise AttributeError(f"module 'pflask' has no attribute {name!r}")

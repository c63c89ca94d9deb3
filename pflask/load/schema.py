"""Where the manifest's JSON Schema lives, in a wheel or in a checkout."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_NAME = "manifest.schema.json"


def path() -> str:
    """The schema file: shipped inside the package, or `schemas/` of a checkout.

    The wheel carries a copy at the top of the package (see pyproject's
    force-include); an editable install or a bare checkout reads the single
    source of truth in `schemas/`.  Both are found from the package, not from
    this module, whichever folder of it this module is in.
    """
    import pflask

    here = os.path.dirname(os.path.abspath(pflask.__file__))
    for candidate in (os.path.join(here, _NAME), os.path.join(here, "..", "schemas", _NAME)):
        if os.path.exists(candidate):
            return os.path.normpath(candidate)
    raise FileNotFoundError(f"{_NAME} is neither in {here} nor in {here}/../schemas")


def text() -> str:
    with open(path(), encoding="utf-8") as f:
        return f.read()


def load() -> dict[str, Any]:
    import json

    schema: dict[str, Any] = json.loads(text())
    return schema

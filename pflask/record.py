"""Immutable, typed records that cost nothing to import.

`dataclasses` pulls in `inspect` and `re` and adds about 25 ms to every start
of `pflask run` on this class of machine; this metaclass gives the few things
pflask needs from it (slots, keyword-only `__init__` with defaults, equality,
`repr`, conversion to plain data) in a few lines.  `dataclass_transform` tells
mypy how the generated `__init__` looks, so constructors stay type-checked.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, dataclass_transform
else:

    def dataclass_transform(**_: object) -> object:
        return lambda cls: cls


_MISSING = object()


@dataclass_transform(kw_only_default=True, frozen_default=True)
class RecordMeta(type):
    """Turn annotated class attributes into slots and a keyword `__init__`."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> RecordMeta:
        annotations = namespace.get("__annotations__", {})
        own = [f for f in annotations if not str(annotations[f]).startswith("ClassVar")]
        defaults = {f: namespace.pop(f) for f in own if f in namespace}
        namespace["__slots__"] = tuple(own)
        cls = super().__new__(mcs, name, bases, namespace)
        inherited: tuple[str, ...] = getattr(cls, "_fields", ())
        cls._fields = inherited + tuple(own)  # type: ignore[attr-defined]
        cls._defaults = {**getattr(cls, "_defaults", {}), **defaults}  # type: ignore[attr-defined]
        return cls


class Record(metaclass=RecordMeta):
    """Base of every manifest and plan record: immutable, compared by value."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **values: Any) -> None:
        defaults = self._defaults
        for field in self._fields:
            value = values.pop(field, _MISSING)
            if value is _MISSING:
                value = defaults.get(field, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{type(self).__name__}: missing field {field!r}")
            object.__setattr__(self, field, value)
        if values:
            raise TypeError(f"{type(self).__name__}: unknown field {next(iter(values))!r}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f) == getattr(other, f) for f in self._fields
        )

    def __hash__(self) -> int:
        return hash((type(self), *(getattr(self, f) for f in self._fields)))

    def __repr__(self) -> str:
        body = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({body})"

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (records are immutable)."""
        values = {f: getattr(self, f) for f in self._fields}
        values.update(changes)
        return type(self)(**values)

    def to_data(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars, nested records included."""
        return {f: _to_data(getattr(self, f)) for f in self._fields}


def _to_data(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_data()
    if isinstance(value, (tuple, list)):
        return [_to_data(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_data(v) for k, v in value.items()}
    return value

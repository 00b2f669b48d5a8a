"""The one converter for troupe's messages and records.

Every attrs class that crosses a boundary (a store row, an HTTP body, a message
written to disk) goes through :data:`converter`. It is cattrs' orjson
preconfiguration, so enums travel as their values and datetimes as ISO 8601
strings, and it forbids unknown keys: input from outside with a field we do not
know is an error, never silently dropped.
"""

from __future__ import annotations

from typing import Any, TypeVar

from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.preconf.orjson import OrjsonConverter, make_converter
from cattrs.strategies import configure_tagged_union

__all__ = [
    "ClassValidationError",
    "ForbiddenExtraKeysError",
    "converter",
    "dumps",
    "loads",
    "register_tagged_union",
    "structure",
    "unstructure",
]

T = TypeVar("T")

converter: OrjsonConverter = make_converter(forbid_extra_keys=True)


def register_tagged_union(union: Any, tag_name: str = "type") -> None:
    """Teach :data:`converter` a union of attrs classes, tagged by class name.

    ``{"type": "Increment", ...}`` structures to ``Increment``. Register a union
    once, at import time of the module that defines its members.
    """
    configure_tagged_union(union, converter, tag_name=tag_name, tag_generator=_class_name)


def _class_name(cls: type) -> str:
    return cls.__name__


def unstructure(obj: Any, unstructure_as: Any = None) -> Any:
    """Return ``obj`` as plain JSON-ready data (dicts, lists, strings, numbers)."""
    return converter.unstructure(obj, unstructure_as=unstructure_as)


def structure(data: Any, cls: type[T]) -> T:
    """Build a ``cls`` from plain data.

    Raises :class:`cattrs.errors.ClassValidationError` (or a subclass of
    ``cattrs.BaseValidationError``) naming the bad fields, including unknown keys.
    """
    return converter.structure(data, cls)


def dumps(obj: Any, unstructure_as: Any = None) -> bytes:
    """Serialize ``obj`` to JSON bytes."""
    return converter.dumps(obj, unstructure_as=unstructure_as)


def loads(data: bytes | str, cls: type[T]) -> T:
    """Parse JSON ``data`` into a ``cls``; raises like :func:`structure`, or
    ``orjson.JSONDecodeError`` for text that is not JSON."""
    return converter.loads(data, cls)

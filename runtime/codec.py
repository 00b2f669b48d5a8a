"""The one converter for troupe's messages and records.

Every attrs class that crosses a boundary (a store row, an HTTP body, a message
written to disk) goes through :data:`converter`. It is cattrs' orjson
preconfiguration, so enums travel as their values and datetimes as ISO 8601
strings, and it is strict: input from outside with a field we do not know, or a value
of another JSON type than declared, is an error, never silently dropped or
converted.
"""

from __future__ import annotations

from typing import Any, TypeVar, get_args

from cattrs.errors import AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError
from cattrs.preconf.orjson import OrjsonConverter, make_converter
from cattrs.strategies import configure_tagged_union

__all__ = [
    "ClassValidationError",
    "ForbiddenExtraKeysError",
    "WrongType",
    "converter",
    "dumps",
    "loads",
    "register_tagged_union",
    "structure",
    "unstructure",
]

T = TypeVar("T")

converter: OrjsonConverter = make_converter(forbid_extra_keys=True)


class WrongType(TypeError):
    """A value of another JSON type than the field declares; ``value`` is what came."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, got {type(value).__name__}")
        self.expected = expected
        self.value = value


# cattrs converts scalars leniently (``str(1)``, ``bool("no")``); input from
# outside must already have the declared type.
def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise WrongType("a string", value)
    return value


def _structure_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise WrongType("true or false", value)
    return value


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongType("an integer", value)
    return value


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WrongType("a number", value)
    return float(value)


converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(bool, _structure_bool)
converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook(float, _structure_float)


def register_tagged_union(union: Any, tag_name: str = "type") -> None:
    """Teach :data:`converter` a union of attrs classes, tagged by class name.

    ``{"type": "Increment", ...}`` structures to ``Increment``. Register a union
    once, at import time of the module that defines its members. Input that is
    not an object, or whose tag is missing or names no member, raises
    :class:`ClassValidationError` like any other invalid field.
    """
    configure_tagged_union(union, converter, tag_name=tag_name, tag_generator=_class_name)
    by_tag = converter.get_structure_hook(union)
    tags = tuple(_class_name(member) for member in get_args(union))

    # cattrs' own hook lets a bare KeyError or AttributeError escape on such
    # input, which callers that catch validation errors would not expect.
    def structure_tagged(value: Any, cls: Any) -> Any:
        if isinstance(value, dict) and value.get(tag_name) in tags:
            return by_tag(value, cls)
        problem: Exception
        if not isinstance(value, dict):
            problem = TypeError(f"expected an object, got {type(value).__name__}")
        else:
            if tag_name not in value:
                problem = KeyError(tag_name)
            else:
                problem = ValueError(f"{tag_name} {value[tag_name]!r} is none of {tags}")
            problem.add_note(AttributeValidationNote(f"Structuring {tag_name}", tag_name, union))
        raise ClassValidationError(f"While structuring {union}", [problem], union)

    converter.register_structure_hook(union, structure_tagged)


def _class_name(cls: type) -> str:
    return cls.__name__


def unstructure(obj: Any, unstructure_as: Any = None) -> Any:
    """Return ``obj`` as data orjson can write: dicts, lists and scalars, with
    datetimes and enums left for orjson to render."""
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

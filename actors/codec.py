"""The service's one converter for its records and bodies.

Every attrs class that crosses the service's boundary (a store row, an HTTP body)
goes through :data:`converter`. It is cattrs' orjson preconfiguration, so enums
travel as their values and datetimes as ISO 8601 strings, and it is strict: input
from outside with a field we do not know, or a value of another JSON type than
declared, is an error, never silently dropped or converted.

:func:`make_converter` builds such a converter, with everything it knows
registered as part of construction; the module-level one is made by it at import
and not changed afterwards. Code that needs more hooks (the config loader's paths
and choices) builds a converter of its own rather than teach this one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypeVar, get_args

from cattrs.errors import AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError
from cattrs.preconf.orjson import OrjsonConverter
from cattrs.preconf.orjson import make_converter as make_orjson_converter
from cattrs.strategies import configure_tagged_union

__all__ = [
    "ClassValidationError",
    "ForbiddenExtraKeysError",
    "WrongType",
    "converter",
    "dumps",
    "loads",
    "make_converter",
    "structure",
    "unstructure",
]

T = TypeVar("T")

# The key of a tagged union's objects that names the member class.
_TAG_NAME: Final = "type"


class WrongType(TypeError):
    """A value of another JSON type than the field declares; ``value`` is what came."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, got {type(value).__name__}")
        self.expected = expected
        self.value = value


def make_converter(tagged_unions: Iterable[Any] = ()) -> OrjsonConverter:
    """Return a new strict orjson converter.

    It forbids unknown keys, takes scalars only of their declared JSON type (raising
    :class:`WrongType` inside the validation error otherwise), and structures each
    union of attrs classes in ``tagged_unions`` by a ``"type"`` key holding the class
    name: ``{"type": "Increment", ...}`` becomes an ``Increment``. Input for such a
    union that is not an object, or whose tag is missing or names no member, raises
    :class:`ClassValidationError` like any other invalid field.

    Each call builds a new converter, so hooks that one caller adds reach no other.
    """
    converter = make_orjson_converter(forbid_extra_keys=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    for union in tagged_unions:
        _register_tagged_union(converter, union)
    return converter


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


def _register_tagged_union(converter: OrjsonConverter, union: Any) -> None:
    configure_tagged_union(union, converter, tag_name=_TAG_NAME, tag_generator=_class_name)
    by_tag = converter.get_structure_hook(union)
    tags = tuple(_class_name(member) for member in get_args(union))

    # cattrs' own hook lets a bare KeyError or AttributeError escape on such
    # input, which callers that catch validation errors would not expect.
    def structure_tagged(value: Any, cls: Any) -> Any:
        if isinstance(value, dict) and value.get(_TAG_NAME) in tags:
            return by_tag(value, cls)
        problem: Exception
        if not isinstance(value, dict):
            problem = TypeError(f"expected an object, got {type(value).__name__}")
        else:
            if _TAG_NAME not in value:
                problem = KeyError(_TAG_NAME)
            else:
                problem = ValueError(f"{_TAG_NAME} {value[_TAG_NAME]!r} is none of {tags}")
            problem.add_note(AttributeValidationNote(f"Structuring {_TAG_NAME}", _TAG_NAME, union))
        raise ClassValidationError(f"While structuring {union}", [problem], union)

    converter.register_structure_hook(union, structure_tagged)


def _class_name(cls: type) -> str:
    return cls.__name__


# The service's records hold no tagged union yet; one would be named here.
converter: Final[OrjsonConverter] = make_converter()


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

"""Round trips through :mod:`actors.codec` for every serialized record.

The project's records are discovered from ``__all__`` of the modules in
:data:`SERIALIZED_MODULES`, so a new record class is covered as soon as it is
exported. Instances are drawn from
the field types by :func:`strategy_for`, which fails loudly on a field type it
does not know rather than skip the class. The example protocol below covers
what the model does not use yet: a tagged union by class name, nested inside
other records. It goes through a converter of its own, built by the same
:func:`~actors.codec.make_converter` as the service's, so the service's
converter never learns the test's classes.
"""

from __future__ import annotations

import enum
import importlib
import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import cattrs
import orjson
import pytest
from cattrs.preconf.orjson import OrjsonConverter
from hypothesis import given, settings
from hypothesis import strategies as st

import actors.http.schemas
import actors.model
from actors import codec
from actors.codec import ClassValidationError, ForbiddenExtraKeysError, WrongType, make_converter

CODEC = settings(max_examples=50, deadline=None)

# orjson writes integers of at most 64 bits.
INT64 = st.integers(-(2**63), 2**63 - 1)

# JSON has no NaN nor infinity (orjson writes them as null).
FINITE_FLOATS = st.floats(allow_nan=False, allow_infinity=False)

UTC_DATETIMES = st.datetimes(timezones=st.just(UTC))

JSON_VALUES = st.none() | st.booleans() | INT64 | st.text(max_size=8)

JSON_DOCUMENTS = st.recursive(
    JSON_VALUES | FINITE_FLOATS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

# The modules whose exported attrs classes travel as JSON.
SERIALIZED_MODULES = ("actors.model", "actors.http.schemas")


# -- an example protocol -------------------------------------------------------


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


@attrs.frozen
class Point:
    x: int
    y: int


@attrs.frozen
class Submit:
    job_id: str
    priority: Priority
    at: datetime
    deadline: datetime | None = None
    tags: tuple[str, ...] = ()
    origin: Point | None = None
    weight: float = 1.0


@attrs.frozen
class Cancel:
    job_id: str
    reason: str | None = None


@attrs.frozen
class Heartbeat:
    pass


Command = Submit | Cancel | Heartbeat
COMMAND_NAMES = tuple(member.__name__ for member in typing.get_args(Command))

PROTOCOL = make_converter(tagged_unions=[Command])


@attrs.frozen
class Batch:
    sent_at: datetime
    first: Command
    rest: tuple[Command, ...] = ()
    points: tuple[Point, Point] | None = None


PROTOCOL_CLASSES: list[type[Any]] = [Point, Submit, Cancel, Heartbeat, Batch]


def converter_for(cls: type[Any]) -> OrjsonConverter:
    """:data:`PROTOCOL` for the example protocol's classes, the service's converter otherwise."""
    return PROTOCOL if cls in PROTOCOL_CLASSES else codec.converter


# -- drawing instances from field types ------------------------------------------


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values of the type ``tp``, limited to what JSON can carry.

    Raises :class:`TypeError` for a type it does not know.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return JSON_DOCUMENTS
    if tp is type(None):
        return st.none()
    if origin is types.UnionType or origin is typing.Union:
        return st.one_of(*(strategy_for(arg) for arg in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
        return st.tuples(*(strategy_for(arg) for arg in args))
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin is dict and args[0] is str:
        return st.dictionaries(st.text(max_size=8), strategy_for(args[1]), max_size=3)
    if isinstance(tp, type):
        if attrs.has(tp):
            return instances_of(tp)
        if issubclass(tp, enum.Enum):
            return st.sampled_from(tp)
        simple: dict[type, st.SearchStrategy[Any]] = {
            bool: st.booleans(),
            int: INT64,
            float: FINITE_FLOATS,
            str: st.text(),
            datetime: UTC_DATETIMES,
        }
        if tp in simple:
            return simple[tp]
    raise TypeError(f"no strategy for {tp!r}; teach strategy_for about it")


def instances_of(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Instances of the attrs class ``cls`` with every init field drawn, defaults included."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: strategy_for(hints[field.name]) for field in attrs.fields(cls)}
    return st.builds(cls, **fields)


def serialized_classes() -> list[type[Any]]:
    """Every attrs class that a module of :data:`SERIALIZED_MODULES` exports."""
    found: list[type[Any]] = []
    for module_name in SERIALIZED_MODULES:
        module = importlib.import_module(module_name)
        exported = (getattr(module, name) for name in module.__all__)
        found += [obj for obj in exported if isinstance(obj, type) and attrs.has(obj)]
    return found


PROJECT_CLASSES = serialized_classes()


def field_names(cls: type[Any]) -> set[str]:
    return {field.name for field in attrs.fields(cls)}


def as_json(record: Any) -> Any:
    """``record`` as input from outside would bring it: parsed JSON."""
    # Not unstructure(): for orjson it leaves datetimes and enums to orjson.
    return orjson.loads(converter_for(type(record)).dumps(record))


def forbidden_keys(error: BaseException) -> list[set[str]]:
    """The extra keys of every :class:`ForbiddenExtraKeysError` inside ``error``."""
    if isinstance(error, ForbiddenExtraKeysError):
        return [error.extra_fields]
    if isinstance(error, BaseExceptionGroup):
        return [keys for inner in error.exceptions for keys in forbidden_keys(inner)]
    return []


# -- tests ---------------------------------------------------------------------


def test_discovers_the_project_records() -> None:
    expected = {
        actors.model.Owner,
        actors.model.Usage,
        actors.model.Job,
        actors.model.Delta,
        actors.model.Notification,
        actors.model.NotificationAction,
        actors.http.schemas.ChatMessage,
        actors.http.schemas.CreateJobBody,
        actors.http.schemas.MuteBody,
    }
    assert expected <= set(PROJECT_CLASSES)


def test_strategy_for_refuses_an_unknown_field_type() -> None:
    with pytest.raises(TypeError, match="no strategy for"):
        strategy_for(bytes)


@pytest.mark.parametrize("cls", PROJECT_CLASSES + PROTOCOL_CLASSES, ids=lambda cls: cls.__name__)
@CODEC
@given(data=st.data())
def test_record_round_trips(cls: type[Any], data: st.DataObject) -> None:
    converter = converter_for(cls)
    record = data.draw(instances_of(cls), label=cls.__name__)
    encoded = converter.dumps(record)
    decoded = converter.loads(encoded, cls)
    assert decoded == record
    assert type(decoded) is cls
    assert converter.dumps(decoded) == encoded


@CODEC
@given(moment=UTC_DATETIMES)
def test_datetimes_travel_as_iso_8601_in_utc(moment: datetime) -> None:
    encoded = PROTOCOL.dumps(Submit("j", Priority.LOW, moment))
    assert orjson.loads(encoded)["at"] == moment.isoformat()
    decoded = PROTOCOL.loads(encoded, Submit).at
    assert decoded == moment
    assert decoded.utcoffset() == timedelta(0)


@CODEC
@given(data=st.data())
def test_tagged_union_round_trips_by_class_name(data: st.DataObject) -> None:
    command = data.draw(strategy_for(Command), label="command")
    encoded = PROTOCOL.dumps(command, unstructure_as=Command)
    assert orjson.loads(encoded)["type"] == type(command).__name__
    decoded: object = PROTOCOL.loads(encoded, Command)  # type: ignore[arg-type]
    assert decoded == command
    assert type(decoded) is type(command)


@CODEC
@given(tag=JSON_VALUES.filter(lambda tag: tag not in COMMAND_NAMES))
def test_tagged_union_rejects_an_unknown_class_name(tag: Any) -> None:
    with pytest.raises(ClassValidationError) as caught:
        PROTOCOL.loads(orjson.dumps({"type": tag, "job_id": "j"}), Command)  # type: ignore[arg-type]
    assert cattrs.transform_error(caught.value) == [
        f"invalid value for type, expected {Command!r} @ $.type"
    ]


def test_tagged_union_rejects_a_missing_tag() -> None:
    with pytest.raises(ClassValidationError) as caught:
        PROTOCOL.loads(b'{"job_id": "j"}', Command)  # type: ignore[arg-type]
    assert cattrs.transform_error(caught.value) == ["required field missing @ $.type"]


@pytest.mark.parametrize(
    ("raw", "kind"), [(b'"Cancel"', "str"), (b"[]", "list"), (b"null", "NoneType"), (b"1", "int")]
)
def test_tagged_union_rejects_what_is_not_an_object(raw: bytes, kind: str) -> None:
    with pytest.raises(ClassValidationError) as caught:
        PROTOCOL.loads(raw, Command)  # type: ignore[arg-type]
    assert cattrs.transform_error(caught.value) == [
        f"invalid type (expected an object, got {kind}) @ $"
    ]


def test_tagged_union_errors_inside_a_record_carry_the_path() -> None:
    raw = as_json(Batch(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), Cancel("j")))
    raw["rest"] = [{"type": "Launch"}]
    with pytest.raises(ClassValidationError) as caught:
        PROTOCOL.structure(raw, Batch)
    assert cattrs.transform_error(caught.value) == [
        f"invalid value for type, expected {Command!r} @ $.rest[0].type"
    ]


@pytest.mark.parametrize("cls", PROJECT_CLASSES + PROTOCOL_CLASSES, ids=lambda cls: cls.__name__)
@CODEC
@given(data=st.data())
def test_unknown_key_is_rejected_by_name(cls: type[Any], data: st.DataObject) -> None:
    record = data.draw(instances_of(cls), label=cls.__name__)
    key = data.draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in field_names(cls)))
    raw = as_json(record)
    raw[key] = data.draw(JSON_VALUES)
    with pytest.raises(ClassValidationError) as caught:
        converter_for(cls).loads(orjson.dumps(raw), cls)
    assert forbidden_keys(caught.value) == [{key}]
    assert cattrs.transform_error(caught.value) == [f"extra fields found ({key}) @ $"]


@CODEC
@given(data=st.data())
def test_unknown_key_in_a_nested_record_is_rejected_with_its_path(data: st.DataObject) -> None:
    job = data.draw(instances_of(actors.model.Job).filter(lambda job: job.usage is not None))
    raw = as_json(job)
    raw["usage"]["surprise"] = 1
    with pytest.raises(ClassValidationError) as caught:
        codec.structure(raw, actors.model.Job)
    assert forbidden_keys(caught.value) == [{"surprise"}]
    assert cattrs.transform_error(caught.value) == ["extra fields found (surprise) @ $.usage"]


def test_unknown_key_in_a_tagged_union_member_is_rejected() -> None:
    raw = as_json(Batch(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), Cancel("j")))
    raw["first"]["surprise"] = True
    with pytest.raises(ClassValidationError) as caught:
        PROTOCOL.structure(raw, Batch)
    assert forbidden_keys(caught.value) == [{"surprise"}]
    assert cattrs.transform_error(caught.value) == ["extra fields found (surprise) @ $.first"]


def test_a_tagged_union_stays_with_the_converter_built_for_it() -> None:
    def keys(converter: OrjsonConverter) -> set[str]:
        return set(orjson.loads(converter.dumps(Cancel("j"), unstructure_as=Command)))

    assert keys(PROTOCOL) == {"type", "job_id", "reason"}
    assert keys(codec.converter) == {"job_id", "reason"}
    assert keys(make_converter()) == {"job_id", "reason"}


@pytest.mark.parametrize(
    ("value", "cls"),
    [
        (1, str),
        (None, str),
        ("1", int),
        (True, int),
        (1.0, int),
        ("no", bool),
        (0, bool),
        ("1.5", float),
        (True, float),
    ],
)
def test_a_scalar_of_another_json_type_is_refused(value: Any, cls: type[Any]) -> None:
    with pytest.raises(WrongType):
        codec.structure(value, cls)


def test_an_integer_is_a_number() -> None:
    decoded = codec.structure(2, float)
    assert decoded == 2.0
    assert type(decoded) is float

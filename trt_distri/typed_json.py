"""JSON objects <-> frozen dataclasses, checked against the annotations (the manifest's reader and writer).

`decode(cls, value, where)` builds `cls` from a parsed JSON value and raises `FieldError` naming the first field
that is missing or of the wrong type (`plan.levels[0].rows: expected int, got 'x'`); `encode(record)` is the
inverse. Supported annotations: bool, int, float, str, Enum subclasses, `X | None`, unions, `tuple[X, ...]`,
`tuple[X, Y]`, `dict[str, X]`, `dict` (any JSON object) and nested dataclasses. A field's JSON key is its name,
or `metadata={"key": ...}` where the name cannot be (`class`); `metadata={"json": False}` keeps a field out of
the JSON (a work directory's path); an optional field (default None) that is None is left out. Keys the record
does not declare are ignored.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class FieldError(Exception):
    """A JSON value does not fit its record: `where` names the field, `expected` and `got` say how."""

    def __init__(self, where: str, expected: str, got: object) -> None:
        shown = "nothing (the field is missing)" if got is _MISSING else repr(got)[:80]
        super().__init__(f"{where or 'the document'}: expected {expected}, got {shown}")
        self.where, self.expected, self.got = where, expected, got


_MISSING = object()


def decode(cls: type[T], value: Any, where: str = "", **extra: Any) -> T:
    """`cls` (a dataclass) from the JSON value `value`; `extra` fills fields kept out of the JSON."""
    if not isinstance(value, dict):
        raise FieldError(where, f"an object ({cls.__name__})", value)
    kwargs = dict(extra)
    for name, key, hint, required in _fields(cls):
        inner = f"{where}.{key}" if where else key
        if key in value:
            kwargs[name] = _value(hint, value[key], inner)
        elif required:
            raise FieldError(inner, _describe(hint), _MISSING)
    return cls(**kwargs)


def encode(record: Any) -> Any:
    """The JSON value of a record (dataclasses, enums, tuples, dicts, scalars)."""
    if dataclasses.is_dataclass(record):
        return {f.metadata.get("key", f.name): encode(getattr(record, f.name)) for f in dataclasses.fields(record)
                if f.metadata.get("json", True) and not (f.default is None and getattr(record, f.name) is None)}
    if isinstance(record, enum.Enum):
        return record.value
    if isinstance(record, (list, tuple)):
        return [encode(v) for v in record]
    if isinstance(record, dict):
        return {k: encode(v) for k, v in record.items()}
    return record


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, str, Any, bool], ...]:
    """(name, JSON key, annotation, required) of each field of `cls` that is in the JSON."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, f.metadata.get("key", f.name), hints[f.name],
                  f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                 for f in dataclasses.fields(cls) if f.metadata.get("json", True))


def _value(hint: Any, value: Any, where: str) -> Any:
    if hint in _SCALARS:  # most values of a manifest: skip the generic-alias inspection below
        return _scalar(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _union(hint, args, value, where)
    if origin is tuple:
        return _tuple(hint, args, value, where)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise FieldError(where, _describe(hint), value)
        return {k: _value(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if dataclasses.is_dataclass(hint):
        return decode(hint, value, where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise FieldError(where, _describe(hint), value) from None
    return _scalar(hint, value, where)


def _union(hint: Any, args: tuple, value: Any, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    for arg in (a for a in args if a is not type(None)):
        try:
            return _value(arg, value, where)
        except FieldError as exc:
            if exc.where != where:  # the value has the right shape but something inside it is wrong
                raise
    raise FieldError(where, _describe(hint), value)


def _tuple(hint: Any, args: tuple, value: Any, where: str) -> tuple:
    if not isinstance(value, list):
        raise FieldError(where, _describe(hint), value)
    if len(args) == 2 and args[1] is Ellipsis:
        if args[0] in (int, str) and all(type(v) is args[0] for v in value):  # shapes, names: all fit, none to name
            return tuple(value)
        return tuple(_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise FieldError(where, _describe(hint), value)
    return tuple(_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


_SCALARS = frozenset((bool, int, float, str))


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"typed_json cannot read annotation {hint!r} (at {where})")
    if not ok:
        raise FieldError(where, _describe(hint), value)
    return value


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin is dict or hint is dict:
        return "an object"
    if dataclasses.is_dataclass(hint):
        return f"an object ({hint.__name__})"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    return getattr(hint, "__name__", str(hint))

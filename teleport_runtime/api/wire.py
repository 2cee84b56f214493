"""The JSON form of the API's dataclasses, written once: :class:`Message` turns a dataclass into
its JSON object and back, checking an incoming object against the fields its class declares
(:func:`~teleport_runtime.httpjson.check_body`) before any value is used."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from teleport_runtime.errors import BadParameter
from teleport_runtime.httpjson import Field, check_body

__all__ = ["Document", "Field", "Message"]


class Message:
    """Base of the API's dataclasses.

    ``FIELDS`` declares what an incoming object may hold (types, sizes, required fields): a
    request body is checked against it where it enters, so a handler never sees a wrong type.
    ``OMIT_NONE`` names keys left out of the JSON form when their value is None (optional
    fields the server sends only when set).
    """

    FIELDS: ClassVar[Mapping[str, Field]] = {}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self.OMIT_NONE:
                continue
            out[f.name] = encode(value)
        return out

    @classmethod
    def from_json(cls, data: object, what: str = "") -> Self:
        """The message in ``data``; BadParameter naming ``what`` (the endpoint) and the field
        when ``data`` does not hold what the class declares. ``null`` counts as absent."""
        what = what or cls.__name__
        if not isinstance(data, dict):
            raise BadParameter(f"{what}: expected a JSON object, got {type(data).__name__}")
        if cls.FIELDS:
            check_body(data, cls.FIELDS, what)
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = data.get(f.name)
            if value is not None:
                kwargs[f.name] = _decode(hints[f.name], value, f"{what}: {f.name!r}")
        try:
            return cls(**kwargs)
        except TypeError:
            missing = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                       if f.name not in kwargs and f.default is dataclasses.MISSING
                       and f.default_factory is dataclasses.MISSING]
            raise BadParameter(f"{what}: missing {', '.join(missing)}") from None

    @classmethod
    def list_from_json(cls, data: object, what: str = "") -> list[Self]:
        if not isinstance(data, list):
            raise BadParameter(f"{what or cls.__name__}: expected a JSON list, got {type(data).__name__}")
        return [cls.from_json(item, what) for item in data]


class Document(Message):
    """An open JSON object (an audit event, a recording's metadata, a session in progress):
    its keys are the record's own, kept as they came, with typed accessors on the subclass."""

    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.fields)

    @classmethod
    def from_json(cls, data: object, what: str = "") -> Self:
        if not isinstance(data, dict):
            raise BadParameter(f"{what or cls.__name__}: expected a JSON object, got {type(data).__name__}")
        if cls.FIELDS:
            check_body(data, cls.FIELDS, what or cls.__name__)
        return cls(dict(data))  # type: ignore[call-arg]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


def encode(value: Any) -> Any:
    """``value`` as JSON: messages by their ``to_json``, bytes as text, tuples as lists."""
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _decode(hint: Any, value: Any, what: str) -> Any:
    """``value`` (already checked by the class's ``FIELDS`` where it is a request) as ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _decode(options[0], value, what) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Message):
        return hint.from_json(value, what)
    if hint is bytes:
        return _expect(value, str, what).encode()
    if hint is str:
        return _expect(value, str, what)
    if hint is bool:
        return _expect(value, bool, what)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadParameter(f"{what} must be a number, got {type(value).__name__}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadParameter(f"{what} must be an integer, got {type(value).__name__}")
        return value
    if origin in (tuple, list):
        items = _expect(value, list, what)
        args = typing.get_args(hint)
        item_hint = args[0] if args else Any
        decoded = [_decode(item_hint, v, what) for v in items]
        return tuple(decoded) if origin is tuple else decoded
    if origin is dict:
        mapping = _expect(value, dict, what)
        args = typing.get_args(hint)
        return {k: _decode(args[1], v, what) for k, v in mapping.items()} if args else dict(mapping)
    return value


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise BadParameter(f"{what} must be a {kind.__name__}, got {type(value).__name__}")
    return value

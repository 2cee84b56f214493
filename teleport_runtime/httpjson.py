"""JSON over HTTP, as the auth API and the proxy's web API both speak it: request bodies are
JSON objects, errors are ``{"error": {"code", "message"}}`` with the error's HTTP status.

Each endpoint's body is checked where it enters (:func:`check_body` against the fields it
declares): a value of the wrong type, a missing field or an oversized string is a 400 naming the
field and what it should be, before any handler or service code sees it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the server side loads aiohttp.web; clients (tctl, via api.wire) need not
    from aiohttp import web

from teleport_runtime.errors import BadParameter, TeleportError

#: The longest string field a body may hold unless its field says otherwise (keys, passwords,
#: names: all far shorter).
MAX_STRING = 16 * 1024
#: How deep a body's JSON may nest (the parser would otherwise recurse without bound).
MAX_DEPTH = 32


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; BadParameter otherwise."""
    from aiohttp import web

    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BadParameter(f"request body is too large ({exc.text}): send a smaller body") from None
    except (ValueError, RecursionError):
        raise BadParameter("request body is not JSON: send a JSON object") from None
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    if _depth(body) > MAX_DEPTH:
        raise BadParameter(f"request body nests deeper than {MAX_DEPTH} levels")
    return body


def query_int(request: web.Request, name: str, problem: str) -> int:
    """The query parameter ``name`` as a whole number of ASCII digits (``int()`` alone would also
    take ``+1``, `` 1``, ``1_0`` and other scripts' digits); BadParameter(``problem``) otherwise."""
    text = request.query.get(name, "")
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise BadParameter(f"{problem}, got {text!r}")
    return int(text)


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


@dataclass(frozen=True)
class Field:
    """What a body field must hold.

    ``kind``: ``string``, ``strings`` (a list of strings), ``labels`` (an object of string keys
    to string, number or boolean values), ``object``, ``bool``, ``duration`` (a string such as
    ``5m`` or a number of seconds), ``scalar`` (string, number, boolean or null).
    ``example`` is shown in the error, as the fix.
    """

    kind: str
    required: bool = False
    example: str = ""
    max_len: int = MAX_STRING
    max_items: int = 256
    #: Text that is ASCII by its format (SSH and PEM public keys).
    ascii: bool = False


_EXPECTED = {
    "string": "a string",
    "strings": "a list of strings",
    "labels": "an object of names to strings",
    "object": "an object",
    "bool": "true or false",
    "duration": "a duration such as 5m or 1h30m",
    "scalar": "a string, number or boolean",
}


def check_body(body: Mapping[str, Any], fields: Mapping[str, Field], what: str) -> None:
    """BadParameter naming ``what`` (the endpoint), the field and the expected value, for the
    first field of ``body`` that does not hold what ``fields`` declares. Fields not declared are
    left to the handler; ``null`` counts as absent."""
    for name, spec in fields.items():
        value = body.get(name)
        if value is None:
            if spec.required:
                raise BadParameter(f"{what}: {name!r} is required: {_expected(spec)}")
            continue
        problem = _problem(value, spec)
        if problem:
            raise BadParameter(f"{what}: {name!r} {problem}: {_expected(spec)}")


def _expected(spec: Field) -> str:
    text = f"expected {_EXPECTED[spec.kind]}"
    return f"{text}, such as {spec.example}" if spec.example else text


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _string_problem(value: Any, spec: Field) -> str:
    if not isinstance(value, str):
        return f"is {_type_name(value)}"
    if len(value) > spec.max_len:
        return f"is longer than {spec.max_len} characters"
    if "\x00" in value:
        return "holds a NUL character"
    if spec.ascii and not value.isascii():
        return "holds characters that are not ASCII"
    return ""


def _problem(value: Any, spec: Field) -> str:
    kind = spec.kind
    if kind == "string":
        return _string_problem(value, spec)
    if kind == "bool":
        return "" if isinstance(value, bool) else f"is {_type_name(value)}"
    if kind == "object":
        return "" if isinstance(value, dict) else f"is {_type_name(value)}"
    if kind == "scalar":
        if isinstance(value, str):
            return _string_problem(value, spec)
        return "" if isinstance(value, bool | int | float) else f"is {_type_name(value)}"
    if kind == "duration":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return f"is {_type_name(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return "is not a finite number"
        return _string_problem(value, spec) if isinstance(value, str) else ""
    if kind == "strings":
        if not isinstance(value, list):
            return f"is {_type_name(value)}"
        if len(value) > spec.max_items:
            return f"has more than {spec.max_items} items"
        for item in value:
            problem = _string_problem(item, spec)
            if problem:
                return f"holds an item that {problem}"
        return ""
    if kind == "labels":
        if not isinstance(value, dict):
            return f"is {_type_name(value)}"
        if len(value) > spec.max_items:
            return f"has more than {spec.max_items} entries"
        for key, item in value.items():
            if isinstance(item, dict | list) or item is None:
                return f"has {_type_name(item) if item is not None else 'null'} under {key!r}"
            problem = _string_problem(key, spec) or (
                _string_problem(item, spec) if isinstance(item, str) else ""
            )
            if problem:
                return f"has an entry that {problem}"
        return ""
    raise AssertionError(f"unknown field kind {kind!r}")


def error_response(exc: TeleportError) -> web.Response:
    from aiohttp import web

    return web.json_response({"error": exc.to_dict()}, status=exc.http_status)


def internal_error_response(service: str) -> web.Response:
    from aiohttp import web

    return web.json_response(
        {"error": {"code": "internal", "message": f"internal error, see the {service} log"}}, status=500
    )


#: A handler that answers a JSON value (or a response of its own).
JSONHandler = Callable[["web.Request"], Awaitable[Any]]


def json_route(handler: JSONHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler answering what ``handler`` returns as JSON (a response it builds
    itself, such as a stream, passes through)."""
    from aiohttp import web

    async def route(request: web.Request) -> web.StreamResponse:
        result = await handler(request)
        return result if isinstance(result, web.StreamResponse) else web.json_response(result)

    return route

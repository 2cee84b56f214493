"""Request paths with values in them: the one builder and the check every API client applies.

A value put into a path must stay one segment of it: a sign-up token ``../nodes`` must not turn
``/v1/signup/{token}`` into ``/v1/nodes``. URL libraries normalise ``..`` segments before sending
(yarl does) and servers decode ``%2F``/``%2E`` before routing (aiohttp does), so a value is
validated *and* quoted (:func:`api_path`), and the clients (the auth client, tsh's proxy client)
refuse any path that could leave its route whoever built it (:func:`check_request_path`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from teleport_runtime.errors import BadParameter

#: Percent-encoded '/', '\\' and '.': separators once a server (or a second hop) decodes them.
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|2e)", re.IGNORECASE)
#: Control characters, space, '\\' and '#': never part of a path this project sends.
_BAD_PATH_CHARS = re.compile(r"[\x00-\x20\x7f\\#]")
_BAD_QUERY_CHARS = re.compile(r"[\x00-\x20\x7f#]")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
MAX_PARAM_LENGTH = 1024
#: Tokens handed to users and hosts (sign-up and join tokens) are made of these.
URL_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


def check_path_param(value: object, what: str = "path parameter") -> str:
    """``value`` if it can be one path segment; BadParameter naming the problem otherwise."""
    problem = None
    if not isinstance(value, str):
        problem = f"expected a string, got {type(value).__name__}"
    elif not value:
        problem = "it is empty"
    elif len(value) > MAX_PARAM_LENGTH:
        problem = f"it is longer than {MAX_PARAM_LENGTH} characters"
    elif value in (".", ".."):
        problem = "'.' and '..' name other paths"
    elif "/" in value or "\\" in value:
        problem = "it contains a path separator ('/' or '\\')"
    elif re.search(r"[\x00-\x1f\x7f]", value):
        problem = "it contains a control character"
    elif _ENCODED_SEPARATOR.search(value):
        problem = "it contains an encoded separator (%2F, %5C or %2E)"
    if problem is not None:
        raise BadParameter(f"invalid {what} {value!r}: {problem}; pass the value exactly as it was issued")
    assert isinstance(value, str)
    return value


def check_url_token(value: object, what: str = "token") -> str:
    """A sign-up or join token as a path parameter: 1-256 URL-safe characters."""
    if not isinstance(value, str) or not URL_SAFE_TOKEN.fullmatch(value):
        raise BadParameter(
            f"invalid {what} {value!r}: expected 1-256 letters, digits, '-' or '_'; "
            "pass the token exactly as it was issued"
        )
    return value


def api_path(template: str, /, query: Mapping[str, object] | None = None, **params: str) -> str:
    """``template`` (a route as the server declares it, e.g. ``/v1/users/{name}/reset``) with
    each ``{placeholder}`` replaced by its value, validated (:func:`check_path_param`) and quoted
    with ``quote(safe="")``; ``query`` is appended URL-encoded."""
    names = _PLACEHOLDER.findall(template)
    if sorted(names) != sorted(params):
        raise ValueError(f"api_path({template!r}): parameters {sorted(params)} do not match the placeholders")
    path = _PLACEHOLDER.sub(lambda m: quote(check_path_param(params[m[1]], m[1]), safe=""), template)
    if query:
        path += "?" + urlencode({k: str(v) for k, v in query.items()}, quote_via=quote)
    return check_request_path(path)


def check_request_path(path: str) -> str:
    """``path`` (with its query) if it cannot reach another route than the one it names:
    absolute, no empty, ``.`` or ``..`` segment, no encoded separator, no ``\\``, control
    character, space or ``#``. BadParameter otherwise (before anything is sent)."""
    route, _, query = path.partition("?")
    problem = None
    if not route.startswith("/"):
        problem = "it does not start with '/'"
    elif _BAD_PATH_CHARS.search(route) or _BAD_QUERY_CHARS.search(query):
        problem = "it contains a control character, a space, '\\' or '#'"
    elif _ENCODED_SEPARATOR.search(route):
        problem = "it contains an encoded separator (%2F, %5C or %2E)"
    else:
        for segment in route.split("/")[1:]:
            if segment in ("", ".", ".."):
                problem = f"it has {'an empty' if not segment else repr(segment)} segment"
                break
    if problem is not None:
        raise BadParameter(
            f"refusing to request {path!r}: {problem}, so it could name another resource; "
            "a value in a path must be one segment (build the path with api_path)"
        )
    return path

"""JSON over HTTP, as the auth API and the proxy's web API both speak it: request bodies are
JSON objects, errors are ``{"error": {"code", "message"}}`` with the error's HTTP status."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from teleport_runtime.errors import BadParameter, TeleportError


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; BadParameter otherwise."""
    try:
        body = await request.json()
    except ValueError:
        raise BadParameter("request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    return body


def error_response(exc: TeleportError) -> web.Response:
    return web.json_response({"error": exc.to_dict()}, status=exc.http_status)


def internal_error_response(service: str) -> web.Response:
    return web.json_response(
        {"error": {"code": "internal", "message": f"internal error, see the {service} log"}}, status=500
    )

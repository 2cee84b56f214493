"""The error hierarchy shared by the runtime.

Errors cross a boundary once and are turned into that boundary's answer there: an HTTP status
with a JSON body in the auth API, an exit code and one line on stderr in the CLIs, an SSH
disconnect reason in the SSH services.
"""

from __future__ import annotations


class TeleportError(Exception):
    """Base class. ``code`` is a stable machine-readable name, ``http_status`` its HTTP answer."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadParameter(TeleportError):
    code = "bad_parameter"
    http_status = 400


class NotFound(TeleportError):
    code = "not_found"
    http_status = 404


class AlreadyExists(TeleportError):
    code = "already_exists"
    http_status = 409


class CompareFailed(TeleportError):
    code = "compare_failed"
    http_status = 412


class AccessDenied(TeleportError):
    code = "access_denied"
    http_status = 403


class EventRefused(AccessDenied):
    """An audit event its sender may not write (its type, time or size): final, since sending
    the same event again cannot succeed (the node's spool sets it aside instead of retrying)."""

    code = "event_refused"


class ConnectionProblem(TeleportError):
    code = "connection_problem"
    http_status = 502


class ServiceUnavailable(ConnectionProblem):
    """A service this one depends on (the PostgreSQL backend) is not answering: the request
    failed (a write cut off during its commit may still have been stored, as with any database);
    the same request may succeed once it is back."""

    code = "service_unavailable"
    http_status = 503


class LimitExceeded(TeleportError):
    code = "limit_exceeded"
    http_status = 429


class ConfigError(TeleportError):
    """A configuration problem; the message names the file, the key and the expected value."""

    code = "config"
    http_status = 400


ERRORS_BY_CODE: dict[str, type[TeleportError]] = {
    cls.code: cls
    for cls in (
        TeleportError,
        BadParameter,
        NotFound,
        AlreadyExists,
        CompareFailed,
        AccessDenied,
        EventRefused,
        ConnectionProblem,
        ServiceUnavailable,
        LimitExceeded,
        ConfigError,
    )
}


def error_from_dict(data: dict[str, str]) -> TeleportError:
    """Rebuild an error sent by :meth:`TeleportError.to_dict` on the other side of the API."""
    cls = ERRORS_BY_CODE.get(data.get("code", ""), TeleportError)
    return cls(data.get("message", "unknown error"))

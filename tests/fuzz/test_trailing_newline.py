"""Every validator of names, IDs and values refuses the value with a trailing newline (they use
``re.fullmatch``: ``^...$`` with ``re.match`` lets ``"value\\n"`` through, since ``$`` also
matches before a final newline). Normalisers that trim input (CA pins) return it without."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from teleport_runtime.auth.audit import AuditLog
from teleport_runtime.auth.recordings import _check_sha256
from teleport_runtime.backend import open_backend
from teleport_runtime.config import parse_host_port, parse_labels, validate_labels
from teleport_runtime.durations import parse_duration
from teleport_runtime.errors import BadParameter
from teleport_runtime.proxy.directory import check_target
from teleport_runtime.proxy.ssh import parse_proxy_subsystem
from teleport_runtime.rbac import match_labels, parse_role
from teleport_runtime.recording.asciicast import check_session_id

pytestmark = pytest.mark.fuzz

SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def role(name: str = "r", logins: tuple[str, ...] = ("root",)) -> dict[str, Any]:
    return {"kind": "role", "version": "v1", "metadata": {"name": name},
            "spec": {"allow": {"logins": list(logins), "node_labels": {"*": "*"}}}}


#: (what, validator, a good value): the validator accepts the value and refuses it + "\n".
VALIDATORS: list[tuple[str, Callable[[str], Any], str]] = [
    ("session ID", check_session_id, "0b7f6bd5-6a9e-4f8e-9d3a-2f0c2d6b1c11"),
    ("role name", lambda v: parse_role(role(name=v)), "auditor"),
    ("trait template", lambda v: parse_role(role(logins=(v,))), "{{internal.logins}}"),
    ("label key", lambda v: validate_labels({v: "prod"}, "labels"), "env"),
    ("label value", lambda v: validate_labels({"env": v}, "labels"), "prod"),
    ("label selector", lambda v: parse_labels(v, "--labels"), "env=prod,role=db"),
    ("recording sha256", _check_sha256, SHA),
    ("duration", parse_duration, "1h30m"),
    ("host:port", lambda v: parse_host_port(v, 3025, "addr"), "auth.example.com:3025"),
    ("node name", check_target, "node1"),
]


@pytest.mark.parametrize(("what", "validator", "good"), VALIDATORS, ids=[v[0] for v in VALIDATORS])
def test_validator_refuses_a_trailing_newline(what: str, validator: Callable[[str], Any], good: str) -> None:
    validator(good)
    with pytest.raises(BadParameter):
        validator(good + "\n")


@pytest.mark.parametrize("name", ["proxy:node1:3022@example.com\n", "proxy:node1\n", "proxy:[::1]:22\n"])
def test_proxy_subsystem_refuses_a_trailing_newline(name: str) -> None:
    parse_proxy_subsystem(name.rstrip("\n"))
    with pytest.raises(ValueError, match="subsystem"):
        parse_proxy_subsystem(name)


def test_label_regex_does_not_match_a_trailing_newline() -> None:
    """A role's ``^prod$`` selects the node labelled ``prod``, not one labelled ``prod\\n``."""
    assert match_labels({"env": ("^prod$",)}, {"env": "prod"})
    assert not match_labels({"env": ("^prod$",)}, {"env": "prod\n"})


async def test_audit_event_id_refuses_a_trailing_newline(tmp_path: Path) -> None:
    backend = open_backend({"type": "sqlite"}, tmp_path)
    try:
        audit = AuditLog(backend)
        event = {"event": "exec", "time": "2026-01-01T00:00:00+00:00"}
        await audit.emit({**event, "id": "0123456789abcdef"})
        with pytest.raises(BadParameter, match="expected 16 to 64 lower-case hex digits"):
            await audit.emit({**event, "id": "0123456789abcdee\n"})
    finally:
        await backend.close()

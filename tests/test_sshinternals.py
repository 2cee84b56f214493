"""The asyncssh internals teleport_runtime/sshinternals.py relies on are still there: an asyncssh
upgrade that renames or reshapes one fails here, naming it, instead of in a login or a relay."""

from __future__ import annotations

import inspect

import asyncssh
import pytest

from teleport_runtime.sshinternals import HOOKS, BufferingForwarder, supported_kex_algs

#: The parameters each overridden hook is called with (after ``self``).
EXPECTED = {
    "validate_public_key": ["username", "key_data", "msg", "signature"],
    "send_userauth_success": [],
    "check_key_permission": ["permission"],
    "create_agent_listener": [],
}


@pytest.mark.parametrize("name", HOOKS)
def test_each_overridden_connection_hook_exists_with_its_parameters(name: str) -> None:
    method = getattr(asyncssh.SSHServerConnection, name, None)
    assert method is not None, f"asyncssh.SSHServerConnection.{name} is gone"
    assert list(inspect.signature(method).parameters)[1:] == EXPECTED[name]


def test_the_connection_is_built_from_a_loop_and_options() -> None:
    params = list(inspect.signature(asyncssh.SSHServerConnection.__init__).parameters)
    assert params[1:3] == ["loop", "options"]


def test_the_forwarder_keeps_the_fields_the_buffering_forwarder_reads() -> None:
    forwarder = BufferingForwarder()
    assert forwarder._inpbuf == b""
    assert forwarder._eof_received is False
    assert forwarder._transport is None


def test_the_kex_list_holds_the_classic_exchanges() -> None:
    assert b"curve25519-sha256" in supported_kex_algs()


def test_the_server_process_is_built_and_started_as_the_relay_process_expects() -> None:
    params = list(inspect.signature(asyncssh.SSHServerProcess.__init__).parameters)
    assert params[1:5] == ["process_factory", "sftp_factory", "sftp_version", "allow_scp"]
    from asyncssh.stream import SSHReader, SSHServerStreamSession, SSHWriter

    assert "_session_factory" in inspect.getsource(SSHServerStreamSession.__init__)
    assert list(inspect.signature(SSHWriter.__init__).parameters)[1:4] == ["session", "chan", "datatype"]
    assert list(inspect.signature(SSHReader.__init__).parameters)[1:3] == ["session", "chan"]

"""Several auth servers on one PostgreSQL database, in process: the cluster and its CAs are created
once even when the servers start at the same moment, the CA private keys are sealed with the
key-encryption key, what one server changes the other enforces at once, and races between the
servers (a sign-up, a host's join, a rotation step) have exactly one winner."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest

from teleport_runtime.api.client import AuthClient
from teleport_runtime.api.types import JoinRequest
from teleport_runtime.auth.server import AuthServer
from teleport_runtime.backend import Item
from teleport_runtime.backend.postgres import PostgresBackend
from teleport_runtime.ca import CAType, generate_ssh_keypair, generate_tls_keypair, new_cert_authority
from teleport_runtime.ca.keywrap import CACodec, load_kek
from teleport_runtime.config import AuthConfig, HostPort
from teleport_runtime.errors import AccessDenied, BadParameter, CompareFailed, ConfigError, TeleportError
from teleport_runtime.identity import Identity
from tests.conftest import async_wait_for

PASSWORD = "correct horse battery staple"


def write_kek(path: Path, key: bytes | None = None) -> Path:
    path.write_text(base64.b64encode(key or os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


def auth_config(kek: Path | None) -> AuthConfig:
    return AuthConfig(enabled=True, listen_addr=HostPort("127.0.0.1", 0), cluster_name="ha.test",
                      ca_key_encryption_key_file=kek)


def server(tmp_path: Path, name: str, conn: str, kek: Path | None) -> AuthServer:
    return AuthServer(auth_config(kek), tmp_path / name, storage={"type": "postgresql", "conn_string": conn},
                      sweep_interval=None)


@pytest.fixture
async def pair(tmp_path: Path, pg_database: str) -> AsyncIterator[tuple[AuthServer, AuthServer]]:
    """Two auth servers on one database with one KEK, started at the same moment."""
    kek = write_kek(tmp_path / "ca-kek")
    one, two = server(tmp_path, "one", pg_database, kek), server(tmp_path, "two", pg_database, kek)
    try:
        await asyncio.gather(one.start(), two.start())
        yield one, two
    finally:
        await asyncio.gather(one.stop(), two.stop())


async def stored_ca(conn: str, ca_type: str = "host") -> dict[str, Any]:
    backend = PostgresBackend(conn, sweep_interval=None)
    try:
        return dict(json.loads((await backend.get(f"/authorities/{ca_type}")).value))
    finally:
        await backend.close()


async def test_servers_started_together_make_one_cluster_with_sealed_keys(
    pair: tuple[AuthServer, AuthServer], pg_database: str
) -> None:
    one, two = pair
    assert await one.service.ca_pins() == await two.service.ca_pins()
    for ca_type in (CAType.HOST, CAType.USER):
        assert (await one.service.get_ca(ca_type)).to_dict(True) == (await two.service.get_ca(ca_type)).to_dict(True)
    record = await stored_ca(pg_database)
    assert record["active"]["tls_key"].startswith("teleport-kek:v1:")
    assert record["active"]["ssh_private_key"].startswith("teleport-kek:v1:")
    assert "PRIVATE KEY" not in json.dumps(record)
    assert "BEGIN CERTIFICATE" in record["active"]["tls_cert"]  # public parts stay readable


async def test_a_server_without_the_kek_or_with_another_one_refuses_to_start(
    pair: tuple[AuthServer, AuthServer], tmp_path: Path, pg_database: str
) -> None:
    with pytest.raises(ConfigError, match="ca_key_encryption_key_file is not set"):
        await server(tmp_path, "nokek", pg_database, None).start()
    other = write_kek(tmp_path / "other-kek")
    with pytest.raises(ConfigError, match="give this auth server the same file"):
        await server(tmp_path, "otherkek", pg_database, other).start()


async def test_kek_file_is_checked(tmp_path: Path) -> None:
    loose = write_kek(tmp_path / "loose")
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_kek(loose)
    short = tmp_path / "short"
    short.write_text(base64.b64encode(b"x" * 16).decode())
    short.chmod(0o600)
    with pytest.raises(ConfigError, match=r"32-byte key.*head -c 32 /dev/urandom"):
        load_kek(short)
    with pytest.raises(ConfigError, match="cannot read"):
        load_kek(tmp_path / "missing")
    hexed = tmp_path / "hex"
    hexed.write_text("ab" * 32)
    hexed.chmod(0o600)
    assert load_kek(hexed) == b"\xab" * 32


async def test_a_sealed_key_moved_or_altered_does_not_open() -> None:
    codec = CACodec(os.urandom(32))
    host = new_cert_authority(CAType.HOST, "c")
    sealed = json.loads(codec.encode("/authorities/host", host))
    with pytest.raises(ConfigError, match="altered or moved"):
        codec.decode("/authorities/user", json.dumps(sealed).encode())
    sealed["active"]["tls_key"], sealed["active"]["ssh_private_key"] = (
        sealed["active"]["ssh_private_key"], sealed["active"]["tls_key"])
    with pytest.raises(ConfigError, match="altered or moved"):
        codec.decode("/authorities/host", json.dumps(sealed).encode())


async def test_an_unencrypted_cluster_is_sealed_on_upgrade(tmp_path: Path, pg_database: str) -> None:
    old = server(tmp_path, "old", pg_database, None)
    async with old:
        pin = await old.service.ca_pins()
    assert (await stored_ca(pg_database))["active"]["tls_key"].startswith("-----BEGIN")
    kek = write_kek(tmp_path / "ca-kek")
    async with server(tmp_path, "new", pg_database, kek) as new:
        assert await new.service.ca_pins() == pin
    for ca_type in ("host", "user"):
        assert (await stored_ca(pg_database, ca_type))["active"]["tls_key"].startswith("teleport-kek:v1:")


async def test_a_lock_and_a_removal_on_one_server_are_enforced_by_the_other(
    pair: tuple[AuthServer, AuthServer],
) -> None:
    one, two = pair
    host_uuid = str(uuid.uuid4())
    await join(one, host_uuid, "node7", (await one.service.tokens.create(["node"])).value)
    assert host_uuid not in (await two.api._trusted_cas()).locks  # the cache is loaded now
    await one.service.remove_host("node7")

    async def locked() -> bool:
        return host_uuid in (await two.api._trusted_cas()).locks

    await async_wait_for(locked, 10, what="the other server to see the lock")
    assert await two.service.hosts.binding(host_uuid) is None


async def test_a_role_change_on_one_server_holds_on_the_other(pair: tuple[AuthServer, AuthServer]) -> None:
    one, two = pair
    await one.service.users.add_user("carol", ["access"], ["root"])
    role = {"kind": "role", "version": "v1", "metadata": {"name": "access"},
            "spec": {"allow": {"logins": ["deploy"]}}}
    await one.service.users.upsert_role(role, force=True)
    role_set, _ = await two.service.role_set("carol")
    assert role_set.logins() == ["deploy"]


async def test_proxy_addresses_follow_records_written_through_the_other_server(
    pair: tuple[AuthServer, AuthServer],
) -> None:
    one, two = pair
    assert await two.service.presence._forbidden(set()) == set()  # loaded, nothing yet
    await one.service.presence.heartbeat(
        role="Proxy", host_uuid="p1", report={"addr": "10.1.2.3:3023"}, remote_ip="10.1.2.3",
        nodename="p1", cert_names=["10.1.2.3"])

    async def seen() -> bool:
        return ("10.1.2.3", 3023) in await two.service.presence._forbidden(set())

    await async_wait_for(seen, 10, what="the other server to see the proxy's address")


async def join(auth: AuthServer, host_uuid: str, nodename: str, token: str) -> Any:
    _priv, ssh_public = generate_ssh_keypair()
    _key, tls_public = generate_tls_keypair()
    request = JoinRequest.from_json({
        "token": token, "role": "node", "host_uuid": host_uuid, "nodename": nodename,
        "ssh_public_key": ssh_public, "tls_public_key": tls_public.decode(), "addresses": [],
    })
    return await auth.service.register(request, "127.0.0.1")


def winners(results: list[Any]) -> list[Any]:
    return [r for r in results if not isinstance(r, BaseException)]


async def test_two_servers_racing_on_one_token_and_host_uuid_bind_it_once(
    pair: tuple[AuthServer, AuthServer],
) -> None:
    one, two = pair
    token = (await one.service.tokens.create(["node"])).value
    host_uuid = str(uuid.uuid4())
    results = await asyncio.gather(join(one, host_uuid, "racer", token), join(two, host_uuid, "racer", token),
                                   return_exceptions=True)
    assert len(winners(results)) == 1, results
    assert all(isinstance(r, AccessDenied) for r in results if isinstance(r, BaseException)), results
    binding = await two.service.hosts.binding(host_uuid)
    assert binding is not None and sum(len(v) for v in binding.keys.values()) == 1


async def test_two_servers_racing_on_one_sign_up_let_one_win(pair: tuple[AuthServer, AuthServer]) -> None:
    one, two = pair
    invite = await one.service.users.add_user("dave", ["access"], ["root"])
    totp = pyotp.parse_uri((await two.service.users.signup_info(invite["token"]))["otpauth_uri"])
    code = totp.at(time.time() - totp.interval)
    results = await asyncio.gather(
        one.service.users.complete_signup(invite["token"], PASSWORD, code),
        two.service.users.complete_signup(invite["token"], "another password entirely", code),
        return_exceptions=True,
    )
    assert len(winners(results)) == 1, results
    assert all(isinstance(r, TeleportError) for r in results if isinstance(r, BaseException)), results


async def test_two_servers_racing_on_one_rotation_phase_let_one_win(pair: tuple[AuthServer, AuthServer]) -> None:
    one, two = pair
    results = await asyncio.gather(
        one.service.rotation.rotate("host", mode="manual", target_phase="init"),
        two.service.rotation.rotate("host", mode="manual", target_phase="init"),
        return_exceptions=True,
    )
    assert len(winners(results)) == 1, results
    assert all(isinstance(r, BadParameter | CompareFailed) for r in results if isinstance(r, BaseException))
    assert (await two.service.rotation.view("host"))["phase"] == "init"


async def test_both_rotation_timers_apply_a_due_step_once(pair: tuple[AuthServer, AuthServer]) -> None:
    """The timer runs on every auth server: a due step is applied by compare-and-swap, so the
    server that re-reads after losing finds nothing due."""
    one, two = pair
    await one.service.rotation.rotate("user", mode="auto", grace_period="1h")
    before = await one.service.rotation.view("user")
    due = await one.service.rotation.next_deadline()
    assert due is not None
    later = due + timedelta(seconds=1)  # the next step is due, the one after it not yet
    moved = await asyncio.gather(one.service.rotation.apply_due("user", later),
                                 two.service.rotation.apply_due("user", later))
    assert len([m for m in moved if m is not None]) == 1
    after = await two.service.rotation.view("user")
    assert after["phase"] != before["phase"]


async def test_an_item_written_under_the_ca_key_by_hand_is_not_trusted_without_decoding(
    pair: tuple[AuthServer, AuthServer],
) -> None:
    """A CA record swapped in by someone with database access but not the KEK: the sealed
    fields of another record do not open under this key."""
    one, _two = pair
    host = await one.backend.get("/authorities/host")
    user = await one.backend.get("/authorities/user")
    await one.backend.compare_and_swap(host, Item(key=host.key, value=user.value))
    with pytest.raises(ConfigError):
        await one.service.get_ca(CAType.HOST)


async def test_the_client_moves_to_the_other_server_and_stays_there(pair: tuple[AuthServer, AuthServer]) -> None:
    """A kept-alive connection to a server that went away fails over to the next address, and
    later calls start with the server that answered."""
    one, two = pair
    identity = Identity.load(one.data_dir / "admin")
    async with AuthClient.for_identity([one.addr, two.addr], identity) as client:
        assert (await client.status()).cluster == "ha.test"
        await one.stop()
        assert (await client.status()).cluster == "ha.test"
        await client.tokens()  # and the next call too
        assert client.addresses[client._preferred] == two.addr

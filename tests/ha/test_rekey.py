"""Re-keying the CA key-encryption key while two auth servers run on one PostgreSQL database:
``tctl auth rekey --new-key-file`` re-seals every CA under the new key; both servers open both
keys meanwhile (the key file holds both, read again when it changes); a CA written by a server
between the steps stays readable; afterwards only the new key opens the CAs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from teleport_runtime.auth.server import AuthServer
from teleport_runtime.backend.postgres import PostgresBackend
from teleport_runtime.ca import CAType
from teleport_runtime.ca.keywrap import kek_id
from teleport_runtime.config import AuthConfig, HostPort
from teleport_runtime.errors import ConfigError
from tests.conftest import TCTL


def key_line() -> tuple[bytes, str]:
    key = os.urandom(32)
    return key, base64.b64encode(key).decode()


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def server(tmp_path: Path, name: str, conn: str, kek: Path | None) -> AuthServer:
    config = AuthConfig(enabled=True, listen_addr=HostPort("127.0.0.1", 0), cluster_name="rekey.test",
                        ca_key_encryption_key_file=kek)
    return AuthServer(config, tmp_path / name, storage={"type": "postgresql", "conn_string": conn},
                      sweep_interval=None)


async def stored_kek_ids(conn: str) -> set[str]:
    backend = PostgresBackend(conn, sweep_interval=None)
    try:
        ids = set()
        for ca_type in ("host", "user"):
            record = json.loads((await backend.get(f"/authorities/{ca_type}")).value)
            for pair in [record["active"], *(record.get("additional_trusted") or [])]:
                for field in ("ssh_private_key", "tls_key"):
                    if pair.get(field):
                        ids.add(pair[field].split(":")[2] if pair[field].startswith("teleport-kek:") else "plain")
        return ids
    finally:
        await backend.close()


def tctl(tmp_path: Path, conn: str, kek: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    auth: dict[str, Any] = {"enabled": True, "cluster_name": "rekey.test", "listen_addr": "127.0.0.1:0"}
    if kek is not None:
        auth["ca_key_encryption_key_file"] = str(kek)
    config = tmp_path / "tctl.yaml"
    config.write_text(yaml.safe_dump({
        "version": "v3",
        "teleport": {"data_dir": str(tmp_path / "tctl-data"), "storage": {"type": "postgresql", "conn_string": conn}},
        "auth_service": auth, "ssh_service": {"enabled": False}, "proxy_service": {"enabled": False},
    }))
    return subprocess.run([TCTL, "-c", str(config), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
async def pair(tmp_path: Path, pg_database: str) -> AsyncIterator[tuple[AuthServer, AuthServer, Path, Path, str]]:
    _old, old_line = key_line()
    one_file = write_private(tmp_path / "one-kek", old_line + "\n")
    two_file = write_private(tmp_path / "two-kek", old_line + "\n")
    one, two = server(tmp_path, "one", pg_database, one_file), server(tmp_path, "two", pg_database, two_file)
    try:
        await asyncio.gather(one.start(), two.start())
        yield one, two, one_file, two_file, old_line
    finally:
        await asyncio.gather(one.stop(), two.stop())


async def private_keys(auth: AuthServer) -> list[Any]:
    return [(await auth.service.get_ca(t)).to_dict(True) for t in (CAType.HOST, CAType.USER)]


async def test_rekey_while_two_servers_run(pair: tuple[AuthServer, AuthServer, Path, Path, str], tmp_path: Path,
                                           pg_database: str) -> None:
    one, two, one_file, two_file, old_line = pair
    old_id = kek_id(base64.b64decode(old_line))
    before = await private_keys(one)
    pin = await one.service.ca_pins()
    assert await stored_kek_ids(pg_database) == {old_id}
    new, new_line = key_line()
    new_file = write_private(tmp_path / "new-kek", new_line + "\n")

    # Not yet in the configured file: refused, nothing changed.
    refused = await asyncio.to_thread(tctl, tmp_path, pg_database, one_file, "auth", "rekey",
                                      "--new-key-file", str(new_file))
    assert refused.returncode == 1
    assert f"cat {new_file} >> {one_file}" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert await stored_kek_ids(pg_database) == {old_id}

    # Step 1: the new key added to every server's file (the old one still seals).
    for file in (one_file, two_file):
        write_private(file, f"{old_line}\n{new_line}\n")
    # Step 2: re-seal every CA under the new key.
    done = await asyncio.to_thread(tctl, tmp_path, pg_database, one_file, "auth", "rekey",
                                   "--new-key-file", str(new_file))
    assert done.returncode == 0, done.stderr
    assert "re-sealed 2 CA record(s)" in done.stdout
    assert await stored_kek_ids(pg_database) == {kek_id(new)}
    assert await private_keys(one) == before and await private_keys(two) == before

    # A CA written meanwhile by a server whose file still seals with the old key: both read it.
    await two.service.rotation.rotate("host", mode="manual", target_phase="init")
    assert await stored_kek_ids(pg_database) == {old_id, kek_id(new)}
    assert (await one.service.rotation.view("host"))["phase"] == "init"
    assert (await private_keys(one)) == (await private_keys(two))
    pins = await two.service.ca_pins()  # the rotation's new key is trusted too
    assert pins[0] == pin[0] and len(pins) == 2

    # Step 3: the new key first everywhere, rekey again, then the old line removed.
    for file in (one_file, two_file):
        write_private(file, f"{new_line}\n{old_line}\n")
    again = await asyncio.to_thread(tctl, tmp_path, pg_database, one_file, "auth", "rekey",
                                    "--new-key-file", str(new_file))
    assert again.returncode == 0, again.stderr
    assert await stored_kek_ids(pg_database) == {kek_id(new)}
    for file in (one_file, two_file):
        write_private(file, f"{new_line}\n")
    after = await private_keys(one)
    assert after == await private_keys(two)
    assert await one.service.ca_pins() == pins
    # A server given only the old key no longer starts; one with only the new key does.
    old_only = write_private(tmp_path / "old-only", old_line + "\n")
    with pytest.raises(ConfigError, match="give this auth server the same file"):
        await server(tmp_path, "stale", pg_database, old_only).start()
    async with server(tmp_path, "fresh", pg_database, new_file) as fresh:
        assert await fresh.service.ca_pins() == pins
        assert await private_keys(fresh) == after


async def test_rekey_needs_a_configured_key(tmp_path: Path, pg_database: str) -> None:
    async with server(tmp_path, "plain", pg_database, None):
        pass
    _new, new_line = key_line()
    new_file = write_private(tmp_path / "new-kek", new_line + "\n")
    refused = await asyncio.to_thread(tctl, tmp_path, pg_database, None, "auth", "rekey", "--new-key-file",
                                      str(new_file))
    assert refused.returncode == 1
    assert "auth_service.ca_key_encryption_key_file is not set" in refused.stderr
    assert await stored_kek_ids(pg_database) == {"plain"}

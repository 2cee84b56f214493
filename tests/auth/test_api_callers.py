"""Who is calling the auth API, on a connection kept across requests (agents keep theirs across
heartbeats): the certificate is checked again once the CAs change, and refused once it expired."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid as uuidlib
from datetime import timedelta
from pathlib import Path

from teleport_runtime.api.names import API_SERVER_NAME
from teleport_runtime.auth.service import AUTHORITIES_PREFIX
from teleport_runtime.backend import Item
from teleport_runtime.ca import (
    CAType,
    TLSIdentity,
    generate_tls_identity_cert,
    generate_tls_keypair,
    new_cert_authority,
)
from tests.proxy.harness import CLUSTER, LocalCluster

#: Bound on waiting for a short-lived certificate to expire.
EXPIRY_WAIT = 30.0


class Connection:
    """One mutual-TLS connection to the auth API, HTTP/1.1 keep-alive, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, local: LocalCluster, cert: bytes, key: bytes, tmp: Path) -> Connection:
        (tmp / "cert.pem").write_bytes(cert)
        (tmp / "key.pem").write_bytes(key)
        cas = await local.auth.public_cas()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata="".join(cas["host_ca_certs"]))
        ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        reader, writer = await asyncio.open_connection(local.addr.host, local.addr.port, ssl=ctx,
                                                       server_hostname=API_SERVER_NAME)
        return cls(reader, writer)

    async def get(self, path: str) -> tuple[int, object]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {API_SERVER_NAME}\r\n\r\n".encode())
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


async def node_cert(local: LocalCluster, ttl: timedelta) -> tuple[bytes, bytes]:
    host_ca = await local.auth.get_ca(CAType.HOST)
    key, public = generate_tls_keypair()
    host_uuid = str(uuidlib.uuid4())
    cert = generate_tls_identity_cert(
        host_ca.active, public,
        TLSIdentity(name=f"{host_uuid}.{CLUSTER}", kind="host", roles=["Node"], cluster=CLUSTER,
                    host_uuid=host_uuid, nodename="kept"),
        ttl=ttl,
    )
    return cert, key


async def test_kept_connection_is_checked_again_when_the_cas_change(local_cluster, tmp_path):
    conn = await Connection.open(local_cluster, *await node_cert(local_cluster, timedelta(hours=1)), tmp_path)
    try:
        for _ in range(3):
            status, body = await conn.get("/v1/nodes")
            assert status == 200, body
        # A new host CA (as if the old one had been rotated out): the node's certificate, on the
        # connection it already holds, is no longer issued by a trusted CA.
        replacement = new_cert_authority(CAType.HOST, CLUSTER)
        await local_cluster.backend.put(
            Item(f"{AUTHORITIES_PREFIX}host", json.dumps(replacement.to_dict(True)).encode())
        )
        status, body = await conn.get("/v1/nodes")
        assert status == 403, body
        assert body["error"]["code"] == "access_denied"
        assert "not issued by the expected CA" in body["error"]["message"]
    finally:
        conn.close()


async def test_kept_connection_is_refused_once_its_certificate_expired(local_cluster, tmp_path):
    conn = await Connection.open(local_cluster, *await node_cert(local_cluster, timedelta(seconds=3)), tmp_path)
    try:
        status, body = await conn.get("/v1/nodes")
        assert status == 200, body
        deadline = asyncio.get_running_loop().time() + EXPIRY_WAIT
        while status == 200:
            assert asyncio.get_running_loop().time() < deadline, "an expired certificate was still accepted"
            await asyncio.sleep(0.5)
            status, body = await conn.get("/v1/nodes")
        assert status == 403, body
        assert "expired" in body["error"]["message"]
    finally:
        conn.close()

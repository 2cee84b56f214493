"""4. Auth service scale: simulated nodes heartbeating over real mutual TLS, and the join rate.

A fresh auth service (``teleport start``, SQLite backend, default 10 min presence TTL). Each
simulated node has its own host identity (a TLS certificate from the host CA with its own host
UUID; the nodes share one key pair, which changes nothing on the auth side) and sends each
heartbeat as the real agent does at the default 60 s interval: a new TLS connection (the agent's
HTTP keep-alive is shorter than its interval), ``POST /v1/heartbeat``, the answer. Worker processes
(not the auth's) run the nodes, many connections in flight each.

Phases: every node registers (one heartbeat each); then heartbeats for a fixed time, cycling over
all nodes as fast as the auth service answers (sustained heartbeats/s, auth CPU); then
``tctl nodes ls``. Join: ``POST /v1/join`` with fresh keys, the certificate issuance rate. None of
this has an OpenSSH peer; the same-run reference is ``ssh-keygen -s`` signing host certificates.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sqlite3
import ssl
import subprocess
import time
import uuid as uuidlib
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.env import cpu_seconds
from bench.figures import Figure
from teleport_runtime.agent.client import API_SERVER_NAME, AuthClient, insecure_ssl_context, trusting_ssl_context
from teleport_runtime.ca import (
    CertAuthority,
    TLSIdentity,
    generate_ssh_keypair,
    generate_tls_identity_cert,
    generate_tls_keypair,
)
from teleport_runtime.config import HostPort
from tests.conftest import Cluster

SECTION = "auth scale"
CLUSTER = "scale.test"
#: Heartbeats in flight per worker process.
IN_FLIGHT = 64
#: Joins in flight.
JOIN_IN_FLIGHT = 16
#: Bound on one heartbeat (connect, TLS, request, answer).
HEARTBEAT_TIMEOUT = 30.0
#: ssh-keygen -s runs for the reference rate.
KEYGEN_RUNS = 40


# ---------------------------------------------------------------------------- identities


def _host_ca(cluster: Cluster) -> CertAuthority:
    """The host CA as the auth service stored it (read-only, next to the running service)."""
    db = cluster.data_dir / "backend" / "sqlite.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (value,) = conn.execute("SELECT value FROM kv WHERE key = '/authorities/host'").fetchone()
    finally:
        conn.close()
    return CertAuthority.from_dict(json.loads(value))


def _sign(args: tuple[dict[str, Any], bytes, list[str]]) -> list[bytes]:
    ca_dict, public, uuids = args
    ca = CertAuthority.from_dict(ca_dict)
    return [
        generate_tls_identity_cert(
            ca.active, public,
            TLSIdentity(name=f"{u}.{CLUSTER}", kind="host", roles=["Node"], cluster=CLUSTER, host_uuid=u,
                        nodename=f"sim-{u[:8]}"),
            ttl=timedelta(hours=2),
        )
        for u in uuids
    ]


def make_identities(cluster: Cluster, count: int, workdir: Path, workers: int) -> list[str]:
    """``count`` node identities under ``workdir``: ``key.pem``, ``ca.pem``, ``<uuid>.pem``."""
    ca = _host_ca(cluster)
    key, public = generate_tls_keypair()
    (workdir / "key.pem").write_bytes(key)
    (workdir / "ca.pem").write_bytes(b"".join(ca.trusted_tls_certs()))
    uuids = [str(uuidlib.uuid4()) for _ in range(count)]
    chunks = [uuids[i::workers * 4] for i in range(workers * 4)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        signed = pool.map(_sign, [(ca.to_dict(True), public, chunk) for chunk in chunks])
    for chunk, certs in zip(chunks, signed, strict=True):
        for u, cert in zip(chunk, certs, strict=True):
            (workdir / f"{u}.pem").write_bytes(cert)
    return uuids


# ---------------------------------------------------------------------------- simulated nodes


async def _heartbeat(host: str, port: int, workdir: Path, ca: str, node: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca)
    ctx.load_cert_chain(workdir / f"{node}.pem", workdir / "key.pem")
    body = json.dumps({"hostname": f"sim-{node[:8]}", "addr": f"127.0.0.1:{3022}",
                       "labels": {"sim": "true", "group": node[0]}}).encode()
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=API_SERVER_NAME)
    try:
        writer.write(
            b"POST /v1/heartbeat HTTP/1.1\r\nHost: " + API_SERVER_NAME.encode()
            + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        status = await reader.readline()
        if b" 200 " not in status:
            rest = await reader.read(2000)
            raise RuntimeError(f"{status.decode(errors='replace').strip()} {rest[-300:]!r}")
        await reader.read()
    finally:
        writer.close()


async def _drive(host: str, port: int, workdir: Path, nodes: list[str], duration: float | None) -> dict[str, Any]:
    """Each node once (``duration`` None), or cycle over the nodes until ``duration`` is up."""
    ca = (workdir / "ca.pem").read_text()
    ok = 0
    errors: list[str] = []
    failed = 0
    position = 0
    deadline = None if duration is None else time.monotonic() + duration

    async def lane() -> None:
        nonlocal ok, failed, position
        while True:
            if deadline is None:
                if position >= len(nodes):
                    return
            elif time.monotonic() >= deadline:
                return
            node = nodes[position % len(nodes)]
            position += 1
            try:
                await asyncio.wait_for(_heartbeat(host, port, workdir, ca, node), HEARTBEAT_TIMEOUT)
                ok += 1
            except (OSError, RuntimeError, TimeoutError, ssl.SSLError) as exc:
                failed += 1
                if len(errors) < 5:
                    errors.append(repr(exc))

    start = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return {"ok": ok, "failed": failed, "errors": errors, "seconds": time.monotonic() - start}


def _worker(args: tuple[str, int, str, list[str], float | None]) -> dict[str, Any]:
    host, port, workdir, nodes, duration = args
    return asyncio.run(_drive(host, port, Path(workdir), nodes, duration))


def heartbeats(cluster: Cluster, uuids: list[str], workdir: Path, workers: int,
               duration: float | None) -> dict[str, Any]:
    """Run the simulated nodes in ``workers`` processes; totals, wall time and the auth's CPU."""
    assert cluster.auth is not None
    pid = cluster.auth.pid
    slices = [uuids[i::workers] for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(abs, range(workers))  # the workers are up before the clock starts
        cpu0 = cpu_seconds(pid)
        results = pool.map(_worker, [(cluster.host, cluster.port, str(workdir), s, duration) for s in slices])
        cpu = cpu_seconds(pid) - cpu0
    wall = max(r["seconds"] for r in results)  # the workers' own clocks: no process start-up
    ok = sum(r["ok"] for r in results)
    return {"ok": ok, "failed": sum(r["failed"] for r in results), "wall_s": wall, "per_s": ok / wall,
            "auth_cpu_cores": cpu / wall, "auth_cpu_ms_per_heartbeat": 1000 * cpu / max(ok, 1),
            "errors": [e for r in results for e in r["errors"]][:5]}


# ---------------------------------------------------------------------------- join


async def _joins(cluster: Cluster, token: str, count: int) -> dict[str, Any]:
    ca_certs = [c.encode() for c in (await _public_cas(cluster))]
    keys = [(generate_ssh_keypair()[1], generate_tls_keypair()[1]) for _ in range(count)]
    client = AuthClient([HostPort(cluster.host, cluster.port)], trusting_ssl_context(ca_certs))
    limit = asyncio.Semaphore(JOIN_IN_FLIGHT)
    failed: list[str] = []

    async def join(i: int) -> None:
        ssh_public, tls_public = keys[i]
        async with limit:
            try:
                await client.post("/v1/join", {
                    "token": token, "role": "node", "host_uuid": str(uuidlib.uuid4()), "nodename": f"join-{i}",
                    "ssh_public_key": ssh_public, "tls_public_key": tls_public.decode(), "addresses": ["127.0.0.1"],
                })
            except Exception as exc:  # counted and reported, the run goes on
                failed.append(repr(exc))

    async with client:
        start = time.monotonic()
        await asyncio.gather(*(join(i) for i in range(count)))
        wall = time.monotonic() - start
    return {"count": count, "failed": len(failed), "errors": failed[:5], "wall_s": wall,
            "per_s": (count - len(failed)) / wall}


async def _public_cas(cluster: Cluster) -> list[str]:
    async with AuthClient([HostPort(cluster.host, cluster.port)], insecure_ssl_context(), verify_name=False) as c:
        return (await c.get("/v1/ca"))["host_ca_certs"]


def keygen_rate(workdir: Path) -> float:
    """``ssh-keygen -s`` host certificates signed per second (one process per certificate)."""
    ca, host = workdir / "keygen_ca", workdir / "keygen_host"
    for key in (ca, host):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    start = time.monotonic()
    for i in range(KEYGEN_RUNS):
        subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", f"host-{i}", "-h", "-n",
                        f"host-{i},host-{i}.{CLUSTER},127.0.0.1", "-V", "+1h", f"{host}.pub"],
                       check=True, capture_output=True)
    return KEYGEN_RUNS / (time.monotonic() - start)


# ---------------------------------------------------------------------------- the section


def run(root: Path, node_counts: list[int], duration: float, joins: int, workers: int
        ) -> tuple[list[Figure], dict[str, Any]]:
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root, CLUSTER)
    details: dict[str, Any] = {}
    figures: list[Figure] = []
    try:
        cluster.start()
        keygen = keygen_rate(root)
        keygen_name = f"ssh-keygen -s host certs ({keygen:.0f}/s)"
        token = cluster.add_token(roles="node", ttl="1h")["token"]
        join = asyncio.run(_joins(cluster, token, joins))
        details["join"] = join
        details["ssh_keygen_per_s"] = keygen
        figures.append(Figure(SECTION, f"joins (certificate issuance), {joins} in a row", join["per_s"], "joins/s",
                              keygen, keygen_name, "higher", 500, target_is_ratio=False,
                              note=f"{join['failed']} failed"))
        uuids: list[str] = []
        for count in sorted(node_counts):
            made = time.monotonic()
            new = make_identities(cluster, count - len(uuids), root, workers)
            made = time.monotonic() - made
            register = heartbeats(cluster, new, root, workers, None)  # the new nodes' first heartbeat
            uuids += new
            sustained = heartbeats(cluster, uuids, root, workers, duration)
            start = time.monotonic()
            listing = cluster.tctl("nodes", "ls")
            ls_s = time.monotonic() - start
            listed = len(listing.stdout.splitlines()) - 2
            details[str(count)] = {"identities_s": made, "register": register, "sustained": sustained,
                                   "tctl_nodes_ls_s": ls_s, "listed": listed}
            figures += [
                Figure(SECTION, f"{count} nodes: sustained heartbeats/s", sustained["per_s"], "heartbeats/s",
                       better="higher", target=2000, target_is_ratio=False,
                       note=f"{sustained['failed']} failed; auth CPU {sustained['auth_cpu_cores']:.2f} cores, "
                            f"{sustained['auth_cpu_ms_per_heartbeat']:.2f} ms/heartbeat"),
                Figure(SECTION, f"{count} nodes: auth CPU while sustained", sustained["auth_cpu_cores"], "cores",
                       note=f"{sustained['auth_cpu_ms_per_heartbeat']:.2f} ms CPU per heartbeat"),
                Figure(SECTION, f"{count} nodes: tctl nodes ls", ls_s * 1000, "ms",
                       note=f"listed {listed} of {count} nodes"),
            ]
    finally:
        cluster.kill_all()
    return figures, details

"""4. Auth service scale: simulated nodes heartbeating over real mutual TLS, and the join rate.

A fresh auth service (``teleport start``, SQLite backend, default 10 min presence TTL). Each
simulated node has its own host identity (a TLS certificate from the host CA with its own host
UUID; the nodes share one key pair, which changes nothing on the auth side) and behaves like the
real agent: one connection to the auth service, kept across its heartbeats (HTTP/1.1 keep-alive),
``POST /v1/heartbeat`` on it. Worker processes (not the auth's) run the nodes, spread over source
addresses on 127.0.0.0/8 (one address's ephemeral ports would not do for tens of thousands).

Phases per node count: every new node registers (its first heartbeat, on a new connection: the
TLS handshake rate); then heartbeats for a fixed time from every connected node, round robin, as
fast as the auth service answers (sustained heartbeats/s, auth CPU and memory); then ``tctl nodes
ls``. The auth service can hold as many connections as its open-files limit allows (less
``FD_RESERVE``): with more nodes than that, every node registers and stays listed, and that many
stay connected and heartbeat (the figure names both counts). Join: ``POST /v1/join`` with fresh
keys, the certificate issuance rate. None of this has an OpenSSH peer; the same-run reference is
``ssh-keygen -s`` signing host certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
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

import aiohttp
import uvloop

from bench.env import BenchError, cpu_seconds, rss_bytes
from bench.figures import Figure
from bench.profiling import Sampler
from teleport_runtime.api.client import (
    API_SERVER_NAME,
    KEEPALIVE_SECONDS,
    AuthClient,
    insecure_ssl_context,
    trusting_ssl_context,
)
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
#: Heartbeats in flight per worker process in the sustained phase (thousands of nodes report
#: within any few milliseconds in a big fleet; the auth service writes those in one transaction).
IN_FLIGHT = 256
#: First heartbeats (new TLS connections) in flight per worker.
REGISTER_IN_FLIGHT = 64
#: Descriptors of the auth service's open-files limit left for its own files and other clients;
#: the rest is how many simulated nodes can hold a connection at once.
FD_RESERVE = 1000
#: Joins in flight.
JOIN_IN_FLIGHT = 16
#: Source addresses the join figure's requests come from.
JOIN_SOURCES = 64
#: Bound on one heartbeat (connect, TLS, request, answer).
HEARTBEAT_TIMEOUT = 30.0
#: The agents' heartbeat interval at the default presence TTL.
INTERVAL = 60.0
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


class SimNode:
    """One simulated agent: its own TLS identity and, like the real agent, one connection to the
    auth service that it keeps across heartbeats (HTTP/1.1 keep-alive)."""

    def __init__(self, uuid: str, ctx: ssl.SSLContext, source_ip: str) -> None:
        self.uuid = uuid
        self.ctx = ctx
        self.source_ip = source_ip
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        # the address it connects from: the auth service accepts no address a node cannot justify
        body = json.dumps({"hostname": f"sim-{uuid[:8]}", "addr": f"{source_ip}:3022",
                           "labels": {"sim": "true", "group": uuid[0]}}).encode()
        self.request = (b"POST /v1/heartbeat HTTP/1.1\r\nHost: " + API_SERVER_NAME.encode()
                        + b"\r\nContent-Type: application/json\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.connects = 0
        self.last = 0.0

    async def beat(self, host: str, port: int) -> None:
        """One heartbeat on the node's connection (opened first if it has none, or if the agent
        would have closed it: idle for longer than its keep-alive)."""
        if self.writer is not None and time.monotonic() - self.last > KEEPALIVE_SECONDS:
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                host, port, ssl=self.ctx, server_hostname=API_SERVER_NAME, local_addr=(self.source_ip, 0))
            self.connects += 1
        assert self.reader is not None
        try:
            self.writer.write(self.request)
            status = await self.reader.readline()
            length = 0
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await self.reader.readexactly(length)
            self.last = time.monotonic()
            if b" 200 " not in status:
                raise RuntimeError(f"{status.decode(errors='replace').strip()} {answer[-300:]!r}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Worker:
    """Simulated nodes in one process: commands from the bench over a pipe (see :func:`_worker`)."""

    def __init__(self, host: str, port: int, workdir: Path, index: int) -> None:
        self.host, self.port, self.workdir, self.index = host, port, workdir, index
        self.ca = (workdir / "ca.pem").read_text()
        self.nodes: list[SimNode] = []
        self.held = 0

    def _node(self, uuid: str) -> SimNode:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=self.ca)
        ctx.load_cert_chain(self.workdir / f"{uuid}.pem", self.workdir / "key.pem")
        # Spread over source addresses: tens of thousands of connections to one port need more
        # than one address's ephemeral ports.
        n = len(self.nodes)
        return SimNode(uuid, ctx, f"127.{100 + self.index}.{n // 250 % 250}.{1 + n % 250}")

    async def _lanes(self, work, count: int) -> dict[str, Any]:
        ok, failed, errors = 0, 0, []

        async def lane() -> None:
            nonlocal ok, failed
            while (job := work()) is not None:
                try:
                    await asyncio.wait_for(job, HEARTBEAT_TIMEOUT)
                    ok += 1
                except (OSError, RuntimeError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(repr(exc))

        start = time.monotonic()
        await asyncio.gather(*(lane() for _ in range(count)))
        return {"ok": ok, "failed": failed, "errors": errors, "seconds": time.monotonic() - start}

    async def add(self, uuids: list[str], hold: int) -> dict[str, Any]:
        """Register ``uuids`` (each one's first heartbeat, on a new connection); the first ``hold``
        nodes of this worker keep their connections, the others close theirs (no descriptors
        left for them: see :data:`FD_RESERVE`)."""
        new = []
        for uuid in uuids:
            node = self._node(uuid)
            self.nodes.append(node)
            new.append(node)
        pending = iter(new)

        def work():
            node = next(pending, None)
            return None if node is None else self._register(node, hold)

        result = await self._lanes(work, REGISTER_IN_FLIGHT)
        result["connected"] = sum(1 for n in self.nodes if n.writer is not None)
        return result

    async def _register(self, node: SimNode, hold: int) -> None:
        await node.beat(self.host, self.port)
        if self.held < hold:
            self.held += 1
        else:
            node.close()

    async def refresh(self) -> dict[str, Any]:
        """One heartbeat from each connected node that has not sent one for an interval (while
        other nodes registered), as the real agents would have: the sustained phase then starts
        from a fleet in its steady state."""
        stale = iter([n for n in self.nodes if n.writer is not None and time.monotonic() - n.last > INTERVAL])

        def work():
            node = next(stale, None)
            return None if node is None else node.beat(self.host, self.port)

        return await self._lanes(work, REGISTER_IN_FLIGHT)

    async def sustain(self, duration: float) -> dict[str, Any]:
        """Heartbeats from the connected nodes, round robin, as fast as the auth service answers."""
        held = [n for n in self.nodes if n.writer is not None]
        deadline = time.monotonic() + duration
        busy: set[int] = set()
        position = 0
        connects = sum(n.connects for n in held)

        def work():
            nonlocal position
            if time.monotonic() >= deadline or not held:
                return None
            i = position % len(held)
            position += 1
            while i in busy:  # one request at a time on a connection
                i = position % len(held)
                position += 1
            busy.add(i)
            return self._one(held[i], i, busy)

        result = await self._lanes(work, min(IN_FLIGHT, len(held)))
        result["connected"] = len(held)
        result["reconnects"] = sum(n.connects for n in held) - connects
        return result

    async def _one(self, node: SimNode, i: int, busy: set[int]) -> None:
        try:
            await node.beat(self.host, self.port)
        finally:
            busy.discard(i)


def _worker(conn, host: str, port: int, workdir: str, index: int) -> None:
    """A process of simulated nodes: ``("add", uuids, hold)``, ``("refresh",)``, ``("sustain", seconds)``,
    ``("stop",)``."""
    from bench.env import raise_nofile

    raise_nofile(1 << 20)

    async def serve() -> None:
        worker = Worker(host, port, Path(workdir), index)
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                break
            if command[0] == "add":
                conn.send(await worker.add(command[1], command[2]))
            elif command[0] == "refresh":
                conn.send(await worker.refresh())
            else:
                conn.send(await worker.sustain(command[1]))
        for node in worker.nodes:
            node.close()

    uvloop.run(serve())


class Fleet:
    """``workers`` processes of simulated nodes, alive across the phases of a run."""

    def __init__(self, cluster: Cluster, workdir: Path, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for index in range(workers):
            ours, theirs = context.Pipe()
            proc = context.Process(target=_worker, args=(theirs, cluster.host, cluster.port, str(workdir), index),
                                   daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        self.cluster = cluster

    def _all(self, commands: list[tuple]) -> list[dict[str, Any]]:
        for pipe, command in zip(self.pipes, commands, strict=True):
            pipe.send(command)
        return [pipe.recv() for pipe in self.pipes]

    def _totals(self, results: list[dict[str, Any]], cpu: float) -> dict[str, Any]:
        wall = max(r["seconds"] for r in results)  # the workers' own clocks
        ok = sum(r["ok"] for r in results)
        return {"ok": ok, "failed": sum(r["failed"] for r in results), "wall_s": wall, "per_s": ok / wall,
                "auth_cpu_cores": cpu / wall, "auth_cpu_ms_per_heartbeat": 1000 * cpu / max(ok, 1),
                "connected": sum(r.get("connected", 0) for r in results),
                "reconnects": sum(r.get("reconnects", 0) for r in results),
                "errors": [e for r in results for e in r["errors"]][:5]}

    def add(self, uuids: list[str], hold: int) -> dict[str, Any]:
        """Register new nodes; ``hold`` connections in all are kept open."""
        n = len(self.pipes)
        pid = self.cluster.auth.pid
        cpu0 = cpu_seconds(pid)
        results = self._all([("add", uuids[i::n], hold // n) for i in range(n)])
        return self._totals(results, cpu_seconds(pid) - cpu0)

    def sustain(self, duration: float) -> dict[str, Any]:
        self._all([("refresh",)] * len(self.pipes))  # untimed: the fleet back in its steady state
        pid = self.cluster.auth.pid
        cpu0 = cpu_seconds(pid)
        results = self._all([("sustain", duration)] * len(self.pipes))
        return self._totals(results, cpu_seconds(pid) - cpu0)

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("stop",))
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def open_files_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of a running process."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise BenchError(f"no open-files limit in /proc/{pid}/limits")


# ---------------------------------------------------------------------------- join


async def _joins(cluster: Cluster, token: str, count: int, prefix: str = "join") -> dict[str, Any]:
    ca_certs = [c.encode() for c in (await _public_cas(cluster))]
    keys = [(generate_ssh_keypair()[1], generate_tls_keypair()[1]) for _ in range(count)]
    # Joins are rate limited per source address (auth/api.py JOIN_BURST): spread them over
    # source addresses, as joins from a fleet come from many hosts.
    sources = [f"127.0.4.{i + 1}" for i in range(JOIN_SOURCES)]
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=trusting_ssl_context(ca_certs), local_addr=(ip, 0)))
        for ip in sources
    ]
    limit = asyncio.Semaphore(JOIN_IN_FLIGHT)
    failed: list[str] = []

    async def join(i: int) -> None:
        ssh_public, tls_public = keys[i]
        body = {
            "token": token, "role": "node", "host_uuid": str(uuidlib.uuid4()), "nodename": f"{prefix}-{i}",
            "ssh_public_key": ssh_public, "tls_public_key": tls_public.decode(),
            "addresses": [sources[i % JOIN_SOURCES]],
        }
        async with limit:
            try:
                async with sessions[i % JOIN_SOURCES].post(
                    f"https://{cluster.host}:{cluster.port}/v1/join", json=body, server_hostname=API_SERVER_NAME,
                ) as resp:
                    if resp.status != 200:
                        failed.append(f"HTTP {resp.status}: {await resp.text()}")
            except Exception as exc:  # counted and reported, the run goes on
                failed.append(repr(exc))

    try:
        start = time.monotonic()
        await asyncio.gather(*(join(i) for i in range(count)))
        wall = time.monotonic() - start
    finally:
        for session in sessions:
            await session.close()
    return {"count": count, "failed": len(failed), "errors": failed[:5], "wall_s": wall,
            "per_s": (count - len(failed)) / wall}


async def _public_cas(cluster: Cluster) -> list[str]:
    async with AuthClient([HostPort(cluster.host, cluster.port)], insecure_ssl_context(), verify_name=False) as c:
        return list((await c.ca()).host_ca_certs)


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


def run(root: Path, node_counts: list[int], duration: float, joins: int, workers: int,
        profile_dir: Path | None = None) -> tuple[list[Figure], dict[str, Any]]:
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root, CLUSTER)
    details: dict[str, Any] = {}
    figures: list[Figure] = []
    fleet: Fleet | None = None
    try:
        cluster.start()
        assert cluster.auth is not None
        keygen = keygen_rate(root)
        keygen_name = f"ssh-keygen -s host certs ({keygen:.0f}/s)"
        token = cluster.add_token(roles="node", ttl="1h")["token"]
        join = asyncio.run(_joins(cluster, token, joins))
        details["join"] = join
        details["ssh_keygen_per_s"] = keygen
        figures.append(Figure(SECTION, f"joins (certificate issuance), {joins} in a row", join["per_s"], "joins/s",
                              keygen, keygen_name, "higher", 500, target_is_ratio=False,
                              note=f"{join['failed']} failed"))
        limit = open_files_limit(cluster.auth.pid)
        details["auth_open_files_limit"] = limit
        fleet = Fleet(cluster, root, workers)
        uuids: list[str] = []
        for count in sorted(node_counts):
            made = time.monotonic()
            new = make_identities(cluster, count - len(uuids), root, workers)
            made = time.monotonic() - made
            hold = min(count, limit - FD_RESERVE)
            register = fleet.add(new, hold)  # the new nodes' first heartbeat, each on a new connection
            uuids += new
            if profile_dir is None:
                sustained = fleet.sustain(duration)
            else:
                with Sampler(cluster.auth.pid, profile_dir / f"auth-heartbeats-{count}-nodes.svg"):
                    sustained = fleet.sustain(duration)
            auth_rss = rss_bytes(cluster.auth.pid)
            start = time.monotonic()
            listing = cluster.tctl("nodes", "ls")
            ls_s = time.monotonic() - start
            listed = len(listing.stdout.splitlines()) - 2
            details[str(count)] = {"identities_s": made, "register": register, "sustained": sustained,
                                   "auth_rss_mib": auth_rss / 2**20, "tctl_nodes_ls_s": ls_s, "listed": listed}
            connected = sustained["connected"]
            held = f"{connected} of {count} nodes connected"
            if connected < count:
                held += f" (the auth's open-files limit here is {limit})"
            figures += [
                Figure(SECTION, f"{count} nodes: sustained heartbeats/s", sustained["per_s"], "heartbeats/s",
                       better="higher", target=2000, target_is_ratio=False,
                       note=f"{held}; {sustained['failed']} failed; auth CPU {sustained['auth_cpu_cores']:.2f} "
                            f"cores, {sustained['auth_cpu_ms_per_heartbeat']:.2f} ms/heartbeat"),
                Figure(SECTION, f"{count} nodes: auth CPU while sustained", sustained["auth_cpu_cores"], "cores",
                       note=f"{sustained['auth_cpu_ms_per_heartbeat']:.2f} ms CPU per heartbeat"),
                Figure(SECTION, f"{count} nodes: auth RSS with {connected} connections", auth_rss / 2**20, "MiB"),
                Figure(SECTION, f"{count} nodes: first heartbeats (a new TLS connection each)", register["per_s"],
                       "heartbeats/s", note=f"{register['failed']} failed; auth "
                                            f"{register['auth_cpu_ms_per_heartbeat']:.2f} ms CPU each"),
                Figure(SECTION, f"{count} nodes: tctl nodes ls", ls_s * 1000, "ms",
                       note=f"listed {listed} of {count} nodes"),
            ]
    finally:
        if fleet is not None:
            fleet.stop()
        cluster.kill_all()
    return figures, details

"""8. Several auth servers on one PostgreSQL: heartbeats and joins spread over them, and the
50,000-node target.

Same simulated nodes as the auth scale section (``bench/authscale.py``: real mutual TLS, one kept
connection per node, ``POST /v1/heartbeat``), and the same join requests. Three set-ups in one
run, each a fresh cluster: one auth server on SQLite (the reference), two and three auth servers
(``teleport start``) on one PostgreSQL database, started by the bench like the tests do
(``tests/postgres_server.py``). The simulated nodes are spread evenly: worker process ``i``
connects to auth server ``i mod k``. Auth CPU is the sum over the auth servers; PostgreSQL's own
CPU is reported beside it (it is on the same machine).

The target: every one of ``target_nodes`` nodes connected and heartbeating. One auth process may
hold as many connections as its open-files limit (:data:`AUTH_OPEN_FILES`, the limit the bench
gives each auth server) less :data:`authscale.FD_RESERVE`; the nodes are spread over
``ceil(target / (limit - reserve))`` auth servers on one PostgreSQL, which is how many the target
requires here.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import resource
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from bench import authscale
from bench.env import BenchError, cpu_seconds, descendants, rss_bytes
from bench.figures import Figure
from teleport_runtime.ca import CertAuthority, generate_tls_keypair
from tests.conftest import Cluster
from tests.postgres_server import PostgresServer

SECTION = "ha"
CLUSTER = authscale.CLUSTER
#: The open-files limit each auth server runs with (a common LimitNOFILE for a service): how
#: many simulated nodes one auth process can hold connected.
AUTH_OPEN_FILES = 20000
#: Auth servers on PostgreSQL compared with the single SQLite auth server.
SPREADS = (2, 3)
#: Pool size of each auth server's PostgreSQL connection pool.
POOL_MAX_CONNS = 10


class AuthServers:
    """``count`` auth servers (``teleport start``) of one cluster: on SQLite (one) or on one
    PostgreSQL database (several), each with its own data dir and listen port."""

    def __init__(self, root: Path, count: int, conn_string: str | None, open_files: int) -> None:
        for i in range(count):
            (root / f"auth{i}").mkdir(parents=True, exist_ok=True)
        self.clusters = [Cluster(root / f"auth{i}", CLUSTER) for i in range(count)]
        self.conn_string = conn_string
        self.open_files = open_files
        for cluster in self.clusters:
            if conn_string is not None:
                cluster.config["teleport"]["storage"] = {"type": "postgresql", "conn_string": conn_string}
                cluster.config_path.write_text(json.dumps(cluster.config))

    def start(self) -> AuthServers:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(self.open_files, hard), hard))  # inherited
        try:
            for cluster in self.clusters:  # the first creates the CAs, the others load them
                cluster.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        pins = {c.pin(fresh=True) for c in self.clusters}
        if len(pins) != 1:
            raise BenchError(f"the auth servers disagree on the CA pin: {sorted(pins)}")
        return self

    def pids(self) -> list[int]:
        return [c.auth.pid for c in self.clusters if c.auth is not None]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss_mib(self) -> float:
        return sum(rss_bytes(pid) for pid in self.pids()) / 2**20

    def host_ca(self) -> CertAuthority:
        if self.conn_string is None:
            return authscale._host_ca(self.clusters[0])
        return asyncio.run(_pg_host_ca(self.conn_string))

    def stop(self) -> None:
        for cluster in self.clusters:
            cluster.kill_all()


async def _pg_host_ca(conn_string: str) -> CertAuthority:
    from teleport_runtime.backend.postgres import PostgresBackend

    backend = PostgresBackend(conn_string, sweep_interval=None)
    try:
        return CertAuthority.from_dict(json.loads((await backend.get("/authorities/host")).value))
    finally:
        await backend.close()


def make_identities(ca: CertAuthority, count: int, workdir: Path, workers: int) -> list[str]:
    """As :func:`authscale.make_identities`, from a CA read from either backend."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, public = generate_tls_keypair()
    (workdir / "key.pem").write_bytes(key)
    (workdir / "ca.pem").write_bytes(b"".join(ca.trusted_tls_certs()))
    uuids = [str(uuidlib.uuid4()) for _ in range(count)]
    chunks = [uuids[i::workers * 4] for i in range(workers * 4)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        signed = pool.map(authscale._sign, [(ca.to_dict(True), public, chunk) for chunk in chunks])
    for chunk, certs in zip(chunks, signed, strict=True):
        for u, cert in zip(chunk, certs, strict=True):
            (workdir / f"{u}.pem").write_bytes(cert)
    return uuids


class SpreadFleet(authscale.Fleet):
    """Simulated nodes in ``workers`` processes, worker ``i`` connecting to auth server ``i mod k``;
    CPU counted over every auth server."""

    def __init__(self, auths: AuthServers, workdir: Path, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for index in range(workers):
            target = auths.clusters[index % len(auths.clusters)]
            ours, theirs = context.Pipe()
            proc = context.Process(target=authscale._worker,
                                   args=(theirs, target.host, target.port, str(workdir), index), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        self.cluster = auths.clusters[0]
        self.auths = auths

    def add(self, uuids: list[str], hold: int) -> dict[str, Any]:
        n = len(self.pipes)
        cpu0 = self.auths.cpu()
        results = self._all([("add", uuids[i::n], hold // n) for i in range(n)])
        return self._totals(results, self.auths.cpu() - cpu0)

    def sustain(self, duration: float, pg_pids: list[int] | None = None) -> dict[str, Any]:
        self._all([("refresh",)] * len(self.pipes))
        cpu0, pg0 = self.auths.cpu(), _cpu(pg_pids or [])
        results = self._all([("sustain", duration)] * len(self.pipes))
        totals = self._totals(results, self.auths.cpu() - cpu0)
        totals["postgres_cpu_cores"] = (_cpu(pg_pids or []) - pg0) / totals["wall_s"]
        return totals


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:  # a PostgreSQL backend process that ended meanwhile
            pass
    return total


def _postgres_pids(server: PostgresServer) -> list[int]:
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    return [pid, *descendants(pid)]


async def _spread_joins(auths: AuthServers, token: str, count: int) -> dict[str, Any]:
    per = max(1, count // len(auths.clusters))
    start = time.monotonic()
    # Each server's joins under their own names: names are unique in the cluster.
    results = await asyncio.gather(*(authscale._joins(c, token, per, f"join{i}")
                                     for i, c in enumerate(auths.clusters)))
    wall = time.monotonic() - start
    done = sum(r["count"] - r["failed"] for r in results)
    return {"count": per * len(results), "failed": sum(r["failed"] for r in results), "wall_s": wall,
            "per_s": done / wall, "errors": [e for r in results for e in r["errors"]][:5]}


def _setup(root: Path, pg: PostgresServer, count: int) -> AuthServers:
    conn = None
    if count > 1:
        conn = pg.conn_string(pg.create_database(), pool_max_conns=str(POOL_MAX_CONNS))
    return AuthServers(root, count, conn, AUTH_OPEN_FILES).start()


def run(root: Path, nodes: int, duration: float, joins: int, workers: int, target_nodes: int,
        open_files: int = AUTH_OPEN_FILES) -> tuple[list[Figure], dict[str, Any]]:
    """``nodes`` simulated nodes on one SQLite auth server, then on two and three auth servers on
    PostgreSQL (heartbeats for ``duration`` s, ``joins`` joins); then ``target_nodes`` nodes
    spread over as many auth servers as an open-files limit of ``open_files`` requires."""
    root.mkdir(parents=True, exist_ok=True)
    pg = PostgresServer()
    pg.init()
    details: dict[str, Any] = {"auth_open_files": open_files, "fd_reserve": authscale.FD_RESERVE}
    figures: list[Figure] = []
    reference: dict[str, Any] = {}
    try:
        for count in (1, *SPREADS):
            name = "1 auth on SQLite" if count == 1 else f"{count} auths on one PostgreSQL"
            auths = _setup(root / f"spread{count}", pg, count)
            fleet = None
            try:
                token = auths.clusters[0].add_token(roles="node", ttl="1h")["token"]
                join = asyncio.run(_spread_joins(auths, token, joins))
                k_workers = max(workers, count) // count * count
                fleet = SpreadFleet(auths, root / f"spread{count}" / "ids", k_workers)
                uuids = make_identities(auths.host_ca(), nodes, root / f"spread{count}" / "ids", k_workers)
                register = fleet.add(uuids, k_workers * math.ceil(nodes / k_workers))
                sustained = fleet.sustain(duration, _postgres_pids(pg) if count > 1 else [])
            finally:
                if fleet is not None:
                    fleet.stop()
                auths.stop()
            details[name] = {"join": join, "register": register, "sustained": sustained}
            if count == 1:
                reference = {"join": join["per_s"], "hb": sustained["per_s"],
                             "cpu": sustained["auth_cpu_ms_per_heartbeat"]}
                ref = {}
            else:
                ref = {"reference_name": "1 auth on SQLite"}
            figures += [
                Figure(SECTION, f"{name}: sustained heartbeats/s, {nodes} nodes", sustained["per_s"],
                       "heartbeats/s", reference=None if count == 1 else reference["hb"], better="higher",
                       note=f"{sustained['connected']} connected, {sustained['failed']} failed; auth CPU "
                            f"{sustained['auth_cpu_cores']:.2f} cores; PostgreSQL CPU "
                            f"{sustained['postgres_cpu_cores']:.2f} cores", **ref),
                Figure(SECTION, f"{name}: auth CPU per heartbeat", sustained["auth_cpu_ms_per_heartbeat"], "ms",
                       reference=None if count == 1 else reference["cpu"], **ref),
                Figure(SECTION, f"{name}: joins/s, {join['count']} spread", join["per_s"], "joins/s",
                       reference=None if count == 1 else reference["join"], better="higher",
                       note=f"{join['failed']} failed", **ref),
            ]
        figures += _target(root / "target", pg, target_nodes, duration, workers, open_files, details)
    finally:
        pg.destroy()
    return figures, details


def _target(root: Path, pg: PostgresServer, target: int, duration: float, workers: int, open_files: int,
            details: dict[str, Any]) -> list[Figure]:
    per_auth = open_files - authscale.FD_RESERVE
    count = max(1, math.ceil(target / per_auth))
    conn = pg.conn_string(pg.create_database(), pool_max_conns=str(POOL_MAX_CONNS))
    auths = AuthServers(root, count, conn, open_files).start()
    fleet = None
    try:
        k_workers = max(workers, count) // count * count
        fleet = SpreadFleet(auths, root / "ids", k_workers)
        made = time.monotonic()
        uuids = make_identities(auths.host_ca(), target, root / "ids", k_workers)
        made = time.monotonic() - made
        register = fleet.add(uuids, k_workers * math.ceil(target / k_workers))
        sustained = fleet.sustain(duration, _postgres_pids(pg))
        rss = auths.rss_mib()
        start = time.monotonic()
        listing = auths.clusters[-1].tctl("nodes", "ls", "--format=json")
        ls_s = time.monotonic() - start
        listed = len(json.loads(listing.stdout))
    finally:
        if fleet is not None:
            fleet.stop()
        auths.stop()
    details["target"] = {"nodes": target, "auth_servers": count, "per_auth_connections": per_auth,
                         "identities_s": made, "register": register, "sustained": sustained,
                         "auth_rss_mib_total": rss, "tctl_nodes_ls_s": ls_s, "listed": listed}
    why = (f"{count} auth servers: {target} connections need ceil({target}/({open_files}-"
           f"{authscale.FD_RESERVE})) processes at an open-files limit of {open_files}")
    return [
        Figure(SECTION, f"{target} nodes connected and heartbeating", sustained["connected"], "nodes",
               better="higher", target=target, target_is_ratio=False,
               note=f"{why}; {register['failed']} first heartbeats failed"),
        Figure(SECTION, f"{target} nodes: sustained heartbeats/s over {count} auth servers", sustained["per_s"],
               "heartbeats/s", better="higher", target=target / authscale.INTERVAL, target_is_ratio=False,
               note=f"{sustained['failed']} failed, {sustained['reconnects']} reconnects; auth CPU "
                    f"{sustained['auth_cpu_cores']:.2f} cores ({sustained['auth_cpu_ms_per_heartbeat']:.2f} ms each), "
                    f"PostgreSQL {sustained['postgres_cpu_cores']:.2f} cores"),
        Figure(SECTION, f"{target} nodes: first heartbeats (a new TLS connection each)", register["per_s"],
               "heartbeats/s", note=f"{register['failed']} failed"),
        Figure(SECTION, f"{target} nodes: auth RSS, {count} servers together", rss, "MiB"),
        Figure(SECTION, f"{target} nodes: tctl nodes ls", ls_s * 1000, "ms", note=f"listed {listed} of {target}"),
    ]

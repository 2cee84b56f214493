"""Who a host is, decided by the auth service: each attack of the security review replayed against
real daemons (`teleport start` auth, proxy and nodes on loopback), asserting that it now fails.

The attacker is a join token holder (or a host with a certificate of its own) talking to the auth
API directly from its own loopback address, choosing every field it sends.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid as uuidlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509

from teleport_runtime.agent.join import issued_identity
from teleport_runtime.api.client import insecure_ssl_context
from teleport_runtime.api.names import API_SERVER_NAME
from teleport_runtime.ca import generate_ssh_keypair, generate_tls_keypair, parse_host_ssh_cert
from teleport_runtime.identity import Identity
from teleport_runtime.ratelimit import RateLimited, TokenBuckets
from tests.conftest import (
    TELEPORT,
    Cluster,
    Node,
    free_port,
    next_loopback_ip,
    run_tsh,
    sign_up_and_log_in,
    wait_for,
)

CLUSTER = "trust.test"
PASSWORD = "correct horse battery staple"


class Attacker:
    """A client of the auth API bound to its own loopback address."""

    def __init__(self, cluster: Cluster, ip: str | None = None) -> None:
        self.cluster = cluster
        self.ip = ip or next_loopback_ip()

    async def _request(self, method: str, path: str, body: Any, identity: Identity | None,
                       source: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        ctx = identity.client_ssl_context() if identity else insecure_ssl_context()
        connector = aiohttp.TCPConnector(ssl=ctx, local_addr=(source or self.ip, 0))
        async with aiohttp.ClientSession(connector=connector) as session, session.request(
            method, f"https://{self.cluster.addr}{path}", json=body,
            server_hostname=API_SERVER_NAME if identity else None,
        ) as resp:
            return resp.status, await resp.json(), dict(resp.headers)

    def call(self, method: str, path: str, body: Any = None, identity: Identity | None = None,
             source: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        return asyncio.run(self._request(method, path, body, identity, source))

    def join(self, token: str, host_uuid: str, nodename: str, addresses: list[str] | None = None,
             role: str = "node", keys: tuple[bytes, str, bytes, bytes] | None = None,
             ) -> tuple[int, dict[str, Any], Identity | None]:
        """``/v1/join`` with what the attacker chooses; the identity when it was issued."""
        ssh_key, ssh_public, tls_key, tls_public = keys or (*generate_ssh_keypair(), *generate_tls_keypair())
        status, body, _ = self.call("POST", "/v1/join", {
            "token": token, "role": role, "host_uuid": host_uuid, "nodename": nodename,
            "ssh_public_key": ssh_public, "tls_public_key": tls_public.decode(),
            "addresses": addresses or [],
        })
        identity = issued_identity(body, tls_key=tls_key, ssh_key=ssh_key) if status == 200 else None
        return status, body, identity


def new_keys() -> tuple[bytes, str, bytes, bytes]:
    return (*generate_ssh_keypair(), *generate_tls_keypair())


def cert_names(identity: Identity) -> set[str]:
    """Every name the identity is valid for: SSH principals and TLS SANs."""
    cert = x509.load_pem_x509_certificate(identity.tls_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    tls = {*san.get_values_for_type(x509.DNSName), *(str(i) for i in san.get_values_for_type(x509.IPAddress))}
    return tls | set(parse_host_ssh_cert(identity.ssh_cert).principals)


def message(body: dict[str, Any]) -> str:
    return str(body.get("error", {}).get("message", ""))


class Env:
    proxy: Node
    web: str
    node1: Node

    def __init__(self, root: Path, cluster: Cluster) -> None:
        self.root = root
        self.cluster = cluster
        self.home = root / "tsh-home"
        self.password_file = root / "password"
        self.otp_file = root / "otp"

    def token(self) -> str:
        return self.cluster.add_token(roles="node,proxy", ttl="10m")["token"]

    def tsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_tsh(self.home, *args, cwd=self.root)

    def node_record(self, name: str) -> list[dict[str, Any]]:
        return [n for n in self.cluster.nodes() if n["hostname"] == name]

    def denied(self, resource: str) -> list[dict[str, Any]]:
        events = self.cluster.tctl_json("audit", "ls", "--type=access.denied")
        return [e for e in events if e.get("resource") == resource]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("trust")
    cluster = Cluster(root, CLUSTER, {"presence_ttl": "10s"})
    try:
        cluster.start()
        e = Env(root, cluster)
        token = e.token()
        e.proxy, e.web = cluster.start_proxy(token)
        e.node1 = cluster.start_node("node1", token=token, pins=(cluster.pin(),))
        wait_for(lambda: e.node_record("node1"), what="node1 listed")
        e.password_file.write_text(PASSWORD + "\n")
        sign_up_and_log_in(cluster, e.web, "alice", roles="access", logins="root", home=e.home,
                           password_file=e.password_file, otp_file=e.otp_file)
        yield e
    finally:
        cluster.kill_all()


def reaches_node1(env: Env) -> None:
    result = env.tsh("ssh", "root@node1", "echo", "reached-the-real-node1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reached-the-real-node1"


# ---------------------------------------------------------------------------- finding 1: join


def test_join_with_another_hosts_uuid_or_name_is_refused(env: Env) -> None:
    token = env.token()
    node1_uuid = env.node1.host_uuid()
    [before] = env.node_record("node1")
    sources = set()
    for host_uuid, name, holder_text in (
        (node1_uuid, "node1", f"host UUID {node1_uuid} belongs to host node1"),
        (node1_uuid, "evil-uuid", f"host UUID {node1_uuid} belongs to host node1"),
        (str(uuidlib.uuid4()), "node1", "the name node1 belongs to host node1"),
        (str(uuidlib.uuid4()), f"node1.{CLUSTER}", f"node1.{CLUSTER} belongs to host node1"),
        (str(uuidlib.uuid4()), node1_uuid, f"the name {node1_uuid} belongs to host node1"),
    ):
        attacker = Attacker(env.cluster)  # each from its own address: refusals count against the join limit
        sources.add(attacker.ip)
        status, body, identity = attacker.join(token, host_uuid, name)
        assert status == 403, body
        assert identity is None
        assert holder_text in message(body)
        assert "tctl nodes rm node1" in message(body)  # the fix
    # the proxy role is no way around it
    status, body, _ = Attacker(env.cluster).join(token, node1_uuid, "node1", role="proxy")
    assert status == 403 and "tctl nodes rm node1" in message(body)
    [after] = env.node_record("node1")
    assert after["addr"] == before["addr"] == env.node1.addr
    assert {e["remote_addr"] for e in env.denied("/v1/join")} >= sources
    reaches_node1(env)


def test_the_same_host_joining_again_with_its_key_is_accepted(env: Env) -> None:
    """An install rerun that joins again with the key it joined with, as the same host."""
    token = env.token()
    host_uuid, keys = str(uuidlib.uuid4()), new_keys()
    attacker = Attacker(env.cluster)
    first = attacker.join(token, host_uuid, "rerun1", keys=keys)
    again = attacker.join(token, host_uuid, "rerun1", keys=keys)
    assert first[0] == again[0] == 200, (first[1], again[1])
    status, body, _ = attacker.join(token, host_uuid, "rerun1")  # another key: another host
    assert status == 403 and "tctl nodes rm rerun1" in message(body)


def test_extra_names_are_not_signed(env: Env) -> None:
    token = env.token()
    proxy_ip = env.proxy.ip
    bad = ["*", "*.example.com", "teleport.cluster.local", "auth.teleport.cluster.local", CLUSTER,
           "proxy1", f"proxy1.{CLUSTER}", proxy_ip, env.node1.ip, "node1", f"node1.{CLUSTER}",
           "bad name", "evil\nname"]
    for role in ("node", "proxy"):
        attacker = Attacker(env.cluster)
        host_uuid = str(uuidlib.uuid4())
        name = f"extras-{role}"
        status, body, identity = attacker.join(token, host_uuid, name, [*bad, f"{name}.example.org"], role=role)
        assert status == 200, body
        assert identity is not None
        names = cert_names(identity)
        assert not names & set(bad), names & set(bad)
        assert {host_uuid, name, f"{name}.{CLUSTER}", f"{host_uuid}.{CLUSTER}", f"{name}.example.org",
                attacker.ip} <= names


def test_reregister_does_not_add_names(env: Env) -> None:
    token = env.token()
    attacker = Attacker(env.cluster)
    status, body, identity = attacker.join(token, str(uuidlib.uuid4()), "rereg1", ["rereg1.example.org"])
    assert status == 200 and identity is not None, body
    before = cert_names(identity)
    ssh_key, ssh_public, tls_key, tls_public = new_keys()
    status, body, _ = attacker.call("POST", "/v1/reregister", {
        "ssh_public_key": ssh_public, "tls_public_key": tls_public.decode(),
        "addresses": ["*", "node1", "teleport.cluster.local", "evil.example.org", env.node1.ip],
    }, identity=identity)
    assert status == 200, body
    renewed = issued_identity(body, tls_key=tls_key, ssh_key=ssh_key)
    assert cert_names(renewed) == before


# ---------------------------------------------------------------------------- finding 4: heartbeats


def test_heartbeat_with_a_foreign_name_or_address_is_refused(env: Env) -> None:
    token = env.token()
    attacker = Attacker(env.cluster)
    status, body, evil = attacker.join(token, str(uuidlib.uuid4()), "evil-hb", [attacker.ip])
    assert status == 200 and evil is not None, body
    auth_addr = env.cluster.addr
    proxy_ssh = yaml.safe_load(env.proxy.config_path.read_text())["proxy_service"]["listen_addr"]
    cases = [
        ({"hostname": "node1", "addr": f"{attacker.ip}:2222"}, None, "not this host's name"),
        ({"hostname": "evil-hb", "addr": env.node1.addr}, None, "not this host's address"),
        ({"hostname": "evil-hb", "addr": auth_addr}, None, "not this host's address"),
        # from 127.0.0.1 the address is its source address, but the auth API listens there
        ({"hostname": "evil-hb", "addr": auth_addr}, "127.0.0.1", "where the auth service or a proxy listens"),
        ({"hostname": "evil-hb", "addr": proxy_ssh}, proxy_ssh.split(":")[0],
         "where the auth service or a proxy listens"),
    ]
    for report, source, fragment in cases:
        status, body, _ = attacker.call("POST", "/v1/heartbeat", report, identity=evil, source=source)
        assert status == 403, (report, body)
        assert fragment in message(body), (report, body)
        assert not env.node_record("evil-hb")
    [node1] = env.node_record("node1")
    assert node1["addr"] == env.node1.addr
    assert len(env.denied("/v1/heartbeat")) >= len(cases)
    status, body, _ = attacker.call("POST", "/v1/heartbeat", {"hostname": "evil-hb", "addr": f"{attacker.ip}:2222"},
                                    identity=evil)
    assert status == 200, body
    assert [n["addr"] for n in env.node_record("evil-hb")] == [f"{attacker.ip}:2222"]
    reaches_node1(env)


def test_control_characters_in_names_are_refused(env: Env) -> None:
    token = env.token()
    attacker = Attacker(env.cluster)
    for name in ("evil\x1b[2Jname", "evil\nnode1", "evil name", "*", "a" * 300):
        status, body, _ = Attacker(env.cluster).join(token, str(uuidlib.uuid4()), name)
        assert status == 400, body
        # an over-long name is already refused by the join's body declaration (api/types.py)
        assert "invalid host name" in message(body) or "'nodename' is longer than" in message(body)
    status, body, evil = attacker.join(token, str(uuidlib.uuid4()), "evil-ctl", [attacker.ip])
    assert status == 200 and evil is not None, body
    status, body, _ = attacker.call("POST", "/v1/heartbeat",
                                    {"hostname": "evil\x1b[2J", "addr": f"{attacker.ip}:2222"}, identity=evil)
    assert 400 <= status < 500, body
    listing = env.cluster.tctl("nodes", "ls").stdout
    assert "\x1b" not in listing and "evil\n" not in listing


@pytest.mark.parametrize(("nodename", "why"), [
    ("\"bad\\u001b[2Jname\"", "on one line"),  # control characters: refused as a one-line scalar
    ("\"evil*name\"", "invalid host name"),
    ("\"two words\"", "invalid host name"),
])
def test_config_nodename_is_checked(env: Env, tmp_path: Path, nodename: str, why: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(f"teleport:\n  nodename: {nodename}\nssh_service: {{enabled: true}}\n"
                      "auth_service: {enabled: true}\n")
    result = subprocess.run([TELEPORT, "configure", "--test", str(config)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "teleport.nodename" in result.stderr and why in result.stderr


# ---------------------------------------------------------------------------- finding 9: join limits


def test_join_rate_limit(cluster_factory: Any) -> None:
    cluster = cluster_factory(CLUSTER)
    attacker = Attacker(cluster)
    answers = []
    for _ in range(150):
        status, body, headers = attacker.call("POST", "/v1/join", {
            "token": "guessed-token-value", "role": "node", "host_uuid": str(uuidlib.uuid4()),
            "nodename": "guesser", "ssh_public_key": "x", "tls_public_key": "x"})
        answers.append(status)
        if status == 429:
            break
    assert answers[-1] == 429, answers
    assert int(headers["Retry-After"]) >= 1
    assert "too many join attempts" in message(body) and "retry in" in message(body)
    denied = [e for e in cluster.tctl_json("audit", "ls", "--type=access.denied")
              if e.get("resource") == "/v1/join" and "too many" in e.get("reason", "")]
    assert denied and denied[0]["remote_addr"] == attacker.ip
    # another source is not held back by it
    token = cluster.add_token(roles="node")["token"]
    status, body, _ = Attacker(cluster).join(token, str(uuidlib.uuid4()), "neighbour")
    assert status == 200, body


def test_short_static_token_stops_startup(cluster_factory: Any) -> None:
    cluster = cluster_factory(CLUSTER, {"tokens": ["node:short-token"]}, start=False)
    result = subprocess.run([TELEPORT, "start", "-c", str(cluster.config_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "auth_service.tokens" in result.stderr
    assert "at least 16" in result.stderr and "node:/path/to/tokenfile" in result.stderr


# ---------------------------------------------------------------------------- finding 12: revocation


def test_nodes_rm_locks_the_old_certificate_out(env: Env) -> None:
    token = env.token()
    node3 = env.cluster.start_node("node3", token=token, pins=(env.cluster.pin(),))
    wait_for(lambda: env.node_record("node3"), what="node3 listed")
    result = env.tsh("ssh", "root@node3", "echo", "ok")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    old = Identity.load(node3.identity_dir())
    old_uuid = node3.host_uuid()

    removed = env.cluster.tctl("nodes", "rm", "node3")
    assert "node3" in removed.stdout and old_uuid in removed.stdout
    attacker = Attacker(env.cluster)
    for path, body in (("/v1/heartbeat", {"hostname": "node3", "addr": node3.addr}),
                       ("/v1/reregister", {"ssh_public_key": "x", "tls_public_key": "x"})):
        status, answer, _ = attacker.call("POST", path, body, identity=old, source="127.0.0.1")
        assert status == 403, answer
        assert "removed from the cluster" in message(answer)
    status, answer, _ = attacker.call("GET", "/v1/nodes", identity=old, source="127.0.0.1")
    assert status == 403
    assert not env.node_record("node3")
    # the proxy stops routing to it once its node list is refreshed
    wait_for(lambda: env.tsh("ssh", "root@node3", "echo", "ok").returncode != 0, what="the proxy to drop node3")
    assert "not registered" in env.tsh("ssh", "root@node3", "echo", "ok").stderr

    # the host may come back with a new key and a new token; the old certificate stays locked
    node3.kill()
    for item in node3.identity_dir().iterdir():
        item.unlink()
    node3.start(env.cluster.node_argv("node3", token=env.token(), pins=(env.cluster.pin(),)))
    wait_for(lambda: env.node_record("node3"), what="node3 listed again")
    assert node3.host_uuid() == old_uuid
    status, answer, _ = attacker.call("GET", "/v1/nodes", identity=old, source="127.0.0.1")
    assert status == 403 and "removed from the cluster" in message(answer)
    wait_for(lambda: env.tsh("ssh", "root@node3", "echo", "ok").returncode == 0, what="node3 reachable again")


def test_a_host_with_two_roles_joins_both(env: Env) -> None:
    """Node and proxy on one host share a UUID: the second role's join presents the first
    role's certificate, which is how the auth service knows it is the same host."""
    cluster = env.cluster
    ip = next_loopback_ip()
    ssh_port, web_port = free_port(ip), free_port(ip)
    combo = cluster.start_node(
        "combo",
        [TELEPORT, "start", "--roles=node,proxy", f"--token={env.token()}", f"--ca-pin={cluster.pin()}",
         f"--auth-server={cluster.addr}"],
        config={"proxy_service": {"enabled": True, "listen_addr": f"{ip}:{ssh_port}",
                                  "web_listen_addr": f"{ip}:{web_port}"}},
        listen_ip=ip,
    )
    wait_for(lambda: env.node_record("combo"), what="combo listed as a node")
    proxies = cluster.tctl_json("get", "proxies")
    assert [p["id"] for p in proxies if p["hostname"] == "combo"] == [combo.host_uuid()]
    node = Identity.load(combo.identity_dir())
    proxy = Identity.load(combo.data_dir / "identity" / "proxy")
    assert node.tls_cert != proxy.tls_cert


def test_join_limit_memory_is_bounded_and_sources_are_counted_apart() -> None:
    limits = TokenBuckets(rate=1, burst=2, max_sources=50)
    for i in range(1000):
        limits.take(f"10.0.{i // 250}.{i % 250}")
    assert len(limits) == 50
    limits.take("2001:db8::1")
    limits.take("2001:db8::2")
    with pytest.raises(RateLimited) as first:
        limits.take("2001:db8::3")  # one /64 is one source
    with pytest.raises(RateLimited) as again:
        limits.take("2001:db8::4")
    assert first.value.first and not again.value.first  # only the first refusal is audited
    limits.take("2001:db8:1::1")


def test_proxies_may_share_a_public_address_nodes_may_not(env: Env) -> None:
    """Proxies behind one load balancer share their public name; a node never gets it."""
    token = env.token()
    shared = "lb.trust.example.org"
    for role, name in (("proxy", "proxy-a"), ("proxy", "proxy-b"), ("node", "sneaky")):
        status, body, identity = Attacker(env.cluster).join(token, str(uuidlib.uuid4()), name, [shared], role=role)
        assert status == 200 and identity is not None, body
        assert (shared in cert_names(identity)) == (role == "proxy"), (name, cert_names(identity))

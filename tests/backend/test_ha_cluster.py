"""Two `teleport start` auth servers on one PostgreSQL, as an operator runs them: started at the
same moment they print the same CA pin; a proxy and a node configured with both join; after
`kill -9` of the first, `tsh login` (a new user's sign-up too), `tsh ssh` and `tctl nodes ls`
against the second keep working and the node keeps heartbeating; a `tctl nodes rm` on one server is
enforced by the other; the first, restarted, catches up."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import yaml

from tests.conftest import (
    TELEPORT,
    Cluster,
    Daemon,
    free_port,
    next_loopback_ip,
    run_tsh,
    sign_up_and_log_in,
    wait_for,
)

PASSWORD = "correct horse battery staple 42"


def start_together(*clusters: Cluster) -> None:
    """``teleport start`` every auth server at once, then wait until each is ready."""
    for cluster in clusters:
        diag = f"127.0.0.1:{free_port()}"
        cluster.auth = Daemon("auth", [TELEPORT, "start", "-c", str(cluster.config_path), f"--diag-addr={diag}"],
                              cluster.log_path, cluster.root, diag)
        cluster.daemons.append(cluster.auth)
    for cluster in clusters:
        assert cluster.auth is not None
        cluster.auth.wait_ready()


def heartbeat_of(cluster: Cluster, host_uuid: str) -> str:
    return next((n.get("last_heartbeat", "") for n in cluster.nodes() if n["id"] == host_uuid), "")


def test_two_auth_servers_on_one_postgresql(cluster_factory, pg_server, tmp_path: Path) -> None:
    kek = tmp_path / "ca-kek"
    kek.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    kek.chmod(0o600)
    db = pg_server.create_database()
    storage = {"type": "postgresql", "conn_string": pg_server.conn_string(db, sslmode="disable", pool_max_conns="4")}
    auth_service = {"presence_ttl": "10s", "ca_key_encryption_key_file": str(kek)}
    first = cluster_factory(auth_service=auth_service, start=False)
    second = cluster_factory(auth_service=auth_service, start=False)
    for name, cluster in (("auth-1", first), ("auth-2", second)):
        cluster.config["teleport"].update(nodename=name, storage=storage)
        cluster.config_path.write_text(yaml.safe_dump(cluster.config))
    start_together(first, second)
    pin = first.pin()
    assert second.pin() == pin
    stored = pg_server.sql("SELECT convert_from(value, 'UTF8') FROM teleport_kv WHERE key = '/authorities/host'", db)
    assert "teleport-kek:v1:" in stored and "PRIVATE KEY" not in stored

    both = [f"--auth-server={first.addr}", f"--auth-server={second.addr}"]
    token = first.add_token("node,proxy", ttl="10m")["token"]
    ip = next_loopback_ip()
    web = f"{ip}:{free_port(ip)}"
    first.start_node(
        "proxy1", [TELEPORT, "start", "--roles=proxy", f"--token={token}", f"--ca-pin={pin}", *both],
        config={"proxy_service": {"enabled": True, "listen_addr": f"{ip}:{free_port(ip)}", "web_listen_addr": web}},
        listen_ip=ip,
    )
    node = first.start_node("node1", [TELEPORT, "start", "--roles=node", f"--token={token}", f"--ca-pin={pin}", *both])
    # node2 knows only the second auth server: a removal through the first must still reach it.
    node2 = first.start_node("node2", token=token, pins=(pin,), auth_server=second.addr)
    wait_for(lambda: {node.host_uuid(), node2.host_uuid()} <= second.node_ids(), 60, what="both nodes listed")

    home = tmp_path / "alice"
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    sign_up_and_log_in(first, web, "alice", roles="access", logins="root", home=home,
                       password_file=password, otp_file=tmp_path / "alice-otp")
    assert run_tsh(home, "ssh", "root@node1", "echo ok", cwd=tmp_path, check=True).stdout == "ok\n"

    # `tctl nodes rm` on the first server: the second refuses node2's heartbeats from now on.
    first.tctl("nodes", "rm", "node2")

    def refused_by_second() -> bool:
        events = second.tctl_json("audit", "ls", "--type=access.denied")
        return any(e.get("server_id") == node2.host_uuid() for e in events)

    wait_for(refused_by_second, 60, what="node2's heartbeat refused by the second auth server")
    assert node2.host_uuid() not in second.node_ids()

    assert first.auth is not None
    first.auth.kill()  # SIGKILL
    seen = heartbeat_of(second, node.host_uuid())
    wait_for(lambda: heartbeat_of(second, node.host_uuid()) not in ("", seen), 60,
             what="node1 heartbeating through the second auth server")
    assert node.host_uuid() in second.node_ids()  # tctl nodes ls against the second
    assert run_tsh(home, "ssh", "root@node1", "echo still", cwd=tmp_path, check=True).stdout == "still\n"
    bob = tmp_path / "bob"
    sign_up_and_log_in(second, web, "bob", roles="access", logins="root", home=bob,
                       password_file=password, otp_file=tmp_path / "bob-otp")
    assert run_tsh(bob, "ssh", "root@node1", "echo bob", cwd=tmp_path, check=True).stdout == "bob\n"

    # The first comes back and serves what was done while it was away.
    start_together(first)
    assert first.pin(fresh=True) == pin
    users = {u["name"] for u in first.tctl_json("users", "ls")}
    assert {"alice", "bob"} <= users
    assert node.host_uuid() in first.node_ids()
    assert json.loads(first.tctl("status", "--format=json").stdout)["ca_pins"][0] == pin

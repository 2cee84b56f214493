"""A cluster on PostgreSQL, end to end: `teleport start` with `teleport.storage` in the
reference's format, the audit log in its own database (`tctl audit ls` reads it), and PostgreSQL
killed while the cluster runs: changes refused with a clear error, everything back after the
restart without touching teleport."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import sign_up_and_log_in, wait_for

PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def pg_cluster(cluster_factory, pg_server, tmp_path):
    cluster = cluster_factory(auth_service={"presence_ttl": "10s"}, start=False)
    cluster.backend_db = pg_server.create_database()
    cluster.audit_db = pg_server.create_database()
    cluster.config["teleport"]["storage"] = {
        "type": "postgresql",
        "conn_string": pg_server.conn_string(cluster.backend_db, sslmode="disable", pool_max_conns="4"),
        "audit_events_uri": [pg_server.conn_string(cluster.audit_db)],
    }
    cluster.config_path.write_text(yaml.safe_dump(cluster.config))
    cluster.start()
    return cluster


def test_cluster_on_postgresql_with_audit_in_its_own_database(pg_cluster, pg_server, tmp_path):
    cluster = pg_cluster
    token = cluster.add_token("node,proxy")["token"]
    _proxy, web = cluster.start_proxy(token)
    node = cluster.start_node("node1", token=token, pins=(cluster.pin(),))
    wait_for(lambda: node.host_uuid() in cluster.node_ids(), 60, what="node1 in tctl nodes ls")
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    sign_up_and_log_in(cluster, web, "alice", roles="access", logins="root", home=tmp_path / "home",
                       password_file=password, otp_file=tmp_path / "otp")
    events = cluster.tctl_json("audit", "ls", "--type=user.")
    assert {(e["event"], e["user"]) for e in events} >= {("user.signup", "alice"), ("user.login", "alice")}
    stored = int(pg_server.sql("SELECT count(*) FROM teleport_kv WHERE key LIKE '/events/%'", cluster.audit_db))
    assert stored >= 2
    in_backend = pg_server.sql("SELECT count(*) FROM teleport_kv WHERE key LIKE '/events/%'", cluster.backend_db)
    assert in_backend == "0"
    users = pg_server.sql("SELECT count(*) FROM teleport_kv WHERE key = '/users/alice'", cluster.backend_db)
    assert users == "1"


def test_postgresql_killed_while_the_cluster_runs(pg_cluster, pg_server):
    cluster = pg_cluster
    token = cluster.add_token("node")["token"]
    node = cluster.start_node("node1", token=token, pins=(cluster.pin(),))
    wait_for(lambda: node.host_uuid() in cluster.node_ids(), 60, what="node1 in tctl nodes ls")
    pg_server.kill()
    try:
        refused = cluster.tctl("nodes", "add", "--roles=node", check=False)
        assert refused.returncode == 1
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert "PostgreSQL backend" in lines[0]
        assert "not answering" in lines[0]
        assert cluster.auth.alive()
    finally:
        pg_server.start()
    # Back without restarting teleport: writes, reads, the node's heartbeats.
    wait_for(lambda: cluster.tctl("nodes", "add", "--roles=node", check=False).returncode == 0, 60,
             what="tctl nodes add after PostgreSQL is back")
    assert node.host_uuid() in cluster.node_ids()
    assert cluster.auth.alive()

"""Join refusals: each exits non-zero with ONE stderr line naming the cause and the fix, and the
auth log records the refusals the auth service sees. Without a pin a node joins with a WARN."""

from __future__ import annotations

import pytest

from tests.conftest import Cluster, free_port, wait_for

OTHER_PIN = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One auth service for the whole module (each test uses its own node names and tokens)."""
    cluster = Cluster(tmp_path_factory.mktemp("refusals"), auth_service={"presence_ttl": "10s"})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill_all()


def refused(cluster: Cluster, name: str, argv: list[str]) -> str:
    """Start a node that must fail to join; returns its one stderr line."""
    node = cluster.start_node(name, argv, wait=False)
    assert node.daemon.wait_exit() != 0
    lines = node.log().strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{node.log()}"
    assert lines[0].startswith("ERROR: "), lines[0]
    assert not (node.identity_dir() / "tls_cert.pem").exists(), "a refused node has no identity"
    assert name not in {n["hostname"] for n in cluster.nodes()}
    return lines[0]


def assert_auth_logged_refusal(cluster: Cluster, name: str, token: str, cause: str) -> None:
    lines = [line for line in cluster.auth_log().splitlines()
             if f"join refused for {name} (node)" in line]
    assert len(lines) == 1, cluster.auth_log()
    assert cause in lines[0]
    assert token not in lines[0], "the auth log must not hold a usable token"
    assert f"with token {token[:4]}****" in lines[0] or "with token ****" in lines[0]


def test_wrong_pin_refused_before_token_is_sent(shared):
    token = shared.add_token()["token"]  # a valid token: had it been sent, the node would join
    line = refused(shared, "wrongpin", shared.node_argv("wrongpin", token=token,
                                                         pins=(OTHER_PIN,)))
    assert "CA pin mismatch" in line
    assert OTHER_PIN in line and shared.pin() in line  # what was expected, what was found
    assert "--ca-pin" in line and "tctl status" in line  # the fix
    assert "wrongpin" not in shared.auth_log(), "the auth service never saw the join"


def test_unknown_token(shared):
    token = "not-a-token-the-cluster-knows"
    line = refused(shared, "unknowntok", shared.node_argv("unknowntok", token=token,
                                                           pins=(shared.pin(),)))
    assert "join token is not valid" in line
    assert "tctl nodes add" in line
    assert_auth_logged_refusal(shared, "unknowntok", token, "join token is not valid")


def test_expired_token(shared):
    token = shared.add_token(ttl="1s")["token"]
    wait_for(lambda: token not in {t["token"] for t in shared.tctl_json("tokens", "ls")},
             what="the 1s token to expire")
    line = refused(shared, "expiredtok", shared.node_argv("expiredtok", token=token,
                                                           pins=(shared.pin(),)))
    assert "expired" in line and "tctl nodes add" in line
    assert_auth_logged_refusal(shared, "expiredtok", token, "join token is not valid")


def test_deleted_token(shared):
    token = shared.add_token()["token"]
    assert shared.tctl("tokens", "rm", token).stdout.strip() == f"Token {token} has been deleted"
    line = refused(shared, "deletedtok", shared.node_argv("deletedtok", token=token,
                                                           pins=(shared.pin(),)))
    assert "deleted" in line and "tctl nodes add" in line
    assert_auth_logged_refusal(shared, "deletedtok", token, "join token is not valid")


def test_token_without_the_role(shared):
    token = shared.add_token(roles="proxy")["token"]
    line = refused(shared, "proxytok", shared.node_argv("proxytok", token=token,
                                                         pins=(shared.pin(),)))
    assert "does not allow the node role" in line
    assert "--roles=node" in line
    assert_auth_logged_refusal(shared, "proxytok", token, "does not allow the node role")
    # the same token still admits what it names: nothing was consumed or broken by the refusal
    assert token in {t["token"] for t in shared.tctl_json("tokens", "ls")}


def test_unreachable_auth_server(shared):
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    line = refused(shared, "unreachable", shared.node_argv(
        "unreachable", token=shared.add_token()["token"], pins=(shared.pin(),),
        auth_server=nowhere))
    assert "cannot reach the auth server" in line
    assert nowhere in line
    assert "--auth-server" in line  # the fix


def test_no_pin_joins_with_warning(shared):
    token = shared.add_token()["token"]
    node = shared.start_node("nopin", shared.node_argv("nopin", token=token))
    warnings = [line for line in node.log().splitlines() if line.startswith("WARN")]
    assert len(warnings) == 1, node.log()
    assert "man-in-the-middle" in warnings[0]
    assert "--ca-pin" in warnings[0]
    wait_for(lambda: node.host_uuid() in shared.node_ids(), what="nopin in tctl nodes ls")


def test_any_of_several_pins(shared):
    token = shared.add_token()["token"]
    node = shared.start_node("twopins", shared.node_argv(
        "twopins", token=token, pins=(OTHER_PIN, shared.pin())))
    assert "WARN" not in node.log()
    wait_for(lambda: node.host_uuid() in shared.node_ids(), what="twopins in tctl nodes ls")


def test_bad_pin_syntax_is_a_config_error(shared):
    line = refused(shared, "badpin", shared.node_argv("badpin", token="x",
                                                       pins=("sha256:abc",)))
    assert "--ca-pin" in line and "sha256:<64 hex digits>" in line

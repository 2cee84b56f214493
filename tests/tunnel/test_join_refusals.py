"""A node joining through the proxy with a wrong CA pin or token is refused exactly as on a
direct join: the same one ERROR line, no identity, the token never sent after a pin mismatch."""

from __future__ import annotations

from tests.tunnel.conftest import TunnelEnv

OTHER_PIN = "sha256:" + "0" * 64


def error_line(node_log: str) -> str:
    lines = [line for line in node_log.splitlines() if line.startswith("ERROR: ")]
    assert len(lines) == 1, node_log
    return lines[0]


def test_wrong_pin_or_token_through_the_proxy_is_refused_as_on_a_direct_join(tunnel_env: TunnelEnv) -> None:
    env = tunnel_env
    proxy = env.start_proxy("proxy1")
    cases = [("pin", env.cluster.add_token("node")["token"], OTHER_PIN),
             ("token", "not-a-token-the-cluster-knows", env.cluster.pin())]
    for what, token, pin in cases:
        through = env.start_tunnel_node(f"via-proxy-{what}", proxy.web, token=token, pin=pin, wait=False)
        direct = env.cluster.start_node(f"direct-{what}", env.cluster.node_argv("x", token=token, pins=(pin,)),
                                        wait=False)
        for node in (through, direct):
            assert node.daemon is not None and node.daemon.wait_exit() != 0
            assert not (node.identity_dir() / "tls_cert.pem").exists()
        assert "reverse tunnel mode" in through.log()  # it did go through the proxy
        assert error_line(through.log()) == error_line(direct.log())
        if what == "pin":
            assert "CA pin mismatch" in error_line(through.log())
            assert "via-proxy-pin" not in env.cluster.auth_log(), "the token was never sent"
        else:
            assert "join token is not valid" in error_line(through.log())
    assert {n["hostname"] for n in env.cluster.nodes()} == set()

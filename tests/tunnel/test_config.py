"""The configuration of reverse tunnels: the proxy's tunnel listener and public address, an
agent's teleport.proxy_server, and the mistakes named with their fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from teleport_runtime.config import HostPort, apply_flags, load_config_file
from teleport_runtime.errors import ConfigError


def write(tmp_path: Path, doc: dict[str, object]) -> str:
    path = tmp_path / "teleport.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_the_proxy_tunnel_listener_defaults_to_3024_and_takes_a_public_address(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path, {
        "teleport": {"auth_servers": ["auth:3025"]}, "proxy_service": {"enabled": True}}))
    assert cfg.proxy.tunnel_listen_addr == HostPort("0.0.0.0", 3024) and cfg.proxy.tunnel_public_addr is None
    cfg = load_config_file(write(tmp_path, {
        "teleport": {"auth_servers": ["auth:3025"]},
        "proxy_service": {"enabled": True, "tunnel_listen_addr": "127.0.0.1:4024",
                          "tunnel_public_addr": "lb.example.com"},
    }))
    assert cfg.proxy.tunnel_listen_addr == HostPort("127.0.0.1", 4024)
    assert cfg.proxy.tunnel_public_addr == HostPort("lb.example.com", 3024)
    flagged = apply_flags(cfg, listen_ip="127.0.0.9")
    assert flagged.proxy.tunnel_listen_addr == HostPort("127.0.0.9", 4024)


def test_a_node_may_name_only_a_proxy(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path, {
        "version": "v3", "teleport": {"proxy_server": "proxy.example.com"}, "ssh_service": {"enabled": True}}))
    assert cfg.proxy_server == HostPort("proxy.example.com", 3080) and cfg.auth_servers == []


@pytest.mark.parametrize(("doc", "fragment"), [
    ({"teleport": {"proxy_server": "proxy:3080"}, "proxy_service": {"enabled": True}}, "for nodes"),
    ({"teleport": {"auth_servers": ["a:3025"]}, "proxy_service": {"enabled": True, "tunnel_listen_addr": "x:y"}},
     "proxy_service.tunnel_listen_addr"),
    ({"teleport": {"proxy_server": "bad host:1"}, "ssh_service": {"enabled": True}}, "teleport.proxy_server"),
    ({"ssh_service": {"enabled": True}}, "proxy_server"),
])
def test_mistakes_are_named(tmp_path: Path, doc: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config_file(write(tmp_path, doc))

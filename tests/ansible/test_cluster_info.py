from __future__ import annotations

from ansible_collections.teleport_access.cluster.plugins.modules import cluster_info

from .conftest import PIN


def test_reports_name_pins_rotation_and_nodes(run_module, cluster):
    cluster.nodes = [{"id": "u1", "hostname": "node1", "labels": {"env": "dev"}}]
    result, failed = run_module(cluster_info, {})
    assert not failed and result["changed"] is False
    assert result["cluster_name"] == "example.test"
    assert result["ca_pins"] == [PIN]
    assert result["rotation"]["host"]["phase"] == "standby"
    assert result["rotation"]["user"]["phase"] == "init"
    assert result["nodes"][0]["hostname"] == "node1"


def test_reports_proxies_with_their_rotation_phases(run_module, cluster):
    cluster.proxies = [{"id": "p1", "hostname": "proxy1",
                        "rotation": {"host": {"phase": "init", "id": "r2"}, "user": {"phase": "standby", "id": ""}}}]
    result, _failed = run_module(cluster_info, {})
    assert result["proxies"][0]["rotation"]["host"] == {"phase": "init", "id": "r2"}
    assert ["/usr/local/bin/tctl", "get", "proxies", "--format=json"] in cluster.calls


def test_nodes_can_be_left_out(run_module, cluster):
    result, _failed = run_module(cluster_info, {"nodes": False})
    assert "nodes" not in result and "proxies" not in result
    assert all(call[1:3] != ["nodes", "ls"] for call in cluster.calls)


def test_runs_in_check_mode(run_module, cluster):
    result, failed = run_module(cluster_info, {}, check=True)
    assert not failed and result["cluster_name"] == "example.test"


def test_passes_connection_options(run_module, cluster):
    run_module(cluster_info, {"tctl_config": "/etc/teleport.yaml", "auth_server": "auth1:3025"})
    assert cluster.calls[0][:5] == ["/usr/local/bin/tctl", "--config", "/etc/teleport.yaml",
                                    "--auth-server", "auth1:3025"]
    assert cluster.calls[0][-1] == "--format=json"


def test_non_json_output_fails_clearly(run_module, cluster, monkeypatch):
    monkeypatch.setattr(cluster, "status", lambda words: "Cluster: example.test\n")
    result, failed = run_module(cluster_info, {})
    assert failed and "printed no JSON" in result["msg"]

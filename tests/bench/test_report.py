"""The bench's bookkeeping (no processes, no timing): ratios, targets, and the files a run writes."""

from __future__ import annotations

import json
from pathlib import Path

from bench import report
from bench.figures import Figure


def test_ratio_and_target_directions() -> None:
    slow = Figure("latency", "via proxy", 120.0, "ms", 100.0, "OpenSSH", "lower", 1.0)
    assert slow.ratio == 1.2
    assert slow.met is False
    fast = Figure("throughput", "scp", 90.0, "MiB/s", 100.0, "OpenSSH", "higher", 0.8)
    assert fast.met is True
    absolute = Figure("auth scale", "joins", 400.0, "joins/s", better="higher", target=500, target_is_ratio=False)
    assert absolute.ratio is None
    assert absolute.met is False
    assert Figure("auth scale", "cpu", 0.5, "cores").met is None


def test_write_makes_json_and_markdown(tmp_path: Path) -> None:
    figures = [Figure("latency", "tsh ssh", 110.0, "ms", 100.0, "OpenSSH jump host", "lower", 1.2)]
    machine = {"started": "now", "duration_s": 1.0, "cpus": 2, "kernel": "k", "python": "3", "openssh": "o",
               "uptime_before": "load 1", "uptime_after": "load 2"}
    paths = report.write(tmp_path, "run", figures, machine, {"quick": True}, {"latency": {}})
    data = json.loads(paths["json"].read_text())
    assert data["figures"][0]["ratio"] == 1.1
    assert data["figures"][0]["met"] is True
    table = paths["markdown"].read_text()
    assert "| latency | tsh ssh | 110 ms | 100 ms: OpenSSH jump host | 1.10x | <= 1.2x | yes |" in table
    assert "load 1" in table


def test_fleet_inventory_uses_the_bench_hosts_only(tmp_path: Path) -> None:
    import yaml

    from bench import fleet

    inventory = yaml.safe_load(fleet.write_inventory(tmp_path / "hosts.yml", 3).read_text())["all"]
    groups = {name: list(group["hosts"]) for name, group in inventory["children"].items()}
    assert groups == {"teleport_auth": ["bench-auth1"], "teleport_proxy": ["bench-proxy1"],
                      "teleport_node": ["bench-node1", "bench-node2", "bench-node3"]}
    assert inventory["vars"]["runtime_auth_servers"] == ["bench-auth1:3025"]
    # the bench's own wheelhouse cache, not the one Molecule scenarios share
    assert inventory["vars"]["runtime_build_dir"].endswith("teleport_access-bench")

"""What site.yml's preflight reads on a host (roles/runtime/files/host_facts.py) and the node
unit it writes: run here against a made-up host layout in a temporary directory."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import jinja2

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "roles/runtime/files/host_facts.py"


def facts(root: Path, *ports: int) -> dict:
    args = [str(root / "etc/teleport.yaml"), str(root / "var/lib/teleport"), str(root / "bin"),
            str(root / "opt/teleport"), "teleport-preflight-probe", *map(str, ports)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_a_fresh_host_has_no_install(tmp_path):
    out = facts(tmp_path)
    assert out["install"] == "none" and out["found"] == []
    assert out["python"] == "{}.{}".format(*sys.version_info[:2]) and out["machine"]


def test_a_config_not_made_by_the_roles_is_a_foreign_install(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/teleport.yaml").write_text("teleport: {}\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/teleport").write_text("#!/bin/sh\n")  # a binary, not the roles' link
    out = facts(tmp_path)
    assert out["install"] == "foreign"
    assert str(tmp_path / "etc/teleport.yaml") in out["found"] and str(tmp_path / "bin/teleport") in out["found"]


def test_the_roles_own_install_is_recognised(tmp_path):
    venv_bin = tmp_path / "opt/teleport/venv/bin"
    venv_bin.mkdir(parents=True)
    (tmp_path / "bin").mkdir()
    for name in ("teleport", "tctl", "tsh"):
        (venv_bin / name).write_text("#!/bin/sh\n")
        (tmp_path / "bin" / name).symlink_to(venv_bin / name)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/teleport.yaml").write_text("teleport: {}\n")
    assert facts(tmp_path)["install"] == "ours"


def test_a_port_in_use_is_reported(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            idle = free.getsockname()[1]  # bound, not listening
            assert facts(tmp_path, busy, idle)["ports_in_use"] == [busy]


def render_unit(profile: str) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(REPO / "roles/runtime/templates")))
    env.filters["comment"] = lambda text: "# " + text
    return env.get_template("teleport.service.j2").render(
        ansible_managed="managed", runtime_service_description=profile, runtime_service_user="root",
        runtime_bin_dir="/usr/local/bin", runtime_config_path="/etc/teleport.yaml", runtime_diag_addr="127.0.0.1:3000",
        runtime_service_profile=profile, runtime_data_dir="/var/lib/teleport")


#: Directives that reach every child of the service, so every user session of a node.
SESSION_CONFINING = ("ProtectSystem", "ProtectHome", "ProtectKernelTunables", "ProtectKernelModules",
                     "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
                     "RestrictAddressFamilies", "SystemCallArchitectures", "SystemCallFilter", "LockPersonality",
                     "RestrictRealtime", "NoNewPrivileges", "CapabilityBoundingSet", "PrivateTmp",
                     "PrivateDevices", "RestrictNamespaces", "RestrictSUIDSGID", "ReadWritePaths",
                     "ReadOnlyPaths", "UMask", "MemoryDenyWriteExecute")


def directives(unit: str) -> set[str]:
    return {line.split("=", 1)[0] for line in unit.splitlines() if "=" in line and not line.startswith("#")}


def test_the_node_unit_does_not_confine_sessions():
    assert directives(render_unit("node")).isdisjoint(SESSION_CONFINING)


def test_auth_and_proxy_keep_the_sandbox():
    present = directives(render_unit("daemon"))
    assert {"ProtectSystem", "NoNewPrivileges", "CapabilityBoundingSet", "RestrictAddressFamilies"} <= present

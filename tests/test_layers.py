"""The import boundaries between the runtime's layers: the proxy and node reach cluster state only
through the auth API (so loading them loads neither the auth service nor the backend), the auth
service does not depend on the agents or clients, and the CA code depends on no service.

Each case imports one module in a fresh interpreter and lists the runtime packages it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("teleport_runtime."))))
"""

SERVICES = ("auth", "backend", "agent", "node", "proxy", "client", "daemon", "recording")

def loaded(module: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def offenders(module: str, forbidden: tuple[str, ...]) -> list[str]:
    return [m for m in loaded(module) if m.split(".")[1] in forbidden]


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        pytest.param("teleport_runtime.proxy.service", ("auth", "backend"), id="proxy"),
        pytest.param("teleport_runtime.node.service", ("auth", "backend"), id="node"),
        pytest.param(
            "teleport_runtime.auth.server", ("agent", "node", "proxy", "client", "daemon"),
            id="auth",
        ),
        pytest.param("teleport_runtime.ca", SERVICES, id="ca"),
        pytest.param("teleport_runtime.identity", SERVICES, id="identity"),
    ],
)
def test_a_layer_loads_only_what_is_below_it(module: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(module, forbidden) == []


def test_the_auth_service_does_not_import_the_agents_identity_module() -> None:
    """The identity and TLS helpers several services share live outside ``agent/``."""
    assert "teleport_runtime.agent.identity" not in loaded("teleport_runtime.auth.service")
    assert "teleport_runtime.identity" in loaded("teleport_runtime.auth.service")

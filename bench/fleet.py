"""5. Fleet deployment (``--fleet``, off by default; needs podman and the Molecule base image):
``playbooks/site.yml`` wall time for 1, 3 and 6 nodes on podman hosts running systemd, first run
(fresh hosts) and second run (converged, nothing to change). The reference, in the same run on the
same hosts: a plain Ansible play that sets up what OpenSSH with a bastion needs, sshd trusting a
user CA (``bench/fleet_openssh.yml``).

Each size gets fresh hosts: ``bench-auth1``, ``bench-proxy1`` and ``bench-node1..N`` (an auth and a
proxy host besides the N nodes) on the podman network ``bench-fleet``; names of their own, since
Molecule scenarios may run on the same machine. On each set: the OpenSSH play twice, then site.yml
twice. The runtime's wheelhouse is built once before any clock starts, in a cache of the bench's
own (``~/.cache/teleport_access-bench``), so the figures are the deployment, not package downloads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from bench.env import BenchError
from bench.figures import Figure

SECTION = "fleet"
REPO = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("TELEPORT_MOLECULE_IMAGE", "localhost/teleport-access-base:bookworm")
NETWORK = "bench-fleet"
PREFIX = "bench-"
CACHE = Path.home() / ".cache" / "teleport_access-bench"
OPENSSH_PLAY = Path(__file__).parent / "fleet_openssh.yml"
#: Bound on one playbook run, and on a host's boot.
PLAY_TIMEOUT = 1800
BOOT_TIMEOUT = 120


def missing() -> str | None:
    """Why the fleet section cannot run here, or None."""
    if shutil.which("podman") is None:
        return "bench --fleet needs podman: install it with scripts/setup (or apt-get install podman runc)"
    if not (REPO / ".venv" / "bin" / "ansible-playbook").exists():
        return "bench --fleet needs ansible-playbook in .venv: pip install -r requirements-dev.txt"
    return None


def _podman(env: dict[str, str], *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise BenchError(f"podman {' '.join(args[:3])} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return result


def environment() -> dict[str, str]:
    """CONTAINERS_CONF from molecule/setup-host.sh (which builds the base image when missing), the
    venv's tools first on PATH, the repo's ansible.cfg."""
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    setup = subprocess.run([str(REPO / "molecule" / "setup-host.sh")], env=env, capture_output=True, text=True,
                           timeout=1200)
    if setup.returncode != 0:
        raise BenchError(f"molecule/setup-host.sh failed: {setup.stderr.strip()[-800:]}")
    env.update(CONTAINERS_CONF=setup.stdout.strip().splitlines()[-1], ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    return env


def host_names(nodes: int) -> list[str]:
    return [f"{PREFIX}auth1", f"{PREFIX}proxy1", *(f"{PREFIX}node{i}" for i in range(1, nodes + 1))]


def remove_hosts(env: dict[str, str]) -> None:
    """Every container of the bench's (``bench-*`` on its network), whatever a past run left."""
    listed = _podman(env, "ps", "-a", "--filter", f"network={NETWORK}", "--format", "{{.Names}}", check=False)
    names = [n for n in listed.stdout.split() if n.startswith(PREFIX)]
    if names:
        _podman(env, "rm", "-f", "-t", "0", *names)


def create_hosts(env: dict[str, str], names: list[str]) -> None:
    if _podman(env, "network", "exists", NETWORK, check=False).returncode != 0:
        _podman(env, "network", "create", NETWORK)
    for name in names:
        _podman(env, "run", "-d", "--name", name, "--hostname", name, "--network", NETWORK, "--systemd", "always",
                IMAGE, "/sbin/init")
    for name in names:  # booted: systemd reached its default target
        _podman(env, "exec", name, "systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_TIMEOUT)


def write_inventory(path: Path, nodes: int) -> Path:
    names = host_names(nodes)
    inventory = {"all": {
        "vars": {
            "ansible_connection": "containers.podman.podman",
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "auth_cluster_name": "fleet.test",
            "runtime_auth_servers": [f"{names[0]}:3025"],
            "runtime_build_dir": str(CACHE),
            "proxy_public_addr": "",
            "proxy_ssh_public_addr": "",
        },
        "children": {
            "teleport_auth": {"hosts": {names[0]: None}},
            "teleport_proxy": {"hosts": {names[1]: None}},
            "teleport_node": {"hosts": {name: None for name in names[2:]}},
        },
    }}
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def build_wheelhouse(env: dict[str, str]) -> None:
    """The runtime's wheelhouse, as the runtime role builds it on the controller, before timing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), str(REPO / "roles" / "runtime" / "files" / "build_wheelhouse.py"),
         "--source", str(REPO), "--archive", str(CACHE / "wheelhouse.tar"), "--cache", str(CACHE / "wheels")],
        env=env, capture_output=True, text=True, timeout=PLAY_TIMEOUT,
    )
    if result.returncode != 0:
        raise BenchError(f"building the wheelhouse failed: {result.stderr.strip()[-800:]}")


def play(env: dict[str, str], inventory: Path, playbook: Path, log: Path, extra: Path | None = None
         ) -> dict[str, Any]:
    """One ``ansible-playbook`` run: its wall time and the recap's changed/failed totals."""
    argv = ["ansible-playbook", "-i", str(inventory), str(playbook)]
    if extra is not None:
        argv += ["-e", f"@{extra}"]
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO, timeout=PLAY_TIMEOUT)
    seconds = time.perf_counter() - start
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n{result.stdout}\n{result.stderr}\n")
    if result.returncode != 0:
        raise BenchError(f"{playbook.name} exited {result.returncode} (log: {log}): "
                         f"{(result.stdout + result.stderr).strip()[-800:]}")
    recap = re.findall(r"changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", result.stdout)
    return {"seconds": seconds, "changed": sum(int(c) for c, _, _ in recap),
            "failed": sum(int(f) for _, _, f in recap)}


def run(root: Path, counts: list[int]) -> tuple[list[Figure], dict[str, Any]]:
    problem = missing()
    if problem:
        raise BenchError(problem)
    root.mkdir(parents=True, exist_ok=True)
    env = environment()
    build_wheelhouse(env)
    ca = root / "user_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench user CA", "-f", str(ca)], check=True)
    extra = root / "openssh-vars.json"
    extra.write_text(json.dumps({"bench_user_ca_public_key": ca.with_suffix(".pub").read_text().strip()}))
    site = REPO / "playbooks" / "site.yml"
    figures: list[Figure] = []
    details: dict[str, Any] = {"order": "per size: fresh hosts; OpenSSH play twice, then site.yml twice"}
    try:
        for nodes in counts:
            remove_hosts(env)
            create_hosts(env, host_names(nodes))
            inventory = write_inventory(root / f"inventory-{nodes}.yml", nodes)
            log = root / f"fleet-{nodes}.log"
            got = {
                "openssh_first": play(env, inventory, OPENSSH_PLAY, log, extra),
                "openssh_second": play(env, inventory, OPENSSH_PLAY, log, extra),
                "site_first": play(env, inventory, site, log),
                "site_second": play(env, inventory, site, log),
            }
            details[str(nodes)] = got
            hosts = f"{nodes} node{'s' if nodes > 1 else ''} + auth + proxy"
            for run_name in ("first", "second"):
                ours, ref = got[f"site_{run_name}"], got[f"openssh_{run_name}"]
                figures.append(Figure(
                    SECTION, f"site.yml, {hosts}, {run_name} run", ours["seconds"], "s", ref["seconds"],
                    f"OpenSSH + user CA play ({ref['seconds']:.1f} s)", "lower",
                    note=f"changed {ours['changed']} (OpenSSH play: {ref['changed']})",
                ))
    finally:
        remove_hosts(env)
    return figures, details

"""5. OpenSSH nodes: one real sshd reached two ways in the same run.

- the reference: OpenSSH client -> the sshd jump host (ProxyJump) -> the sshd, a plain key;
- ours: OpenSSH client -> our proxy -> the same sshd, registered as an OpenSSH node
  (``tctl create`` of ``kind: node, sub_kind: openssh``), with the config ``tsh config`` prints.
  The proxy terminates SSH (a host certificate for the node from the auth service), checks the
  roles, logs in with a per-session certificate and records PTY sessions, in every recording mode
  but ``off``: this is proxy recording mode for OpenSSH nodes.

The sshd trusts both: ``AuthorizedKeysFile`` with the reference's key and ``TrustedUserCAKeys`` with
the cluster's user CA; it serves a host certificate from ``tctl auth sign --host``.

Figures: latency of ``true`` (median, no PTY), latency of ``true`` with a PTY (``ssh -tt``: the
proxy records it), and stdin throughput to ``cat > /dev/null`` (best run, MiB/s).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bench.env import CLUSTER, SSHD, BenchError, OpenSSH, OurCluster, clean_env, port_open, wait_until
from bench.figures import Figure, interleaved, median
from bench.throughput import MiB, _stdin_run, make_file
from tests.conftest import free_port

SECTION = "openssh"
NAME = "legacy1"


def _start_sshd(openssh: OpenSSH, ours: OurCluster, root: Path) -> tuple[str, int]:
    """The shared sshd: the reference's key and our user CA; our host certificate."""
    assert ours.cluster is not None
    root.mkdir(parents=True, exist_ok=True)
    host, port = "127.0.0.1", free_port("127.0.0.1")
    key = root / "host_key"
    ours.cluster.tctl("auth", "sign", f"--host={NAME},{host}", f"--out={key}")
    user_ca = root / "user_ca.pub"
    user_ca.write_text(ours.cluster.tctl("auth", "export", "--type=user").stdout)
    config = root / "sshd.conf"
    config.write_text(
        f"ListenAddress {host}:{port}\nHostKey {key}\nHostCertificate {key}-cert.pub\n"
        f"AuthorizedKeysFile {openssh.root / 'authorized_keys'}\nTrustedUserCAKeys {user_ca}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPidFile none\nUseDNS no\nLogLevel ERROR\n"
    )
    openssh.procs.start([SSHD, "-D", "-e", "-f", str(config)], root / "sshd.log")
    wait_until(lambda: port_open(host, port), f"the OpenSSH node's sshd on {host}:{port}")
    # the reference reaches it through the jump host, trusting its host key
    public = Path(f"{key}.pub").read_text().strip()
    (root / "known_hosts").write_text(f"[{host}]:{port} {public}\n")
    common = (f"    User root\n    IdentityFile {openssh.user_key}\n    IdentitiesOnly yes\n"
              "    StrictHostKeyChecking yes\n    BatchMode yes\n    GSSAPIAuthentication no\n")
    (root / "ssh_config").write_text(
        openssh.config.read_text()
        + f"\nHost legacy\n    HostName {host}\n    Port {port}\n    ProxyJump jump\n{common}"
        f"    UserKnownHostsFile {root / 'known_hosts'}\n"
    )
    return host, port


def run(openssh: OpenSSH, ours: OurCluster, runs: int, size: int, workdir: Path
        ) -> tuple[list[Figure], dict[str, Any]]:
    assert ours.cluster is not None
    root = workdir / "openssh-node"
    host, port = _start_sshd(openssh, ours, root)
    resource = {"kind": "node", "sub_kind": "openssh", "version": "v2",
                "metadata": {"name": NAME, "labels": {"env": "bench"}},
                "spec": {"addr": f"{host}:{port}", "hostname": NAME}}
    (root / "node.yaml").write_text(yaml.safe_dump(resource))
    ours.cluster.tctl("create", "-f", str(root / "node.yaml"))

    def listed() -> bool:
        try:
            return NAME in {n["hostname"] for n in json.loads(ours.tsh("ls", "--format=json"))}
        except BenchError:
            return False

    wait_until(listed, f"tsh ls to list {NAME}")
    ref = ["ssh", "-F", str(root / "ssh_config"), "legacy"]
    via = ["ssh", "-F", str(ours.config), "-o", "BatchMode=yes", f"root@{NAME}.{CLUSTER}"]
    commands = {
        "openssh_jump": ([*ref, "true"], clean_env()),
        "via_proxy": ([*via, "true"], ours.env()),
        "openssh_jump_pty": ([*ref, "-tt", "true"], clean_env()),
        "via_proxy_pty": ([*via, "-tt", "true"], ours.env()),
    }
    times = interleaved(commands, runs)
    ms = {name: median(values) * 1000 for name, values in times.items()}
    data = make_file(workdir / "openssh-payload.bin", size)
    cat = "cat > /dev/null"
    rates: dict[str, list[float]] = {"openssh_jump": [], "via_proxy": []}
    for _ in range(3):
        rates["openssh_jump"].append(_stdin_run([*ref, cat], clean_env(), data))
        rates["via_proxy"].append(_stdin_run([*via, cat], ours.env(), data))
    data.unlink()
    mibs = {name: size / MiB / min(values) for name, values in rates.items()}
    figures = [
        Figure(SECTION, "OpenSSH -> proxy (terminating) -> sshd", ms["via_proxy"], "ms", ms["openssh_jump"],
               f"OpenSSH -> sshd jump host -> the same sshd ({ms['openssh_jump']:.0f} ms)", "lower"),
        Figure(SECTION, "OpenSSH -tt -> proxy (terminating, recorded) -> sshd", ms["via_proxy_pty"], "ms",
               ms["openssh_jump_pty"], f"OpenSSH -tt via the jump host ({ms['openssh_jump_pty']:.0f} ms)", "lower"),
        Figure(SECTION, f"stdin {size // MiB} MiB -> proxy (terminating) -> sshd", mibs["via_proxy"], "MiB/s",
               mibs["openssh_jump"], f"OpenSSH via the jump host ({mibs['openssh_jump']:.0f} MiB/s)", "higher"),
    ]
    return figures, {"runs": runs, "seconds": times, "median_ms": ms, "throughput_mib_s": mibs, "bytes": size}

"""1. Connection latency: ``true`` on the node, from process start to exit, median of N runs.

Compared: OpenSSH client -> sshd jump host (ProxyJump) -> sshd (the reference), OpenSSH client ->
our proxy -> our node with the config ``tsh config`` prints (ProxyCommand with the proxy
subsystem), the same with ``ssh -J`` (direct-tcpip), and ``tsh ssh`` -> our proxy -> our node.
And the start-up of ``tctl status`` and ``tctl nodes ls`` on the auth host (the whole command:
interpreter, imports, config, one mutual-TLS request), against an absolute target.
"""

from __future__ import annotations

from typing import Any

from bench.env import CLASSIC_KEX, OpenSSH, OurCluster, clean_env
from bench.figures import Figure, interleaved, median

SECTION = "latency"
#: tctl's start-up for the common commands (issue 19): no OpenSSH peer, an absolute bound.
TCTL_TARGET_MS = 500.0


def run(openssh: OpenSSH, ours: OurCluster, runs: int) -> tuple[list[Figure], dict[str, Any]]:
    commands = {
        "openssh_jump": ([*openssh.ssh(), "true"], clean_env()),
        "openssh_jump_x25519": ([*openssh.ssh(classic_kex=True), "true"], clean_env()),
        "openssh_via_proxy": ([*ours.ssh(), "true"], ours.env()),
        "openssh_j_via_proxy": ([*ours.ssh_jump(), "true"], ours.env()),
        "tsh_ssh": ([*ours.tsh_ssh(), "true"], ours.env()),
        "tctl_status": ([*ours.tctl(), "status"], ours.env()),
        "tctl_nodes_ls": ([*ours.tctl(), "nodes", "ls"], ours.env()),
    }
    times = interleaved(commands, runs)
    ref = median(times["openssh_jump"])
    ms = {name: median(values) * 1000 for name, values in times.items()}
    ref_name = f"OpenSSH -> sshd jump host -> sshd ({ms['openssh_jump']:.0f} ms)"
    figures = [
        Figure(SECTION, "OpenSSH -> proxy -> node (tsh config)", ms["openssh_via_proxy"], "ms",
               ref * 1000, ref_name, "lower", 1.0),
        Figure(SECTION, "OpenSSH -J proxy -> node", ms["openssh_j_via_proxy"], "ms",
               ref * 1000, ref_name, "lower", 1.0),
        Figure(SECTION, "tsh ssh -> proxy -> node", ms["tsh_ssh"], "ms", ref * 1000, ref_name, "lower", 1.2),
        Figure(SECTION, "OpenSSH -> proxy -> node (tsh config), vs OpenSSH with curve25519 kex",
               ms["openssh_via_proxy"], "ms", ms["openssh_jump_x25519"],
               f"OpenSSH jump host, KexAlgorithms {CLASSIC_KEX} ({ms['openssh_jump_x25519']:.0f} ms)", "lower",
               note="secondary reference: the same key exchange our side negotiates"),
    ]
    figures += [
        Figure(SECTION, f"tctl {' '.join(name.split('_')[1:])} (auth host, whole command)", ms[name], "ms",
               better="lower", target=TCTL_TARGET_MS, target_is_ratio=False)
        for name in ("tctl_status", "tctl_nodes_ls")
    ]
    return figures, {"runs": runs, "seconds": times, "median_ms": ms}

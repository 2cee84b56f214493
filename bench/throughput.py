"""2. Throughput: a file's bytes through one session (stdin to ``cat > /dev/null`` on the node), and
``scp`` of the file to the node, via our proxy and via the OpenSSH jump host. MiB/s of wall time
from process start to exit, best of the runs (the least disturbed by other load on the machine)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.env import OpenSSH, OurCluster, clean_env
from bench.figures import Figure, timed
from bench.profiling import Sampler, pyinstrument_argv

SECTION = "throughput"
MiB = 1024 * 1024


def make_file(path: Path, size: int) -> Path:
    """``size`` random bytes (incompressible, should compression ever be on)."""
    chunk = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            part = chunk[: min(len(chunk), size - written)]
            f.write(part)
            written += len(part)
    return path


def _stdin_run(argv: list[str], env: dict[str, str], data: Path) -> float:
    with open(data, "rb") as stdin:
        return timed(argv, env, stdin)


def run(openssh: OpenSSH, ours: OurCluster, size: int, runs: int, workdir: Path, profile_dir: Path | None = None
        ) -> tuple[list[Figure], dict[str, Any]]:
    data = make_file(workdir / "payload.bin", size)
    cat = "cat > /dev/null"
    scp_ref, scp_ref_dest = openssh.scp_dest("/dev/null")
    scp_ours, scp_ours_dest = ours.scp_dest("/dev/null")
    cases = {
        "stdin_openssh_jump": lambda: _stdin_run([*openssh.ssh(), cat], clean_env(), data),
        "stdin_openssh_via_proxy": lambda: _stdin_run([*ours.ssh(), cat], ours.env(), data),
        "stdin_tsh_ssh": lambda: _stdin_run([*ours.tsh_ssh(), cat], ours.env(), data),
        "scp_openssh_jump": lambda: timed([*scp_ref, str(data), scp_ref_dest], clean_env()),
        "scp_openssh_via_proxy": lambda: timed([*scp_ours, str(data), scp_ours_dest], ours.env()),
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, case in cases.items():
            seconds[name].append(case())
    if profile_dir is not None:  # one more, untimed: tsh under pyinstrument, the proxy under py-spy
        assert ours.proxy is not None
        with Sampler(ours.proxy.daemon.pid, profile_dir / "proxy-tsh-ssh.svg"):
            _stdin_run(pyinstrument_argv(profile_dir / "tsh-ssh.html", *ours.tsh_ssh(), cat), ours.env(), data)
    data.unlink()
    rate = {name: size / MiB / min(values) for name, values in seconds.items()}
    mib = size // MiB
    stdin_ref = f"OpenSSH via sshd jump host ({rate['stdin_openssh_jump']:.0f} MiB/s)"
    scp_ref_name = f"scp via sshd jump host ({rate['scp_openssh_jump']:.0f} MiB/s)"
    figures = [
        Figure(SECTION, f"{mib} MiB stdin -> cat, OpenSSH via proxy", rate["stdin_openssh_via_proxy"], "MiB/s",
               rate["stdin_openssh_jump"], stdin_ref, "higher", 0.8),
        Figure(SECTION, f"{mib} MiB stdin -> cat, tsh ssh via proxy", rate["stdin_tsh_ssh"], "MiB/s",
               rate["stdin_openssh_jump"], stdin_ref, "higher", 0.8),
        Figure(SECTION, f"{mib} MiB scp via proxy", rate["scp_openssh_via_proxy"], "MiB/s",
               rate["scp_openssh_jump"], scp_ref_name, "higher", 0.8),
    ]
    return figures, {"bytes": size, "runs": runs, "seconds": seconds, "mib_per_s": rate}

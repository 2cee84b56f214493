"""2. Throughput: a file's bytes through one session (stdin to ``cat > /dev/null`` on the node), and
``scp`` of the file to the node, via our proxy and via the OpenSSH jump host. MiB/s of wall time
from process start to exit, best of the runs (the least disturbed by other load on the machine).

Session recording: the cluster runs the default mode (``node``), which records interactive
sessions only, so the stdin and scp figures are of unrecorded sessions. A quarter of the bytes
are also sent the other way through a terminal (``cat FILE`` in a session with a PTY, ``-t``),
which the node records, against ``ssh -tt`` through the jump host."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.env import BenchError, OpenSSH, OurCluster, clean_env
from bench.figures import COMMAND_TIMEOUT, Figure, timed
from bench.profiling import Sampler, pyinstrument_argv

SECTION = "throughput"
MiB = 1024 * 1024
#: At least OpenSSH's rate through its own jump host (issue 19).
TARGET = 1.0


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


def _pty_run(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of a command whose (large) output goes to /dev/null."""
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, timeout=COMMAND_TIMEOUT)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv[:6])}... exited {result.returncode}: "
                         f"{result.stderr.decode(errors='replace').strip()[-500:]}")
    return time.perf_counter() - start


def run(openssh: OpenSSH, ours: OurCluster, size: int, runs: int, workdir: Path, profile_dir: Path | None = None
        ) -> tuple[list[Figure], dict[str, Any]]:
    data = make_file(workdir / "payload.bin", size)
    pty_data = make_file(workdir / "payload-pty.bin", size // 4)
    pty_cat = f"cat {pty_data}"  # the node and the sshd target run on this machine, as root
    cat = "cat > /dev/null"
    scp_ref, scp_ref_dest = openssh.scp_dest("/dev/null")
    scp_ours, scp_ours_dest = ours.scp_dest("/dev/null")
    cases = {
        "stdin_openssh_jump": lambda: _stdin_run([*openssh.ssh(), cat], clean_env(), data),
        "stdin_openssh_via_proxy": lambda: _stdin_run([*ours.ssh(), cat], ours.env(), data),
        "stdin_tsh_ssh": lambda: _stdin_run([*ours.tsh_ssh(), cat], ours.env(), data),
        "scp_openssh_jump": lambda: timed([*scp_ref, str(data), scp_ref_dest], clean_env()),
        "scp_openssh_via_proxy": lambda: timed([*scp_ours, str(data), scp_ours_dest], ours.env()),
        "pty_openssh_jump": lambda: _pty_run([*openssh.ssh()[:-1], "-tt", openssh.ssh()[-1], pty_cat], clean_env()),
        "pty_tsh_ssh": lambda: _pty_run([*ours.tsh_ssh(tty=True), pty_cat], ours.env()),
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
    pty_data.unlink()
    rate = {name: (size // 4 if name.startswith("pty_") else size) / MiB / min(values)
            for name, values in seconds.items()}
    mib = size // MiB
    unrecorded = "not recorded: a session without a terminal"
    stdin_ref = f"OpenSSH via sshd jump host ({rate['stdin_openssh_jump']:.0f} MiB/s)"
    scp_ref_name = f"scp via sshd jump host ({rate['scp_openssh_jump']:.0f} MiB/s)"
    figures = [
        Figure(SECTION, f"{mib} MiB stdin -> cat, OpenSSH via proxy", rate["stdin_openssh_via_proxy"], "MiB/s",
               rate["stdin_openssh_jump"], stdin_ref, "higher", TARGET, note=unrecorded),
        Figure(SECTION, f"{mib} MiB stdin -> cat, tsh ssh via proxy", rate["stdin_tsh_ssh"], "MiB/s",
               rate["stdin_openssh_jump"], stdin_ref, "higher", TARGET, note=unrecorded),
        Figure(SECTION, f"{mib} MiB scp via proxy", rate["scp_openssh_via_proxy"], "MiB/s",
               rate["scp_openssh_jump"], scp_ref_name, "higher", TARGET, note=unrecorded),
        Figure(SECTION, f"{mib // 4} MiB terminal output (cat FILE), tsh ssh -t via proxy", rate["pty_tsh_ssh"],
               "MiB/s", rate["pty_openssh_jump"],
               f"ssh -tt via sshd jump host ({rate['pty_openssh_jump']:.0f} MiB/s)", "higher", TARGET,
               note="session recorded by the node"),
    ]
    return figures, {"bytes": size, "runs": runs, "seconds": seconds, "mib_per_s": rate}

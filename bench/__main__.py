"""Run the benchmarks: ``.venv/bin/python -m bench [--quick] [--only SECTION ...] [--fleet] [--profile]``
(or ``bench/run``).

Starts its own OpenSSH sshd pair and its own cluster on loopback in a temporary directory, runs
the sections, writes ``bench/results/<stamp>.json``, ``.md`` and ``.png`` (and ``latest.*``),
prints the Markdown table, and cleans up every process and file it made.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import authscale, concurrency, enhanced, fleet, latency, login, profiling, report, throughput
from bench import openssh as openssh_nodes
from bench.env import OpenSSH, OurCluster, Processes, load_average, raise_nofile
from bench.figures import Figure

SECTIONS = ("latency", "throughput", "concurrency", "authscale", "login", "enhanced", "openssh", "fleet")
#: Run unless --only says otherwise; the fleet section needs podman and runs with --fleet.
DEFAULT_SECTIONS = SECTIONS[:-1]
MiB = 1024 * 1024

QUICK = {"latency_runs": 20, "throughput_bytes": 128 * MiB, "throughput_runs": 2, "sessions": [100],
         "latency_under_load_runs": 5, "nodes": [2000], "heartbeat_seconds": 15, "joins": 500, "fleet_nodes": [1],
         "login_runs": 10, "enhanced_runs": 10, "enhanced_bytes": 64 * MiB, "openssh_runs": 10,
         "openssh_bytes": 64 * MiB}
FULL = {"latency_runs": 30, "throughput_bytes": 1024 * MiB, "throughput_runs": 3, "sessions": [100, 500, 1000],
        "latency_under_load_runs": 7, "nodes": [10000, 50000], "heartbeat_seconds": 60, "joins": 2000,
        "fleet_nodes": [1, 3, 6], "login_runs": 30, "enhanced_runs": 20, "enhanced_bytes": 256 * MiB,
        "openssh_runs": 20, "openssh_bytes": 256 * MiB}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="where the results go (default bench/results)")
    parser.add_argument("--fleet", action="store_true",
                        help="also time site.yml on podman hosts against an OpenSSH play (needs podman)")
    parser.add_argument("--profile", action="store_true",
                        help="write flame graphs (py-spy) of the auth and proxy and a pyinstrument report of tsh")
    parser.add_argument("--workers", type=int, default=2, help="processes running simulated nodes (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) after the run")
    return parser.parse_args(argv)


def machine_info() -> dict[str, Any]:
    openssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return {"started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(), "openssh": openssh,
            "uptime_before": load_average()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    params = {**(QUICK if args.quick else FULL), "quick": args.quick}
    sections = args.only or [*DEFAULT_SECTIONS, *(["fleet"] if args.fleet else [])]
    needed, optional = profiling.missing(args.profile)
    if needed:
        print(f"bench: missing {', '.join(needed)}: {profiling.INSTALL}", file=sys.stderr)
        return 2
    if optional:
        print(f"bench: without {', '.join(optional)}; {profiling.INSTALL} for it", file=sys.stderr)
    if "fleet" in sections and fleet.missing():
        print(f"bench: {fleet.missing()}", file=sys.stderr)
        return 2
    biggest = max(params["sessions"]) if "concurrency" in sections else 0
    raise_nofile(max(65536, 8 * biggest))  # inherited by the daemons the bench starts
    machine = machine_info()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    procs = Processes()
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    failed: list[str] = []
    ssh_sections = [s for s in sections if s not in ("authscale", "fleet")]
    stem = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    profile_dir = None
    if args.profile:
        profile_dir = args.out / f"{stem}-profile"
        profile_dir.mkdir(parents=True, exist_ok=True)
    openssh = ours = None
    try:
        if ssh_sections:
            print(f"starting sshd pair and cluster in {root}", flush=True)
            openssh = OpenSSH(root / "openssh", procs).start(max_sessions=max(100, biggest))
            ours = OurCluster(root / "cluster").start()
        for section in sections:
            print(f"== {section}", flush=True)
            try:
                if section == "latency":
                    got = latency.run(openssh, ours, params["latency_runs"])
                elif section == "throughput":
                    got = throughput.run(openssh, ours, params["throughput_bytes"], params["throughput_runs"], root,
                                         profile_dir)
                elif section == "concurrency":
                    got = concurrency.run(openssh, ours, params["sessions"], params["latency_under_load_runs"])
                elif section == "authscale":
                    got = authscale.run(root / "scale", params["nodes"], params["heartbeat_seconds"],
                                        params["joins"], args.workers, profile_dir)
                elif section == "login":
                    got = login.run(ours, params["login_runs"])
                elif section == "enhanced":
                    got = enhanced.run(ours, params["enhanced_runs"], params["enhanced_bytes"])
                elif section == "openssh":
                    got = openssh_nodes.run(openssh, ours, params["openssh_runs"], params["openssh_bytes"], root)
                else:
                    got = fleet.run(root / "fleet", params["fleet_nodes"])
            except Exception as exc:  # one section failing still reports the others
                traceback.print_exc()
                failed.append(f"{section}: {exc}")
                continue
            figures += got[0]
            details[section] = got[1]
            for figure in got[0]:
                ratio = f" ({figure.ratio:.2f}x)" if figure.ratio is not None else ""
                print(f"   {figure.name}: {figure.value:.4g} {figure.unit}{ratio}", flush=True)
    finally:
        if ours is not None:
            ours.stop()
        procs.stop_all()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    machine["uptime_after"] = load_average()
    machine["duration_s"] = time.monotonic() - started
    details["failed_sections"] = failed
    if profile_dir is not None:
        details["profiles"] = sorted(str(p) for p in profile_dir.iterdir())
    paths = report.write(args.out, stem, figures, machine, params, details)
    for kind, path in paths.items():
        latest = args.out / f"latest{path.suffix}"
        shutil.copy(path, latest)
        print(f"{kind}: {path}")
    print(paths["markdown"].read_text())
    if failed:
        print("sections that failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""7. BPF enhanced session recording: what it costs, and how many events it keeps up with.

In the same run and the same cluster, a second node with ``ssh_service.enhanced_recording`` on
(default buffer sizes; the bench user's ``access`` role records commands and connections) is
compared with the plain node: ``tsh ssh NODE true`` latency (median, interleaved), a session
running 200 short processes (median), and stdin -> ``cat > /dev/null`` throughput (best of the
runs). Then bursts of short processes on the recorded node: commands per second the node records
with no loss (``session.enhanced_lost`` absent and every ``/bin/true`` in the audit log).
Needs root and a kernel that can load the program; otherwise the section fails saying why.
"""

from __future__ import annotations

import json
from typing import Any

from bench.env import BenchError, OurCluster, wait_until
from bench.figures import Figure, interleaved, median
from bench.throughput import MiB, _stdin_run, make_file

SECTION = "enhanced recording"
NODE = "node-bpf"
#: The burst sizes tried, smallest first; the figure is the fastest one recorded without loss.
BURSTS = (500, 2000, 5000)
SHORT_PROCESSES = "for i in $(seq 200); do /bin/true; done"


def _start_node(ours: OurCluster) -> None:
    assert ours.cluster is not None
    token = ours.cluster.add_token(roles="node", ttl="30m")["token"]
    node = ours.cluster.start_node(NODE, token=token, pins=(ours.cluster.pin(),),
                                   config={"ssh_service": {"enhanced_recording": {"enabled": True}}})
    off = [line for line in node.log().splitlines() if "enhanced session recording is off" in line]
    if off:
        raise BenchError(off[0].split("enhanced session recording is off:", 1)[1].strip())

    def listed() -> bool:
        return NODE in {n["hostname"] for n in json.loads(ours.tsh("ls", "--format=json"))}

    wait_until(listed, f"tsh ls to list {NODE}")


def _session_commands(ours: OurCluster, session_id: str) -> tuple[int, dict[str, Any] | None]:
    assert ours.cluster is not None
    events = ours.cluster.tctl_json("audit", "ls", "--since=1h", "--type=session.command,session.enhanced_lost")
    mine = [e for e in events if e.get("session_id") == session_id]
    lost = next((e for e in mine if e["event"] == "session.enhanced_lost"), None)
    return len([e for e in mine if e["event"] == "session.command" and e.get("path") == "/bin/true"]), lost


def _burst(ours: OurCluster, count: int) -> dict[str, Any]:
    """``count`` short processes in one session; how fast, and whether every one was recorded."""
    # timed inside the session: the rate the processes ran at, not the login around them
    command = (f"s=$(date +%s%N); seq {count} | xargs -P 2 -n 100 sh -c 'for i; do /bin/true; done' sh; "
               "echo SID=$SSH_SESSION_ID NS=$(( $(date +%s%N) - s ))")
    out = ours.tsh("ssh", f"root@{NODE}", command)
    session_id = out.split("SID=")[1].split()[0]
    seconds = int(out.split("NS=")[1].split()[0]) / 1e9
    seen: list[int] = []

    def settled() -> bool:  # the audit log has them all, or stopped growing (lost ones)
        recorded, lost = _session_commands(ours, session_id)
        seen.append(recorded)
        return recorded >= count or (lost is not None and len(seen) > 3 and seen[-1] == seen[-4])

    wait_until(settled, "the burst's events in the audit log", timeout=300, interval=1.0)
    recorded, lost = _session_commands(ours, session_id)
    return {"processes": count, "seconds": seconds, "recorded": recorded, "lost": lost,
            "events_per_s": recorded / seconds}


def _lost(burst: dict[str, Any]) -> int:
    lost = burst["lost"] or {}
    return sum(int(lost.get(k, 0)) for k in ("command", "disk", "network", "queue"))


def run(ours: OurCluster, runs: int, size: int) -> tuple[list[Figure], dict[str, Any]]:
    from bench.env import NODE as PLAIN

    _start_node(ours)
    env = ours.env()
    tsh = ours.tsh_ssh()[:-1]  # [tsh, ssh]
    latency = interleaved({
        "plain": ([*tsh, f"root@{PLAIN}", "true"], env),
        "enhanced": ([*tsh, f"root@{NODE}", "true"], env),
    }, runs)
    processes = interleaved({
        "plain": ([*tsh, f"root@{PLAIN}", SHORT_PROCESSES], env),
        "enhanced": ([*tsh, f"root@{NODE}", SHORT_PROCESSES], env),
    }, max(3, runs // 3), warmup=1)
    assert ours.cluster is not None
    data = make_file(ours.cluster.root / "enhanced-payload.bin", size)
    cat = "cat > /dev/null"
    rates: dict[str, list[float]] = {"plain": [], "enhanced": []}
    for _ in range(3):
        rates["plain"].append(size / MiB / _stdin_run([*tsh, f"root@{PLAIN}", cat], env, data))
        rates["enhanced"].append(size / MiB / _stdin_run([*tsh, f"root@{NODE}", cat], env, data))
    data.unlink()
    bursts = []
    for count in BURSTS:
        result = _burst(ours, count)
        bursts.append(result)
        if result["lost"] is not None or result["recorded"] < count:
            break
    clean = [b for b in bursts if b["lost"] is None and b["recorded"] >= b["processes"]]
    ms = {name: median(values) * 1000 for name, values in latency.items()}
    proc_ms = {name: median(values) * 1000 for name, values in processes.items()}
    mibs = {name: max(values) for name, values in rates.items()}
    best = max(clean, key=lambda b: b["events_per_s"], default=None)
    figures = [
        Figure(SECTION, "tsh ssh true, enhanced recording on", ms["enhanced"], "ms", ms["plain"],
               f"the same, recording off ({ms['plain']:.0f} ms)", "lower", 1.1),
        Figure(SECTION, "200 short processes in a session, recording on", proc_ms["enhanced"], "ms",
               proc_ms["plain"], f"the same, recording off ({proc_ms['plain']:.0f} ms)", "lower", 1.5),
        Figure(SECTION, f"{size // MiB} MiB stdin -> cat, recording on", mibs["enhanced"], "MiB/s", mibs["plain"],
               f"the same, recording off ({mibs['plain']:.0f} MiB/s)", "higher", 0.9),
        Figure(SECTION, "commands recorded per second without loss (default buffers)",
               best["events_per_s"] if best else 0.0, "events/s", better="higher",
               note=f"largest clean burst {best['processes'] if best else 0} processes; bursts (processes, "
                    f"recorded, lost): {[(b['processes'], b['recorded'], _lost(b)) for b in bursts]}"),
    ]
    return figures, {"latency_s": latency, "processes_s": processes, "mib_per_s": rates, "bursts": bursts}

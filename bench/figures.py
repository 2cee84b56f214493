"""One measured figure and its OpenSSH reference, and the helpers the benchmarks time with."""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.env import BenchError

#: Bound on any one timed command, in seconds.
COMMAND_TIMEOUT = 600


@dataclass
class Figure:
    """``value`` measured for this project, ``reference`` for OpenSSH in the same run.

    ``ratio`` is value / reference. ``better`` says which way is good ("lower" for times, "higher"
    for rates); ``target`` is the ratio (or, where there is no OpenSSH peer, the absolute value)
    the issue asks for, and ``met`` whether this run reached it.
    """

    section: str
    name: str
    value: float
    unit: str
    reference: float | None = None
    reference_name: str = ""
    better: str = "lower"
    target: float | None = None
    target_is_ratio: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference in (None, 0):
            return None
        return self.value / self.reference

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.target_is_ratio else self.value
        if measured is None:
            return None
        return measured <= self.target if self.better == "lower" else measured >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


def run_checked(argv: list[str], env: dict[str, str], stdin: Any = subprocess.DEVNULL,
                timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(argv, env=env, stdin=stdin, capture_output=True, timeout=timeout)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv[:6])}... exited {result.returncode}: "
                         f"{result.stderr.decode(errors='replace').strip()[-500:]}")
    return result


def timed(argv: list[str], env: dict[str, str], stdin: Any = subprocess.DEVNULL) -> float:
    """Wall time of one successful run of ``argv``, in seconds."""
    start = time.perf_counter()
    run_checked(argv, env, stdin)
    return time.perf_counter() - start


def interleaved(commands: dict[str, tuple[list[str], dict[str, str]]], runs: int, warmup: int = 2
                ) -> dict[str, list[float]]:
    """Time each command ``runs`` times, round-robin (so a change in machine load hits every
    command alike), after ``warmup`` untimed runs of each."""
    for _ in range(warmup):
        for argv, env in commands.values():
            timed(argv, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (argv, env) in commands.items():
            times[name].append(timed(argv, env))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")

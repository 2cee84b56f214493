"""``--profile``: where the time goes, written next to the figures. py-spy samples a running daemon
(the auth service under the sustained heartbeats, the proxy under a ``tsh ssh`` transfer);
pyinstrument runs a client (that ``tsh ssh``). The bench's own tools are the ``bench`` extra."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

#: How to get what the bench uses beyond the runtime.
INSTALL = "pip install -e '.[bench]' (into the project's .venv)"


def py_spy() -> str | None:
    """The py-spy executable (next to this Python first), or None."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def missing(profile: bool) -> tuple[list[str], list[str]]:
    """(needed but missing, optional and missing) for this run."""
    needed, optional = [], []
    if importlib.util.find_spec("matplotlib") is None:
        optional.append("matplotlib (the plot)")
    if profile:
        if py_spy() is None:
            needed.append("py-spy (--profile samples the daemons)")
        if importlib.util.find_spec("pyinstrument") is None:
            needed.append("pyinstrument (--profile runs tsh under it)")
    return needed, optional


class Sampler:
    """``py-spy record`` of one process while the ``with`` block runs; a flame graph (SVG) at the end."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sampler:
        exe = py_spy()
        assert exe is not None, INSTALL
        self.proc = subprocess.Popen([exe, "record", "-p", str(self.pid), "-r", "200", "-o", str(self.out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes the graph on SIGINT
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def pyinstrument_argv(out: Path, script: str, *args: str) -> list[str]:
    """``script args`` under pyinstrument, writing an HTML report to ``out``."""
    return [sys.executable, "-m", "pyinstrument", "-r", "html", "-o", str(out), script, *args]

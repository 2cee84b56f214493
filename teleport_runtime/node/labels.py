"""Node labels: static ones from the config, and command labels whose value is the trimmed
stdout of a program run without a shell, each on its own period."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from teleport_runtime.config import CommandLabel

log = logging.getLogger("teleport.node.labels")
COMMAND_TIMEOUT = 30.0


async def run_label_command(command: tuple[str, ...]) -> str:
    """Run ``command`` (no shell) and return its trimmed stdout; errors become the value
    ``error: ...`` so a broken label is visible in ``tctl nodes ls`` rather than silent."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return f"error: {exc.strerror}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=COMMAND_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "error: timed out"
    if proc.returncode != 0:
        log.warning("label command %s exited %s: %s", command, proc.returncode, err.decode()[:200])
        return f"error: exit status {proc.returncode}"
    return out.decode(errors="replace").strip()


class CommandLabels:
    """Runs every command label on its period and calls ``on_change`` when a value changes."""

    def __init__(self, labels: list[CommandLabel], on_change: Callable[[], None]) -> None:
        self.labels = labels
        self.on_change = on_change
        self.values: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Run each command once before the first heartbeat, then keep them on their periods."""
        results = await asyncio.gather(*(run_label_command(lbl.command) for lbl in self.labels))
        self.values = {lbl.name: value for lbl, value in zip(self.labels, results, strict=True)}
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop(lbl)) for lbl in self.labels]

    async def _loop(self, label: CommandLabel) -> None:
        while True:
            await asyncio.sleep(label.period.total_seconds())
            value = await run_label_command(label.command)
            if self.values.get(label.name) != value:
                self.values[label.name] = value
                self.on_change()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

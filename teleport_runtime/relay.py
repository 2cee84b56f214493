"""Byte relays between two stream pairs (asyncio streams, asyncssh channel streams), shared by
the proxy's tunnel routing and the tunnel node's local auth relay."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncssh

#: Relay chunk size.
CHUNK = 256 * 1024
_ERRORS = (OSError, EOFError, asyncssh.Error, asyncssh.BreakReceived, asyncssh.SignalReceived,
           asyncssh.TerminalSizeChanged)


async def _copy(reader: Any, writer: Any) -> None:
    """Copy until EOF, then pass the EOF on (or close when the writer cannot half-close)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except _ERRORS:
        writer.close()


async def pipe_both(reader_a: Any, writer_a: Any, reader_b: Any, writer_b: Any) -> None:
    """Relay a <-> b until both directions ended (or one side failed); both writers are closed
    at the end."""
    tasks = [asyncio.ensure_future(_copy(reader_a, writer_b)), asyncio.ensure_future(_copy(reader_b, writer_a))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (writer_a, writer_b):
            with contextlib.suppress(Exception):
                writer.close()

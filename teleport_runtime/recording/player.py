"""Playing asciicast v2 recordings back (``tsh play``).

- ``--format=pty`` (default): :func:`play` writes the output events to a binary stream with
  their timing (sped up by ``speed``; with ``skip_idle`` every pause is cut to ``idle_limit``
  seconds) and terminal resizes as the xterm escape ``ESC [ 8 ; ROWS ; COLS t``. Input events
  are not written (what a user typed shows in the output as the terminal echoed it).
- ``--format=json``: :func:`to_json`.

BPF enhanced recording events (``session.command``, ``session.disk``, ``session.network``) are
markers (``m``) whose label is the event's JSON. :func:`to_json` gives them as ``enhanced``
events carrying the parsed event; :func:`play` writes a one-line summary of each to
``events_out`` (``tsh play`` passes stderr) at its time, leaving the terminal output as it was.
- ``--format=asciicast``: the recording's bytes as they are.

The sleep function is injected, so tests and callers control time: :func:`play` takes a
blocking one (``time.sleep``), :func:`play_async` an awaitable one (``asyncio.sleep``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from teleport_runtime.errors import BadParameter
from teleport_runtime.recording.asciicast import Cast, CastEvent, parse_resize, read_cast

#: With ``skip_idle``, no pause in playback is longer than this (seconds, before ``speed``).
DEFAULT_IDLE_LIMIT = 1.0

Source = str | bytes | Path | Cast


def _cast(source: Source) -> Cast:
    return source if isinstance(source, Cast) else read_cast(source)


def events(source: Source) -> list[CastEvent]:
    """The events of a recording (a path, its bytes or text, or a parsed :class:`Cast`)."""
    return list(_cast(source).events)


def parse_speed(text: str | float) -> float:
    """``"2x"``, ``"0.5x"``, ``"2"`` or a number -> a positive playback speed factor."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip().lower().removesuffix("x")
        try:
            value = float(raw)
        except ValueError:
            raise BadParameter(f"bad speed {text!r}: expected a factor such as 2x or 0.5x") from None
    if not value > 0 or value == float("inf"):
        raise BadParameter(f"bad speed {text!r}: it must be a positive factor such as 2x or 0.5x")
    return value


def resize_escape(cols: int, rows: int) -> bytes:
    """The xterm "resize the window" control sequence: ``ESC [ 8 ; rows ; cols t``."""
    return f"\x1b[8;{rows};{cols}t".encode("ascii")


def schedule(
    source: Source,
    speed: float = 1.0,
    skip_idle: bool = False,
    *,
    idle_limit: float = DEFAULT_IDLE_LIMIT,
    initial_resize: bool = True,
) -> Iterator[tuple[float, bytes]]:
    """What playback writes: ``(seconds to wait first, bytes)`` per visible event.

    The first item resizes the terminal to the recording's size (unless ``initial_resize`` is
    false). Waits are the gaps between visible events (input and unknown events are skipped
    and do not split a gap), capped at ``idle_limit`` when ``skip_idle``, divided by ``speed``.
    """
    for delay, chunk, _ in _timeline(source, speed, skip_idle, idle_limit, initial_resize, False):
        yield delay, chunk


def _timeline(
    source: Source, speed: float, skip_idle: bool, idle_limit: float, initial_resize: bool, events: bool
) -> Iterator[tuple[float, bytes, bool]]:
    """:func:`schedule`'s items, each marked True when it is an enhanced event's summary line
    (only with ``events``)."""
    speed = parse_speed(speed)
    cast = _cast(source)
    if initial_resize:
        cols, rows = cast.header.get("width"), cast.header.get("height")
        if isinstance(cols, int) and isinstance(rows, int) and cols > 0 and rows > 0:
            yield 0.0, resize_escape(cols, rows), False
    previous = 0.0
    for event in cast.events:
        is_event = False
        if event.code == "o":
            chunk = event.data.encode("utf-8", errors="replace")
        elif event.code == "r":
            try:
                chunk = resize_escape(*parse_resize(event.data))
            except BadParameter:
                continue
        elif events and (enhanced := enhanced_event(event)) is not None:
            chunk, is_event = (describe_enhanced(enhanced) + "\n").encode(), True
        else:
            continue
        gap = max(0.0, event.time - previous)
        previous = max(previous, event.time)
        if skip_idle:
            gap = min(gap, idle_limit)
        yield gap / speed, chunk, is_event


def play(
    source: Source,
    out: BinaryIO,
    speed: float = 1.0,
    skip_idle: bool = False,
    sleep: Callable[[float], object] = time.sleep,
    *,
    idle_limit: float = DEFAULT_IDLE_LIMIT,
    initial_resize: bool = True,
    events_out: BinaryIO | None = None,
) -> None:
    """Play a recording to ``out`` in real time (scaled by ``speed``), blocking.

    ``sleep`` is called with each wait in seconds (only for waits > 0); pass an awaitable sleep
    to :func:`play_async` instead. Enhanced events go to ``events_out`` when given.
    """
    if inspect.iscoroutinefunction(sleep):
        raise BadParameter("play() needs a blocking sleep; use play_async() with asyncio.sleep")
    for delay, chunk, is_event in _timeline(
        source, speed, skip_idle, idle_limit, initial_resize, events_out is not None
    ):
        if delay > 0:
            sleep(delay)
        stream = events_out if is_event and events_out is not None else out
        stream.write(chunk)
        stream.flush()


async def play_async(
    source: Source,
    out: BinaryIO,
    speed: float = 1.0,
    skip_idle: bool = False,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    *,
    idle_limit: float = DEFAULT_IDLE_LIMIT,
    initial_resize: bool = True,
    events_out: BinaryIO | None = None,
) -> None:
    """:func:`play` for async callers: awaits ``sleep(delay)`` between writes."""
    for delay, chunk, is_event in _timeline(
        source, speed, skip_idle, idle_limit, initial_resize, events_out is not None
    ):
        if delay > 0:
            await sleep(delay)
        stream = events_out if is_event and events_out is not None else out
        stream.write(chunk)
        stream.flush()


_TYPES = {"o": "output", "i": "input", "r": "resize", "m": "marker"}
#: The enhanced recording events a marker may carry.
ENHANCED_EVENTS = ("session.command", "session.disk", "session.network", "session.enhanced_lost")


def enhanced_event(event: CastEvent) -> dict[str, Any] | None:
    """The enhanced recording event a marker carries, or None for any other event."""
    if event.code != "m" or not event.data.startswith("{"):
        return None
    try:
        value = json.loads(event.data)
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("event") in ENHANCED_EVENTS:
        return value
    return None


def describe_enhanced(event: dict[str, Any]) -> str:
    """One line for an enhanced event, as ``tsh play`` prints it."""
    kind = str(event.get("event", ""))
    if kind == "session.command":
        argv = event.get("argv") or [event.get("path", "")]
        return f"[command] pid={event.get('pid')} {' '.join(map(str, argv))} (return {event.get('return_code')})"
    if kind == "session.disk":
        return f"[disk] pid={event.get('pid')} {event.get('program', '')} open {event.get('path')} " \
               f"(flags {event.get('flags')}, return {event.get('return_code')})"
    if kind == "session.network":
        return f"[network] pid={event.get('pid')} {event.get('program', '')} IPv{event.get('version')} " \
               f"{event.get('src_addr')}:{event.get('src_port')} -> {event.get('dst_addr')}:{event.get('dst_port')} " \
               f"(return {event.get('return_code')})"
    counts = ", ".join(f"{k} {event.get(k, 0)}" for k in ("command", "disk", "network", "queue"))
    return f"[lost] events the node could not record: {counts}"


def to_json(source: Source) -> dict[str, Any]:
    """A recording as one JSON-ready object (``tsh play --format=json``).

    ``{"session_id", "session": {...metadata}, "header": {...}, "duration",
    "events": [{"time", "type": "output"|"input"|"resize"|..., "data", ("cols", "rows")}]}``
    """
    cast = _cast(source)
    out_events: list[dict[str, Any]] = []
    for event in cast.events:
        item: dict[str, Any] = {"time": event.time, "type": _TYPES.get(event.code, event.code), "data": event.data}
        enhanced = enhanced_event(event)
        if enhanced is not None:
            item = {"time": event.time, "type": "enhanced", "event": enhanced}
        if event.code == "r":
            try:
                item["cols"], item["rows"] = parse_resize(event.data)
            except BadParameter:
                pass
        out_events.append(item)
    session = cast.session
    return {
        "session_id": session.get("id"),
        "session": session,
        "header": cast.header,
        "duration": cast.events[-1].time if cast.events else 0.0,
        "events": out_events,
    }

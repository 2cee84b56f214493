"""Playback: timing through an injected sleep (no real sleeping, no wall-clock assertions),
speed, idle skipping, resizes as xterm escapes, JSON form."""

from __future__ import annotations

import asyncio
import io

import pytest

from teleport_runtime.errors import BadParameter
from teleport_runtime.recording.player import (
    events,
    parse_speed,
    play,
    play_async,
    resize_escape,
    schedule,
    to_json,
)
from teleport_runtime.recording.spool import SessionRecorder

from .conftest import META, Ticker

CAST = (
    b'{"version": 2, "width": 80, "height": 24, "x-session": {"id": "p1", "user": "alice"}}\n'
    b'[0.5, "o", "$ "]\n'
    b'[1.0, "i", "l"]\n'
    b'[2.0, "o", "ls\\r\\n"]\n'
    b'[2.5, "r", "100x30"]\n'
    b'[12.5, "o", "\\u00e9t\\u00e9\\r\\n"]\n'
)


class Recorder:
    """A fake sleep that records the waits and the output written before each."""

    def __init__(self, out: io.BytesIO) -> None:
        self.out = out
        self.waits: list[float] = []
        self.seen_at_wait: list[bytes] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.seen_at_wait.append(self.out.getvalue())


def test_play_writes_output_and_resizes_with_timing():
    out = io.BytesIO()
    sleep = Recorder(out)
    play(CAST, out, sleep=sleep)
    assert out.getvalue() == (
        resize_escape(80, 24) + b"$ " + b"ls\r\n" + b"\x1b[8;30;100t" + "été\r\n".encode()
    )
    # gaps between visible events; the input event does not split the 0.5 -> 2.0 gap
    assert sleep.waits == pytest.approx([0.5, 1.5, 0.5, 10.0])
    # each wait happens before the event it precedes
    assert sleep.seen_at_wait[1] == resize_escape(80, 24) + b"$ "


def test_speed_divides_every_wait():
    out = io.BytesIO()
    sleep = Recorder(out)
    play(CAST, out, speed=parse_speed("2x"), sleep=sleep)
    assert sleep.waits == pytest.approx([0.25, 0.75, 0.25, 5.0])


def test_skip_idle_caps_pauses():
    out = io.BytesIO()
    sleep = Recorder(out)
    play(CAST, out, skip_idle=True, sleep=sleep)
    assert sleep.waits == pytest.approx([0.5, 1.0, 0.5, 1.0])
    sleep = Recorder(io.BytesIO())
    play(CAST, io.BytesIO(), speed=4, skip_idle=True, sleep=sleep, idle_limit=0.2)
    assert sleep.waits == pytest.approx([0.05, 0.05, 0.05, 0.05])


def test_no_initial_resize_option_and_zero_waits_are_not_slept():
    data = b'{"version": 2, "width": 80, "height": 24}\n[0, "o", "a"]\n[0, "o", "b"]\n'
    out = io.BytesIO()
    sleep = Recorder(out)
    play(data, out, sleep=sleep, initial_resize=False)
    assert out.getvalue() == b"ab" and sleep.waits == []


async def test_play_async_awaits_the_injected_sleep():
    out = io.BytesIO()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    await play_async(CAST, out, 2.0, False, sleep)
    assert waits == pytest.approx([0.25, 0.75, 0.25, 5.0])
    assert out.getvalue().endswith("été\r\n".encode())
    with pytest.raises(BadParameter, match="play_async"):
        play(CAST, io.BytesIO(), sleep=asyncio.sleep)


def test_plays_what_the_spool_wrote(tmp_path):
    ticker = Ticker()
    rec = SessionRecorder(tmp_path, "roundtrip", META, False, clock=ticker)
    ticker.advance(1)
    rec.output("h\u00e9".encode())
    ticker.advance(3)
    rec.resize(90, 20)
    rec.output(b"!")
    rec.close(0)
    out = io.BytesIO()
    sleep = Recorder(out)
    play(rec.cast_path, out, sleep=sleep)
    assert out.getvalue() == resize_escape(80, 24) + "h\u00e9".encode() + resize_escape(90, 20) + b"!"
    assert sleep.waits == pytest.approx([1.0, 3.0])
    assert [e.code for e in events(rec.cast_path)] == ["o", "r", "o"]


def test_to_json():
    doc = to_json(CAST)
    assert doc["session_id"] == "p1" and doc["session"]["user"] == "alice"
    assert doc["duration"] == 12.5
    assert doc["events"][0] == {"time": 0.5, "type": "output", "data": "$ "}
    assert doc["events"][1]["type"] == "input"
    assert doc["events"][3] == {"time": 2.5, "type": "resize", "data": "100x30", "cols": 100, "rows": 30}


@pytest.mark.parametrize(("text", "value"), [("2x", 2.0), ("0.5x", 0.5), ("1", 1.0), ("3X", 3.0), (1.5, 1.5)])
def test_parse_speed(text, value):
    assert parse_speed(text) == value


@pytest.mark.parametrize("text", ["0x", "-1x", "fast", "", "nanx", "infx"])
def test_parse_speed_refuses(text):
    with pytest.raises(BadParameter):
        parse_speed(text)


def test_schedule_skips_bad_resize_and_unknown_events():
    data = b'{"version": 2, "width": 0, "height": 0}\n[1, "r", "junk"]\n[2, "m", "marker"]\n[3, "o", "x"]\n'
    assert list(schedule(data)) == [(3.0, b"x")]

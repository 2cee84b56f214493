"""The auth side: the file store (integrity, idempotency, listing), the upload/download halves of
the API routes over real HTTP with both upload forms, and the sessions in progress."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from teleport_runtime.api.types import RecordingMeta
from teleport_runtime.auth.recordings import (
    ActiveSessions,
    FileRecordingStore,
    download,
    keep_alive_interval,
    parse_since,
    read_upload,
    recordings_dir,
)
from teleport_runtime.backend.sqlite import SQLiteBackend
from teleport_runtime.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    NotFound,
    TeleportError,
    error_from_dict,
)
from teleport_runtime.recording.asciicast import HEADER_MANIFEST
from teleport_runtime.recording.client import fetch_recording, list_recordings, recording_data
from teleport_runtime.recording.uploader import Uploader, make_upload

from .conftest import write_session

CAST = b'{"version": 2, "width": 80, "height": 24, "x-session": {"id": "s1", "user": "bob"}}\n[0.1, "o", "hi"]\n'
SHA = hashlib.sha256(CAST).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> FileRecordingStore:
    return FileRecordingStore(recordings_dir(tmp_path / "data"))


# -- the store ----------------------------------------------------------------------------------


async def test_put_get_stat(store, tmp_path):
    meta = {"size": len(CAST), "user": "bob", "started": "2024-05-01T10:00:00+00:00"}
    record = await store.put("s1", CAST, SHA, meta)
    assert record["duplicate"] is False
    assert (record["session_id"], record["size"], record["sha256"], record["user"]) == ("s1", len(CAST), SHA, "bob")
    assert await store.get("s1") == CAST
    stat = await store.stat("s1")
    assert stat["sha256"] == SHA and "duplicate" not in stat
    assert store.root == tmp_path / "data" / "recordings"
    assert sorted(p.name for p in store.root.iterdir()) == ["s1.cast", "s1.json"]


async def test_same_id_same_hash_is_one_recording(store):
    first = await store.put("s1", CAST, SHA, {"user": "bob"})
    again = await store.put("s1", CAST, SHA, {"user": "someone else"})
    assert again["duplicate"] is True
    assert {k: v for k, v in again.items() if k != "duplicate"} == {k: v for k, v in first.items() if k != "duplicate"}
    assert len(await store.list()) == 1


async def test_same_id_different_hash_is_a_conflict(store):
    await store.put("s1", CAST, SHA, {})
    other = CAST + b'[0.2, "o", "more"]\n'
    with pytest.raises(AlreadyExists, match="differs") as info:
        await store.put("s1", other, hashlib.sha256(other).hexdigest(), {})
    assert info.value.http_status == 409
    assert await store.get("s1") == CAST


async def test_integrity_check_refuses_wrong_hash(store):
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(BadParameter) as info:
        await store.put("s1", CAST, wrong, {})
    assert f"expected {wrong}" in info.value.message and f"received {SHA}" in info.value.message
    with pytest.raises(NotFound):
        await store.get("s1")


async def test_integrity_check_refuses_wrong_size(store):
    with pytest.raises(BadParameter, match=f"expected {len(CAST) + 1} bytes, received {len(CAST)}"):
        await store.put("s1", CAST, SHA, {"size": len(CAST) + 1})
    with pytest.raises(BadParameter, match="64 hex digits"):
        await store.put("s1", CAST, "abc", {})
    assert await store.list() == []


async def test_an_unacknowledged_partial_put_is_replaced(store):
    store.root.mkdir(parents=True)
    (store.root / "s1.cast").write_bytes(b"half written")  # data without metadata: never acked
    record = await store.put("s1", CAST, SHA, {})
    assert record["duplicate"] is False
    assert await store.get("s1") == CAST


async def test_a_put_killed_mid_write_leaves_nothing_readable(store, monkeypatch):
    """The data goes to a temp file, checked, fsynced and renamed: a put that dies before the
    rename (here: the rename fails) stores nothing, and its retry stores it whole."""
    real_replace = os.replace

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        await store.put("s1", CAST, SHA, {})
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (store.root / "s1.cast").exists() and not (store.root / "s1.json").exists()
    with pytest.raises(NotFound):
        await store.get("s1")
    assert await store.list() == []
    (store.root / ".s1.cast.abc123.tmp").write_bytes(CAST[:10])  # what a SIGKILL mid-write leaves
    assert await store.list() == []
    record = await store.put("s1", CAST, SHA, {})
    assert record["duplicate"] is False and record["size"] == len(CAST)
    assert await store.get("s1") == CAST
    assert sorted(p.name for p in store.root.iterdir()) == ["s1.cast", "s1.json"]


async def test_a_truncated_upload_is_refused_and_not_kept(store):
    with pytest.raises(BadParameter, match="size mismatch"):
        await store.put("s1", CAST[:-5], SHA, {"size": len(CAST)})
    assert not store.root.exists() or not list(store.root.iterdir())


async def test_list_since_and_order(store):
    days = ["2024-05-03T00:00:00+00:00", "2024-05-01T00:00:00+00:00", "2024-05-02T00:00:00+00:00"]
    for i, started in enumerate(days):
        data = CAST + f'[{i}, "o", "x"]\n'.encode()
        await store.put(f"s{i}", data, hashlib.sha256(data).hexdigest(), {"started": started})
    assert [r["session_id"] for r in await store.list()] == ["s1", "s2", "s0"]
    since = datetime(2024, 5, 2, tzinfo=UTC)
    assert [r["session_id"] for r in await store.list(since)] == ["s2", "s0"]


async def test_store_refuses_unsafe_ids(store):
    for bad in ("../etc", "a/b", ""):
        with pytest.raises(BadParameter):
            await store.put(bad, CAST, SHA, {})
        with pytest.raises(BadParameter):
            await store.get(bad)


def test_parse_since():
    now = datetime(2024, 5, 2, 12, tzinfo=UTC)
    assert parse_since(None) is None and parse_since("") is None
    assert parse_since("24h", now) == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("2024-05-01T00:00:00Z") == datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(BadParameter):
        parse_since("yesterday-ish")


# -- the routes over HTTP ------------------------------------------------------------------------


def make_app(store: FileRecordingStore) -> web.Application:
    """The handlers as the auth API will wire them (its middleware turns errors into JSON)."""

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            result = await handler(request)
        except TeleportError as exc:
            return web.json_response({"error": exc.to_dict()}, status=exc.http_status)
        return result if isinstance(result, web.StreamResponse) else web.json_response(result)

    async def upload(request: web.Request) -> Any:
        up = await read_upload(request, uploaded_by="host-uuid-from-cert")
        return await store.put(up.session_id, up.data, up.sha256, up.meta)

    async def get(request: web.Request) -> Any:
        return await download(store, request.match_info["session_id"], request.query.get("encoding", ""))

    async def ls(request: web.Request) -> Any:
        return await store.list(parse_since(request.query.get("since")))

    app = web.Application(middlewares=[errors], client_max_size=4 * 1024 * 1024)
    app.router.add_post("/v1/recordings/{session_id}", upload)
    app.router.add_get("/v1/recordings/{session_id}", get)
    app.router.add_get("/v1/recordings", ls)
    return app


class JSONClient:
    """AuthClient's API as it is today (JSON only), over plain HTTP."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.base + path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise error_from_dict(data["error"])
            return data

    # The auth client's methods the uploader and tsh call, in the first version's JSON forms:
    # a JSON upload body and the base64 download, which the auth service still accepts.
    async def recordings(self, since: str | None = None) -> list[RecordingMeta]:
        path = "/v1/recordings" + (f"?since={quote(since)}" if since else "")
        return RecordingMeta.list_from_json(await self.call("GET", path))

    async def recording(self, session_id: str) -> bytes:
        return recording_data(await self.call("GET", f"/v1/recordings/{session_id}?encoding=base64"),
                              session_id, "the test server")

    async def upload_recording(self, session_id: str, body: Any, headers: dict[str, str]) -> Any:
        brief = headers[HEADER_MANIFEST]
        manifest = json.loads(base64.urlsafe_b64decode(brief + "=" * (-len(brief) % 4)))
        data = body._path.read_bytes()  # the spool file the payload streams
        return await self.call("POST", f"/v1/recordings/{session_id}",
                               {"manifest": manifest, "data_b64": base64.b64encode(data).decode("ascii")})


class RawClient(JSONClient):
    """The auth client's raw forms: the asciicast as the body, and as the answer."""

    async def _raw(self, method: str, path: str, data: Any, headers: dict[str, str]) -> Any:
        async with self.session.request(method, self.base + path, data=data, headers=headers) as resp:
            body = await resp.read()
            if resp.content_type == "application/json":
                parsed = json.loads(body)
                if resp.status >= 400:
                    raise error_from_dict(parsed["error"])
                return parsed
            if resp.status >= 400:
                raise TeleportError(f"HTTP {resp.status}")
            return body

    async def recording(self, session_id: str) -> bytes:
        return await self._raw("GET", f"/v1/recordings/{session_id}", None, {})  # type: ignore[no-any-return]

    async def upload_recording(self, session_id: str, body: Any, headers: dict[str, str]) -> Any:
        return await self._raw("POST", f"/v1/recordings/{session_id}", body, headers)


@pytest.fixture
async def server(store):
    srv = TestServer(make_app(store))
    await srv.start_server()
    async with aiohttp.ClientSession() as session:
        yield str(srv.make_url("")).rstrip("/"), session
    await srv.close()


@pytest.mark.parametrize("client_cls", [RawClient, JSONClient], ids=["raw", "json"])
async def test_upload_and_fetch_over_http(server, store, spool, client_cls):
    base, session = server
    client = client_cls(base, session)
    manifest = await write_session(spool, "over-http", "x" * 5000 + "\r\n")
    original = (spool / "over-http.cast").read_bytes()
    uploader = Uploader(spool, make_upload(client), min_backoff=0.001, max_backoff=0.01)
    assert await uploader.run_once() == 1
    record = await store.stat("over-http")
    assert record["sha256"] == manifest["sha256"] and record["size"] == len(original)
    assert (record["user"], record["node"], record["exit_status"]) == ("alice", "node1", 0)
    assert record["uploaded_by"] == "host-uuid-from-cert"
    assert await fetch_recording(client, "over-http") == original
    listed = await list_recordings(client, since="2024-01-01T00:00:00Z")
    assert [r["session_id"] for r in listed] == ["over-http"]
    # the same recording again (a lost answer) is accepted and changes nothing
    await make_upload(client)(manifest, _write(spool / "again.cast", original))
    assert len(await store.list()) == 1


@pytest.mark.parametrize("client_cls", [RawClient, JSONClient], ids=["raw", "json"])
async def test_wrong_hash_and_conflict_over_http(server, store, spool, client_cls):
    base, session = server
    client = client_cls(base, session)
    manifest = await write_session(spool, "bad")
    path = spool / "bad.cast"
    lie = {**manifest, "sha256": hashlib.sha256(b"other").hexdigest()}
    upload = make_upload(client)

    async def send(m: dict) -> None:  # skip the local check to see the auth's own
        from teleport_runtime.recording import uploader as up

        real = up._read_checked
        up._read_checked = lambda p, _m: p.read_bytes()
        try:
            await upload(m, path)
        finally:
            up._read_checked = real

    with pytest.raises(BadParameter, match="sha256 mismatch: expected"):
        await send(lie)
    with pytest.raises(BadParameter, match="size mismatch"):
        await send({**manifest, "size": manifest["size"] - 1})
    await upload(manifest, path)
    other = path.read_bytes() + b'[9.0, "o", "tampered"]\n'
    path.write_bytes(other)
    with pytest.raises(AlreadyExists):
        await send({**manifest, "size": len(other), "sha256": hashlib.sha256(other).hexdigest()})
    with pytest.raises(NotFound):
        await fetch_recording(client, "missing")


async def test_raw_upload_does_not_hit_the_json_body_limit(server, store, spool):
    base, session = server
    big = "y" * (5 * 1024 * 1024) + "\r\n"  # over the API's 4 MiB JSON limit
    await write_session(spool, "big", big)
    assert await Uploader(spool, make_upload(RawClient(base, session))).run_once() == 1
    assert (await store.stat("big"))["size"] > 5 * 1024 * 1024


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- sessions in progress ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def backend(tmp_path):
    clock = Clock()
    b = SQLiteBackend(tmp_path / "backend" / "sqlite.db", clock=clock, sweep_interval=None)
    b.test_clock = clock
    yield b
    await b.close()


async def test_active_sessions_start_renew_end(backend):
    active = ActiveSessions(backend, ttl=timedelta(minutes=2))
    assert keep_alive_interval(active.ttl) == 40.0
    record = await active.start({"session_id": "a1", "user": "alice", "login": "root"}, server_id="node-1")
    assert (record["id"], record["server_id"], record["user"]) == ("a1", "node-1", "alice")
    assert record["expires"] == (backend.test_clock.now + timedelta(minutes=2)).isoformat()
    await active.start({"id": "a0", "started": "2026-01-01T11:00:00+00:00"}, server_id="node-2")
    assert [s["id"] for s in await active.list()] == ["a0", "a1"]

    backend.test_clock.now += timedelta(minutes=1, seconds=30)
    await active.keep_alive("a1", server_id="node-1")
    with pytest.raises(AccessDenied):
        await active.keep_alive("a0", server_id="node-1")
    with pytest.raises(AccessDenied):
        await active.end("a0", server_id="node-1")
    backend.test_clock.now += timedelta(minutes=1)
    # a0 was not renewed and expired; a1 was
    assert [s["id"] for s in await active.list()] == ["a1"]
    with pytest.raises(NotFound):
        await active.keep_alive("a0")
    await active.end("a1", server_id="node-1")
    await active.end("a1", server_id="node-1")  # already gone: fine
    assert await active.list() == []


async def test_concurrent_puts_of_one_session_store_it_once(store):
    results = await asyncio.gather(*(store.put("s1", CAST, SHA, {}) for _ in range(8)))
    assert sorted(r["duplicate"] for r in results) == [False] + [True] * 7
    assert store._locks == {}
    assert len(await store.list()) == 1

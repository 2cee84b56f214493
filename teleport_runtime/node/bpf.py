"""BPF enhanced session recording: the commands, files and connections of each session.

The kernel side is ``bpf_enhanced.bpf.c``, a CO-RE program compiled by clang against the running
kernel's BTF (``bpftool btf dump file /sys/kernel/btf/vmlinux format c`` gives ``vmlinux.h``);
:func:`build_object` does that at install time (``python -m teleport_runtime.node.bpf build``,
which scripts/setup runs) or, when the object for this kernel is missing, when the node starts.
It is loaded with libbpf (``libbpf.so.1``) through ctypes: no compiler at run time when the
object was built at install time, no kernel headers, and one object for every session. The event
loop reads the ring buffers from their memory mapping (:class:`_Ring`) whenever they have data.

Attribution: a session's first process registers itself with the program just before it execs
(:func:`mark_session`, a failing ``lseek`` the program recognises, accepted only from direct
children of the node and once per session); everything it forks inherits the session. That is
the session's process tree from its leader, so it works on cgroup v1 hosts (this one) and on
cgroup v2 hosts alike; nothing else on the host is recorded.

Events (audit, with the session's ``session_id``, ``user``, ``login``):

- ``session.command``: ``path``, ``argv``, ``pid``, ``ppid``, ``return_code`` (of execve),
  ``program``, ``uid``;
- ``session.disk``: ``path`` (as the process gave it), ``flags`` (open flags), ``return_code``
  (the descriptor or -errno), ``pid``, ``program``;
- ``session.network``: ``src_addr``, ``src_port``, ``dst_addr``, ``dst_port``, ``version``
  (4 or 6), ``return_code``, ``pid``, ``program`` (TCP connects);
- ``session.enhanced_lost``: ``command``, ``disk``, ``network``, ``queue`` counts of the events
  the session lost (ring buffer full, the node's audit queue full), when any were.

The ring buffers are sized from ``ssh_service.enhanced_recording`` (in pages of 4 KiB, as the
reference). A full buffer never blocks a process: the event is counted as lost.

Where the program cannot load (no BTF, no CAP_BPF/CAP_PERFMON, no tracefs, no libbpf, no
compiler and no prebuilt object), :meth:`EnhancedRecorder.start` logs the reason once and the
node runs without it: sessions work and are recorded as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import hashlib
import ipaddress
import logging
import mmap
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teleport_runtime.config import EnhancedRecordingConfig, parse_enhanced_recording

__all__ = ["EnhancedRecorder", "EnhancedRecordingConfig", "EnhancedRecordingUnavailable", "build_object",
           "mark_session", "parse_enhanced_recording"]

SOURCE = Path(__file__).with_name("bpf_enhanced.bpf.c")
BTF_PATH = Path("/sys/kernel/btf/vmlinux")
TRACEFS = Path("/sys/kernel/tracing")
PAGE_SIZE = 4096
#: The marker the session's first process sends (``lseek(-1, cookie, MARK_WHENCE)``).
MARK_WHENCE = 0x54504C52
#: Event classes and their bit in the program.
CLASSES = {"command": 1, "disk": 2, "network": 4}
#: Bound on compiling the program.
BUILD_TIMEOUT = 300.0

_LOG = logging.getLogger(__name__)

#: Queues an audit event; False when the queue refused it (counted as lost).
Emit = Callable[[dict[str, Any]], "bool | None"]


class EnhancedRecordingUnavailable(Exception):
    """Why enhanced recording cannot run on this host (the message says, and what to do)."""


# ---------------------------------------------------------------------------- building


def object_name() -> str:
    """The object's file name for this source and this kernel's BTF (a rebuild on a change)."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    try:
        digest.update(BTF_PATH.read_bytes())
    except OSError:
        digest.update(os.uname().release.encode())
    return f"enhanced-{digest.hexdigest()[:16]}.bpf.o"


def build_object(directory: Path) -> Path:
    """Compile the program for the running kernel into ``directory`` (kept when it exists)."""
    if not BTF_PATH.exists():
        raise EnhancedRecordingUnavailable(
            f"the kernel exposes no BTF ({BTF_PATH} is missing): a kernel built with "
            "CONFIG_DEBUG_INFO_BTF=y is needed"
        )
    target = directory / object_name()
    if target.exists():
        return target
    clang, bpftool = shutil.which("clang"), shutil.which("bpftool") or shutil.which("/usr/sbin/bpftool")
    if clang is None or bpftool is None:
        raise EnhancedRecordingUnavailable(
            f"the BPF program for this kernel is not built and {'clang' if clang is None else 'bpftool'} "
            "is not installed: install clang, llvm, libbpf-dev and bpftool (scripts/setup does), or "
            f"build it elsewhere with `python -m teleport_runtime.node.bpf build {directory}`"
        )
    directory.mkdir(parents=True, exist_ok=True)
    work = directory / f".build-{os.getpid()}"
    work.mkdir(exist_ok=True)
    try:
        header = subprocess.run(
            [bpftool, "btf", "dump", "file", str(BTF_PATH), "format", "c"],
            capture_output=True, timeout=BUILD_TIMEOUT, check=False,
        )
        if header.returncode != 0:
            raise EnhancedRecordingUnavailable(f"bpftool cannot read the kernel's BTF: {header.stderr.decode()[-500:]}")
        (work / "vmlinux.h").write_bytes(header.stdout)
        arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
        result = subprocess.run(
            [clang, "-O2", "-g", "-target", "bpf", "-mcpu=v3", f"-D__TARGET_ARCH_{arch}", f"-I{work}",
             "-c", str(SOURCE), "-o", str(work / "out.o")],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
        )
        if result.returncode != 0:
            raise EnhancedRecordingUnavailable(f"clang cannot build the BPF program: {result.stderr[-1000:]}")
        os.replace(work / "out.o", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------- libbpf


class _Command(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("ppid", ctypes.c_uint32),
        ("retval", ctypes.c_int32), ("argc", ctypes.c_uint32), ("uid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32), ("comm", ctypes.c_char * 16), ("path", ctypes.c_char * 256),
        ("argv", (ctypes.c_char * 64) * 16),
    ]


class _Disk(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("retval", ctypes.c_int32),
        ("flags", ctypes.c_int32), ("pad", ctypes.c_uint32), ("comm", ctypes.c_char * 16),
        ("path", ctypes.c_char * 256),
    ]


class _Network(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("retval", ctypes.c_int32),
        ("version", ctypes.c_uint16), ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16),
        ("pad", ctypes.c_uint16), ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16),
        ("comm", ctypes.c_char * 16), ("sk", ctypes.c_uint64),
    ]


class _Session(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("claimed", ctypes.c_uint32)]


class _Lost(ctypes.Structure):
    _fields_ = [("counts", ctypes.c_uint64 * 3)]



def _libbpf() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise EnhancedRecordingUnavailable(f"libbpf is not installed ({exc}): install libbpf1") from None
    vp, ip, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for fn, res, args in (
        ("libbpf_set_print", vp, [vp]),
        ("bpf_object__open_file", vp, [cp, vp]),
        ("bpf_object__load", ip, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_map_by_name", vp, [vp, cp]),
        ("bpf_object__next_program", vp, [vp, vp]),
        ("bpf_program__name", cp, [vp]),
        ("bpf_program__attach", vp, [vp]),
        ("bpf_link__destroy", ip, [vp]),
        ("bpf_map__fd", ip, [vp]),
        ("bpf_map__set_max_entries", ip, [vp, ctypes.c_uint32]),
        ("bpf_map_update_elem", ip, [ip, vp, vp, ctypes.c_uint64]),
        ("bpf_map_lookup_elem", ip, [ip, vp, vp]),
        ("bpf_map_delete_elem", ip, [ip, vp]),
    ):
        func = getattr(lib, fn)
        func.restype = res
        func.argtypes = args
    return lib


class _Ring:
    """A BPF ring buffer read straight from its mapping (consumer page read-write, producer page
    and the data pages, mapped twice by the kernel, read-only): a whole batch of records per
    wake-up under one hold of the interpreter lock, where a libbpf callback would take it once
    per record and, with the node's event loop busy, wait for it every time."""

    BUSY = 1 << 31
    DISCARD = 1 << 30
    HEADER = 8

    def __init__(self, fd: int, size: int, kind: str, struct: type[ctypes.Structure]) -> None:
        self.fd, self.size, self.kind, self.struct = fd, size, kind, struct
        self.full = ctypes.sizeof(struct)
        # a command record stops after its last argument
        self.fixed = _Command.argv.offset if struct is _Command else self.full
        self.consumer = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.producer = mmap.mmap(fd, PAGE_SIZE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE_SIZE)

    def drain(self) -> list[Any]:
        """Every complete record in the buffer, consumed."""
        out: list[Any] = []
        (cons,) = struct.unpack_from("<Q", self.consumer, 0)
        mask = self.size - 1
        while True:  # until the producer has written nothing more
            (prod,) = struct.unpack_from("<Q", self.producer, 0)
            if cons >= prod:
                return out
            while cons < prod:
                offset = PAGE_SIZE + (cons & mask)
                (length,) = struct.unpack_from("<I", self.producer, offset)
                if length & self.BUSY:
                    return out  # still being written: the next wake-up takes it
                size = length & ~(self.BUSY | self.DISCARD)
                if not length & self.DISCARD and size >= self.fixed:
                    start = offset + self.HEADER
                    data = self.producer[start:start + min(size, self.full)]
                    out.append(self.struct.from_buffer_copy(data.ljust(self.full, b"\0")))
                cons += (size + self.HEADER + 7) & ~7
                struct.pack_into("<Q", self.consumer, 0, cons)

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()


def _errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"


def _ensure_tracefs() -> None:
    """The syscall tracepoints attach through tracefs: mount it when the host has not."""
    if (TRACEFS / "events").is_dir() or Path("/sys/kernel/debug/tracing/events").is_dir():
        return
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
                            capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0 or not (TRACEFS / "events").is_dir():
        raise EnhancedRecordingUnavailable(
            f"tracefs is not mounted and cannot be ({result.stderr.strip() or 'no events directory'}): "
            f"mount it with `mount -t tracefs nodev {TRACEFS}` as root"
        )


def mark_session(cookie: int) -> None:  # pragma: no cover - runs in the forked child
    """Register the calling process as session ``cookie``'s leader (in the child, before exec)."""
    try:
        os.lseek(-1, cookie, MARK_WHENCE)
    except OSError:
        pass  # always EBADF: the call exists only for the program to see


@dataclass
class _Live:
    session_id: str
    emit: Emit
    queue_lost: int = 0
    seen: dict[str, int] = field(default_factory=lambda: {"command": 0, "disk": 0, "network": 0})


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _addr(raw: Any, version: int) -> str:
    data = bytes(raw)
    return str(ipaddress.IPv4Address(data[:4]) if version == 4 else ipaddress.IPv6Address(data))


class EnhancedRecorder:
    """Loads the program, registers sessions, turns the ring buffers into audit events."""

    def __init__(self, config: EnhancedRecordingConfig, object_dir: Path) -> None:
        self.config = config
        self.object_dir = object_dir
        self.active = False
        self.reason = ""
        self._lib: ctypes.CDLL | None = None
        self._obj: int | None = None
        self._links: list[int] = []
        self._rings: list[_Ring] = []
        self._fds: dict[str, int] = {}
        self._sessions: dict[int, _Live] = {}
        self._next_cookie = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._closing: set[asyncio.Task[dict[str, int]]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> bool:
        """Load and attach the program; False (the reason logged once) when it cannot run."""
        if not self.config.enabled:
            return False
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._load)
        except EnhancedRecordingUnavailable as exc:
            self.reason = str(exc)
            self._unload()
            _LOG.warning("enhanced session recording is off: %s; sessions run and are recorded without it",
                         self.reason)
            return False
        self.active = True
        # Read in the event loop, when a buffer has data: no thread waiting for the interpreter
        # lock while the loop is busy (the buffers filled up in bursts that way).
        for ring in self._rings:
            self._loop.add_reader(ring.fd, self._drain, ring)
        self._reading = True
        _LOG.info("enhanced session recording is on (BPF: commands, files, connections)")
        return True

    def _load(self) -> None:
        if os.geteuid() != 0:
            raise EnhancedRecordingUnavailable("the node does not run as root (CAP_BPF and CAP_PERFMON are needed)")
        path = build_object(self.object_dir)
        lib = self._lib = _libbpf()
        if not os.environ.get("TELEPORT_DEBUG_BPF"):
            lib.libbpf_set_print(None)  # failures are reported here, with errno
        _ensure_tracefs()
        obj = lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            raise EnhancedRecordingUnavailable(f"cannot open {path}: {_errno_text(ctypes.get_errno())}")
        self._obj = obj
        sizes = {
            "command_events": self.config.command_buffer_size,
            "disk_events": self.config.disk_buffer_size,
            "network_events": self.config.network_buffer_size,
        }
        for name, pages in sizes.items():
            if lib.bpf_map__set_max_entries(self._map(name), pages * PAGE_SIZE) != 0:
                raise EnhancedRecordingUnavailable(f"cannot size the {name} ring buffer to {pages} pages")
        if lib.bpf_object__load(obj) != 0:
            code = ctypes.get_errno()
            hint = (" (the node needs CAP_BPF and CAP_PERFMON: run it as root)"
                    if code in (errno.EPERM, errno.EACCES) else "")
            raise EnhancedRecordingUnavailable(f"the kernel refused the BPF program: {_errno_text(code)}{hint}")
        for name in ("settings", "sessions", "lost", *sizes):
            self._fds[name] = lib.bpf_map__fd(self._map(name))
        key, value = ctypes.c_uint32(0), ctypes.c_uint32(os.getpid())
        self._update("settings", key, value)
        prog = lib.bpf_object__next_program(obj, None)
        while prog:
            link = lib.bpf_program__attach(prog)
            if not link:
                name = (lib.bpf_program__name(prog) or b"?").decode()
                raise EnhancedRecordingUnavailable(
                    f"cannot attach {name}: {_errno_text(ctypes.get_errno())}")
            self._links.append(link)
            prog = lib.bpf_object__next_program(obj, prog)
        kinds = (("command_events", _Command, "command"), ("disk_events", _Disk, "disk"),
                 ("network_events", _Network, "network"))
        for name, record, kind in kinds:
            try:
                self._rings.append(_Ring(self._fds[name], sizes[name] * PAGE_SIZE, kind, record))
            except OSError as exc:
                raise EnhancedRecordingUnavailable(f"cannot map the {name} ring buffer: {exc}") from None

    def _map(self, name: str) -> int:
        assert self._lib is not None
        found = self._lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not found:
            raise EnhancedRecordingUnavailable(f"the BPF object has no map {name!r} (rebuild it)")
        return int(found)

    def _update(self, name: str, key: Any, value: Any) -> None:
        assert self._lib is not None
        if self._lib.bpf_map_update_elem(self._fds[name], ctypes.byref(key), ctypes.byref(value), 0) != 0:
            raise OSError(ctypes.get_errno(), f"cannot update the BPF map {name}")

    async def stop(self) -> None:
        """Detach and unload (sessions still open lose their remaining events)."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=30)
        if self._reading and self._loop is not None:
            for ring in self._rings:
                self._loop.remove_reader(ring.fd)
            self._reading = False
        self._unload()
        self.active = False

    def _unload(self) -> None:
        lib = self._lib
        if lib is None:
            return
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        for link in self._links:
            lib.bpf_link__destroy(link)
        self._links.clear()
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None

    # ------------------------------------------------------------------ events

    def _drain(self, ring: _Ring) -> None:
        """Deliver what ``ring`` holds (the loop calls it when the buffer has data)."""
        try:
            records = ring.drain()
        except Exception:  # a broken mapping must not take the loop with it
            _LOG.exception("reading the %s ring buffer failed; enhanced recording stops", ring.kind)
            if self._loop is not None:
                self._loop.remove_reader(ring.fd)
            self.active = False
            return
        for raw in records:
            live = self._sessions.get(int(raw.cookie))
            if live is None:
                continue  # a process that outlived its session's end
            try:
                event = self._event(ring.kind, raw)
            except Exception:  # a bad record must not stop the others
                _LOG.exception("cannot decode a %s event", ring.kind)
                continue
            live.seen[ring.kind] += 1
            if live.emit({**event, "session_id": live.session_id}) is False:
                live.queue_lost += 1

    @staticmethod
    def _event(kind: str, raw: Any) -> dict[str, Any]:
        if kind == "command":
            path = _text(raw.path)
            return {
                "event": "session.command", "path": path,
                "argv": [_text(bytes(raw.argv[i])) for i in range(min(raw.argc, 16))],
                "pid": raw.pid, "ppid": raw.ppid, "return_code": raw.retval,
                "program": _text(raw.comm), "uid": raw.uid,
            }
        if kind == "disk":
            return {
                "event": "session.disk", "path": _text(raw.path), "flags": raw.flags,
                "return_code": raw.retval, "pid": raw.pid, "program": _text(raw.comm),
            }
        return {
            "event": "session.network", "version": raw.version,
            "src_addr": _addr(raw.saddr, raw.version), "src_port": raw.sport,
            "dst_addr": _addr(raw.daddr, raw.version), "dst_port": raw.dport,
            "return_code": raw.retval, "pid": raw.pid, "program": _text(raw.comm),
        }

    # ------------------------------------------------------------------ sessions

    def open_session(self, session_id: str, classes: frozenset[str], emit: Emit) -> int | None:
        """Register a session about to start; its cookie for :func:`mark_session`, or None
        when nothing is recorded for it."""
        flags = sum(CLASSES[c] for c in classes if c in CLASSES)
        if not self.active or not flags:
            return None
        cookie = self._next_cookie
        self._next_cookie += 1
        try:
            self._update("lost", ctypes.c_uint64(cookie), _Lost())
            self._update("sessions", ctypes.c_uint64(cookie), _Session(flags, 0))
        except OSError as exc:
            _LOG.error("session %s: cannot register it for enhanced recording: %s", session_id, exc)
            emit({"event": "session.enhanced_lost", "session_id": session_id, "command": 0, "disk": 0,
                  "network": 0, "queue": 0, "reason": f"not recorded: {exc.strerror}"})
            return None
        self._sessions[cookie] = _Live(session_id, emit)
        return cookie

    def close_session_soon(self, cookie: int) -> None:
        """:meth:`close_session` in the background (:meth:`stop` waits for it)."""
        task = asyncio.get_running_loop().create_task(self.close_session(cookie))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_session(self, cookie: int) -> dict[str, int]:
        """The session ended: deliver what is buffered, report lost events; the counts."""
        live = self._sessions.get(cookie)
        if live is None:
            return {}
        if self._reading:
            for ring in self._rings:  # what the session's processes wrote up to now
                self._drain(ring)
        assert self._lib is not None
        key, lost = ctypes.c_uint64(cookie), _Lost()
        if self.active:
            self._lib.bpf_map_lookup_elem(self._fds["lost"], ctypes.byref(key), ctypes.byref(lost))
            self._lib.bpf_map_delete_elem(self._fds["lost"], ctypes.byref(key))
            self._lib.bpf_map_delete_elem(self._fds["sessions"], ctypes.byref(key))
        self._sessions.pop(cookie, None)
        counts = {"command": int(lost.counts[0]), "disk": int(lost.counts[1]),
                  "network": int(lost.counts[2]), "queue": live.queue_lost}
        if any(counts.values()):
            _LOG.warning("session %s: enhanced recording lost events: %s", live.session_id, counts)
            live.emit({"event": "session.enhanced_lost", "session_id": live.session_id, **counts})
        return {**counts, **{f"seen_{k}": v for k, v in live.seen.items()}}


def main(argv: list[str]) -> int:
    """``python -m teleport_runtime.node.bpf build DIR``: compile the program for this kernel."""
    if len(argv) != 2 or argv[0] != "build":
        print("usage: python -m teleport_runtime.node.bpf build DIRECTORY", file=sys.stderr)
        return 2
    try:
        path = build_object(Path(argv[1]))
    except EnhancedRecordingUnavailable as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

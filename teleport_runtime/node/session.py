"""Session channels of the node: exec, interactive shells on a PTY, and the sftp subsystem.

Every session runs one process as the OS login: ``shell -c COMMAND`` for exec, the login shell
(``argv[0]`` = ``-bash``) for a shell, ``sftp-server`` for the sftp subsystem. The process gets
its own session and process group (``setsid``), the account's uid, gid and supplementary groups,
HOME/USER/LOGNAME/SHELL/PATH, the client's accepted ``env`` requests and cwd = home. With a PTY
(``pty-req``) the slave becomes the process's controlling terminal, ``TERM`` is set and window
changes are applied with ``TIOCSWINSZ``; without one, stdin/stdout/stderr are pipes and stderr
goes to the channel's extended data.

Bytes move through asyncio pipe transports in large chunks (never byte by byte) with flow
control both ways: a full SSH window pauses reading from the process, a full process stdin pauses
reading from the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import signal
import struct
import subprocess
import termios
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncssh

from teleport_runtime.errors import TeleportError
from teleport_runtime.node.bpf import EnhancedRecorder, mark_session
from teleport_runtime.node.osuser import OSUser, accepted_client_env, session_env
from teleport_runtime.recording.asciicast import check_session_id

#: The OpenSSH sftp server binary spawned for the ``sftp`` subsystem.
DEFAULT_SFTP_SERVER = "/usr/lib/openssh/sftp-server"
#: How long to keep reading a PTY after its process exited (background jobs keep it open).
PTY_DRAIN_TIMEOUT = 2.0
#: Joining a session to watch it: the subsystem a watcher requests, with the session's ID in this
#: environment variable (a subsystem name cannot shadow a command of the login's shell, as an
#: exec request ``join ID`` would; the variable is the reference's ``TELEPORT_SESSION``).
JOIN_SUBSYSTEM = "teleport-join"
JOIN_ENV = "TELEPORT_SESSION"
#: The recent output a watcher gets on joining (the screen so far), and watchers per session.
REPLAY_BYTES = 64 * 1024
MAX_WATCHERS = 10

_LOG = logging.getLogger("teleport.node.session")


class SessionRecorder(Protocol):
    """Receives what happens in an interactive (PTY) session, for session recording.

    ``recorder_factory(info)`` makes one per session; ``info`` is a dict with ``session_id``,
    ``user``, ``login``, ``remote_addr``, ``cluster_name``, ``host_uuid``, ``nodename``,
    ``kind`` (``shell``/``exec``/``subsystem``), ``command`` (or None), ``term``, ``cols``,
    ``rows`` and ``started`` (ISO 8601 UTC). The methods are called from the event loop and
    must not block; an exception in one disables recording for that session (logged).
    """

    def output(self, data: bytes) -> None:
        """Bytes the session printed (PTY output)."""

    def input(self, data: bytes) -> None:
        """Bytes the user typed."""

    def resize(self, cols: int, rows: int) -> None:
        """The terminal was resized."""

    def close(self, exit_status: int | None) -> None:
        """The session ended (``exit_status`` None when it ended by a signal or a disconnect)."""


#: A recorder may also have ``required = True`` (the session must not run unrecorded: a failing
#: recorder ends it) and ``bind_session(abort)``, through which it ends the session itself
#: (``abort(reason)``), such as when a ``node-sync`` stream to the auth service fails.


RecorderFactory = Callable[[dict[str, Any]], SessionRecorder]


@dataclass
class SessionContext:
    """What a session needs from its connection (built by the SSH server after auth)."""

    user: str
    login: str
    os_user: OSUser
    remote_addr: str
    env: dict[str, str]
    emit: Callable[[dict[str, Any]], bool | None]
    log: logging.LoggerAdapter[logging.Logger]
    agent_path: Callable[[], str | None]
    node_info: dict[str, str] = field(default_factory=dict)
    recorder_factory: RecorderFactory | None = None
    sftp_server: str = DEFAULT_SFTP_SERVER
    #: BPF enhanced recording and the event classes the user's roles ask for.
    enhanced: EnhancedRecorder | None = None
    enhanced_events: frozenset[str] = frozenset()
    #: The node's interactive sessions in progress by ID (shared by all connections), for joins.
    active: dict[str, NodeSession] = field(default_factory=dict)
    #: The user's roles may watch other users' sessions (``read`` on ``session``: auditor).
    may_watch_others: bool = False


def _set_winsize(fd: int, cols: int, rows: int, xpixel: int = 0, ypixel: int = 0) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpixel, ypixel))


def _acquire_controlling_tty() -> None:  # pragma: no cover - runs in the child
    # Runs in the forked child after setsid(): make the PTY slave (fd 0) our controlling tty.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _preexec(tty: bool, cookie: int | None) -> Callable[[], None] | None:
    """What the child runs before exec: register with enhanced recording, take the tty."""
    if not tty and cookie is None:
        return None

    def run() -> None:  # pragma: no cover - runs in the child
        if cookie is not None:
            mark_session(cookie)
        if tty:
            _acquire_controlling_tty()

    return run


class _OutputProtocol(asyncio.Protocol):
    """Reads one of the process's outputs (stdout, stderr or the PTY master)."""

    def __init__(self, session: NodeSession, datatype: int | None) -> None:
        self._session = session
        self._datatype = datatype

    def data_received(self, data: bytes) -> None:
        self._session._on_output(data, self._datatype)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._session._on_output_closed()


class _InputProtocol(asyncio.BaseProtocol):
    """Writes to the process's stdin (or the PTY master); its back-pressure pauses the channel."""

    def __init__(self, session: NodeSession) -> None:
        self._session = session

    def pause_writing(self) -> None:
        self._session._stdin_full = True
        self._session._update_channel_reading()

    def resume_writing(self) -> None:
        self._session._stdin_full = False
        # Not synchronously: resuming the channel delivers data (and maybe EOF) at once, and
        # asyncio's pipe transport calls this from inside its write loop, where a write_eof()
        # would close the pipe with that new data still buffered.
        asyncio.get_running_loop().call_soon(self._session._update_channel_reading)

    def connection_lost(self, exc: Exception | None) -> None:
        self._session._on_input_closed()


class NodeSession(asyncssh.SSHServerSession[bytes]):
    """One SSH session channel: runs its process and moves the bytes."""

    def __init__(self, ctx: SessionContext) -> None:
        self._ctx = ctx
        self.session_id = str(uuid.uuid4())
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._kind = "shell"
        self._command: str | None = None
        self._subsystem: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._master: int | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._outputs: list[asyncio.ReadTransport] = []
        self._open_outputs = 0
        self._outputs_done = asyncio.Event()
        self._pending_input: list[bytes] = []
        self._pending_eof = False
        self._channel_paused = False
        self._stdin_full = False
        self._output_paused = False
        self._recorder: SessionRecorder | None = None
        self._recording_failed = False
        self._recording_done = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._enhanced_cookie: int | None = None
        self._replay = bytearray()
        self._watchers: set[NodeSession] = set()
        self._watching: NodeSession | None = None

    # ------------------------------------------------------------------ asyncssh callbacks

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        # asyncssh has already checked permit-pty in the certificate.
        return True

    def shell_requested(self) -> bool:
        self._kind = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self._kind = "exec"
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem == JOIN_SUBSYSTEM:
            self._kind = "join"
            return True
        if subsystem != "sftp":
            self._ctx.log.info("subsystem %r refused: only sftp is supported", subsystem)
            self._emit("subsystem.rejected", name=subsystem, reason="unsupported subsystem")
            return False
        self._kind = "subsystem"
        self._subsystem = subsystem
        return True

    def session_started(self) -> None:
        if self._kind == "join":
            self._join()
            return
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._run_done)

    def _run_done(self, task: asyncio.Task[None]) -> None:
        self._unregister()  # also when the session failed: no join finds it, no watch outlives it
        if not task.cancelled() and task.exception() is not None:
            self._ctx.log.error("session %s failed", self.session_id, exc_info=task.exception())
            if self._chan is not None and not self._closed:
                self._chan.close()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self._kind == "join":
            return  # observer mode: a watcher's keystrokes never reach the session
        self._record("input", data)
        if self._stdin is None:
            if not self._closed and self._proc is None:
                self._pending_input.append(data)
                self._update_channel_reading()
            return
        self._stdin.write(data)

    def eof_received(self) -> bool:
        if self._master is not None:
            return True  # a terminal has no half-close; the shell ends the session
        if self._stdin is None:
            self._pending_eof = True
        elif self._stdin.can_write_eof():
            self._stdin.write_eof()
        return True  # keep the channel half open: output and the exit status follow

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._kind == "join":
            return
        if self._master is not None:
            with contextlib.suppress(OSError):
                _set_winsize(self._master, width, height, pixwidth, pixheight)
        self._record("resize", width, height)

    def signal_received(self, signal_name: str) -> None:
        if self._kind == "join":
            return
        signum = getattr(signal.Signals, "SIG" + signal_name, None)
        if signum is not None:
            self._ctx.log.info("signal %s from client", signal_name)
            self._kill(signum)

    def break_received(self, msec: int) -> bool:
        return False

    def pause_writing(self) -> None:
        self._output_paused = True
        for transport in self._outputs:
            transport.pause_reading()

    def resume_writing(self) -> None:
        self._output_paused = False
        for transport in self._outputs:
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._kind == "join":
            self._leave()
            return
        if self._proc is not None and self._proc.returncode is None:
            self._kill(signal.SIGHUP)
        self._close_io()

    # ------------------------------------------------------------------ running the process

    def _argv(self) -> tuple[str, list[str]]:
        shell = self._ctx.os_user.shell
        name = os.path.basename(shell)
        if self._kind == "subsystem":
            return self._ctx.sftp_server, [self._ctx.sftp_server]
        if self._kind == "exec":
            return shell, [name, "-c", self._command or ""]
        return shell, ["-" + name]

    def _environment(self, tty_name: str | None) -> dict[str, str]:
        assert self._chan is not None
        extra = accepted_client_env(self._chan.get_environment())
        extra.update(self._ctx.env)
        extra["SSH_SESSION_ID"] = self.session_id
        term = self._chan.get_terminal_type()
        if term:
            extra["TERM"] = term
        if tty_name:
            extra["SSH_TTY"] = tty_name
        agent_path = self._ctx.agent_path()
        if agent_path:
            extra["SSH_AUTH_SOCK"] = agent_path
        return session_env(self._ctx.os_user, extra)

    async def _spawn(self) -> None:
        """Start the process with its stdio connected to transports."""
        assert self._chan is not None
        loop = asyncio.get_running_loop()
        user = self._ctx.os_user
        as_root = os.geteuid() == 0
        child_fds: list[int] = []
        parent_fds: list[int] = []  # closed here unless a transport took ownership
        try:
            if self._chan.get_terminal_type() is not None:
                master, slave = os.openpty()
                child_fds.append(slave)
                parent_fds.append(master)
                parent_fds.append(os.dup(master))
                cols, rows, xpixel, ypixel = self._chan.get_terminal_size()
                _set_winsize(master, cols or 80, rows or 24, xpixel, ypixel)
                tty_name: str | None = os.ttyname(slave)
                if as_root:
                    os.fchown(slave, user.uid, -1)
                    os.fchmod(slave, 0o620)
                stdio = (slave, slave, slave)
                outputs: list[tuple[int, int | None]] = [(master, None)]
                write_fd = parent_fds[1]
            else:
                tty_name = None
                stdin_r, stdin_w = os.pipe()
                stdout_r, stdout_w = os.pipe()
                stderr_r, stderr_w = os.pipe()
                child_fds += [stdin_r, stdout_w, stderr_w]
                parent_fds += [stdin_w, stdout_r, stderr_r]
                stdio = (stdin_r, stdout_w, stderr_w)
                outputs = [(stdout_r, None), (stderr_r, asyncssh.EXTENDED_DATA_STDERR)]
                write_fd = stdin_w
            for fd, datatype in outputs:
                transport, _ = await loop.connect_read_pipe(
                    functools.partial(_OutputProtocol, self, datatype),
                    os.fdopen(fd, "rb", buffering=0),
                )
                parent_fds.remove(fd)
                self._open_outputs += 1
                self._outputs.append(transport)
                if self._output_paused:
                    transport.pause_reading()
            stdin, _ = await loop.connect_write_pipe(
                lambda: _InputProtocol(self), os.fdopen(write_fd, "wb", buffering=0)
            )
            parent_fds.remove(write_fd)
            self._stdin = stdin
            if tty_name is not None:
                self._master = outputs[0][0]
            for data in self._pending_input:
                stdin.write(data)
            self._pending_input.clear()
            if self._pending_eof and tty_name is None and stdin.can_write_eof():
                stdin.write_eof()
            executable, argv = self._argv()
            enhanced = self._ctx.enhanced
            if enhanced is not None:
                self._enhanced_cookie = enhanced.open_session(
                    self.session_id, self._ctx.enhanced_events, self._enhanced_event
                )
            switch: dict[str, Any] = {}
            if as_root:
                switch = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                executable=executable,
                stdin=stdio[0],
                stdout=stdio[1],
                stderr=stdio[2],
                env=self._environment(tty_name),
                cwd=user.cwd,
                start_new_session=True,
                preexec_fn=_preexec(tty_name is not None, self._enhanced_cookie),
                **switch,
            )
        except BaseException:
            self._close_enhanced()
            raise
        finally:
            for fd in child_fds + parent_fds:
                os.close(fd)
        if self._closed or self._recording_failed:
            self._kill(signal.SIGHUP)
        self._update_channel_reading()

    async def _run(self) -> None:
        chan = self._chan
        assert chan is not None
        log = self._ctx.log
        details: dict[str, Any] = {"kind": self._kind}
        if self._command is not None:
            details["command"] = self._command
        if self._subsystem is not None:
            details["subsystem"] = self._subsystem
        term = chan.get_terminal_type()
        if term is not None:
            cols, rows, _, _ = chan.get_terminal_size()
            details["tty"] = {"term": term, "cols": cols, "rows": rows}
            self._start_recorder(details)  # interactive: record it
        try:
            await self._spawn()
        except (OSError, subprocess.SubprocessError) as exc:
            reason = f"cannot start {self._kind} as {self._ctx.login!r}: {exc}"
            log.warning("session %s: %s", self.session_id, reason)
            self._emit("session.rejected", reason=reason, **details)
            self._close_io()
            self._record("close", None)
            self._recorder = None
            if not self._closed:
                with contextlib.suppress(OSError, asyncssh.Error):
                    chan.write_stderr(f"teleport: {reason}\r\n".encode())
                    chan.exit(255)
            return
        proc = self._proc
        assert proc is not None
        log.info("session %s: %s started (pid %d)", self.session_id, self._kind, proc.pid)
        if self._master is not None:
            self._ctx.active[self.session_id] = self
        self._emit("session.start", pid=proc.pid, **details)
        status = await proc.wait()
        if self._master is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outputs_done.wait(), PTY_DRAIN_TIMEOUT)
        else:
            await self._outputs_done.wait()
        self._close_io()
        self._unregister()
        exit_status = status if status >= 0 else None
        signame = signal.Signals(-status).name[3:] if status < 0 else None
        log.info("session %s: %s ended (status %s)", self.session_id, self._kind, status)
        self._record("close", exit_status)
        self._recorder = None
        end = {"exit_status": exit_status, "signal": signame}
        if self._kind == "exec":
            self._emit("exec", command=self._command, **end)
        elif self._kind == "subsystem":
            self._emit("subsystem", name=self._subsystem, **end)
        self._emit("session.end", **details, **end)
        if not self._closed:
            with contextlib.suppress(OSError, asyncssh.Error):
                chan.write_eof()
                if signame is not None:
                    chan.exit_with_signal(signame)
                else:
                    chan.exit(status)
        self._close_enhanced()

    def _enhanced_event(self, event: dict[str, Any]) -> bool | None:
        """A BPF event of this session: to the audit log, and beside the recording while it
        runs (recorders without ``enhanced`` just do not get them)."""
        if self._recorder is not None and hasattr(self._recorder, "enhanced"):
            self._record("enhanced", event)
        return self._ctx.emit(event)

    def _close_enhanced(self) -> None:
        """Deliver the session's last BPF events and report lost ones, after the client has
        its exit status (waiting for the ring buffers must not delay it)."""
        cookie, self._enhanced_cookie = self._enhanced_cookie, None
        if cookie is not None and self._ctx.enhanced is not None:
            self._ctx.enhanced.close_session_soon(cookie)

    # ------------------------------------------------------------------ watching (joins)

    def _join(self) -> None:
        """Attach this channel as a watcher of the session its ``TELEPORT_SESSION`` names: the
        session's own user, or a user whose roles may read sessions (auditor), may."""
        chan = self._chan
        assert chan is not None
        raw = chan.get_environment().get(JOIN_ENV, "")
        try:
            session_id = check_session_id(raw)
        except TeleportError as exc:
            self._refuse_join(str(raw)[:128], exc.message)
            return
        target = self._ctx.active.get(session_id)
        if target is None:
            self._refuse_join(session_id, f"no interactive session {session_id} is in progress on this node; "
                                          "see `tsh sessions ls` for the sessions you can join")
            return
        if target._ctx.user != self._ctx.user and not self._ctx.may_watch_others:
            self._refuse_join(session_id, f"user {self._ctx.user} may not join the session of {target._ctx.user}: "
                                          "only its own user or a role that may read sessions (such as the "
                                          "preset auditor) may; ask an administrator for one")
            return
        if len(target._watchers) >= MAX_WATCHERS:
            self._refuse_join(session_id, f"the session already has {MAX_WATCHERS} watchers; try again later")
            return
        self.session_id = session_id
        self._watching = target
        target._watchers.add(self)
        self._ctx.log.info("joined session %s of %s to watch it", session_id, target._ctx.user)
        self._emit("session.join", owner=target._ctx.user, owner_login=target._ctx.login, mode="observer")
        self._watch_output(bytes(target._replay))

    def _unregister(self) -> None:
        """The session is over: no longer joinable, and its watches end."""
        if self._ctx.active.get(self.session_id) is self:
            del self._ctx.active[self.session_id]
        for watcher in list(self._watchers):
            watcher._end_watch(f"the session {self.session_id} ended")

    def _refuse_join(self, session_id: str, reason: str) -> None:
        self._ctx.log.warning("join of session %r refused: %s", session_id, reason)
        self._ctx.emit({"event": "session.rejected", "session_id": session_id, "kind": "join", "reason": reason})
        if self._chan is not None and not self._closed:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._chan.write_stderr(f"teleport: cannot join: {reason}\r\n".encode())
                self._chan.exit(1)

    def _watch_output(self, data: bytes) -> None:
        if self._closed or self._chan is None or not data:
            return
        try:
            # A watcher too slow to keep up is not waited for: the session never blocks on it.
            if self._chan.get_write_buffer_size() > 4 * REPLAY_BYTES:
                return
            self._chan.write(data)
        except (OSError, asyncssh.Error):
            self._leave()

    def _leave(self) -> None:
        target, self._watching = self._watching, None
        if target is None:
            return
        target._watchers.discard(self)
        self._emit("session.leave", owner=target._ctx.user)

    def _end_watch(self, reason: str) -> None:
        """The watched session ended: the watch ends too."""
        self._leave()
        if self._chan is not None and not self._closed:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._chan.write(f"\r\nteleport: {reason}\r\n".encode())
                self._chan.exit(0)

    # ------------------------------------------------------------------ plumbing

    def _on_output(self, data: bytes, datatype: int | None) -> None:
        self._record("output", data)
        if self._master is not None:
            self._replay += data
            if len(self._replay) > REPLAY_BYTES:
                del self._replay[: len(self._replay) - REPLAY_BYTES]
            for watcher in list(self._watchers):
                watcher._watch_output(data)
        if self._closed or self._chan is None:
            return
        try:
            self._chan.write(data, datatype)
        except (OSError, asyncssh.Error):
            self._closed = True

    def _on_output_closed(self) -> None:
        self._open_outputs -= 1
        if self._open_outputs <= 0:
            self._outputs_done.set()

    def _on_input_closed(self) -> None:
        self._stdin = None
        self._stdin_full = False
        self._update_channel_reading()  # from now on the client's input is discarded

    def _update_channel_reading(self) -> None:
        """Pause the channel while the process cannot take input (starting, or stdin full)."""
        if self._chan is None or self._closed:
            return
        starting = self._stdin is None and self._proc is None
        blocked = self._stdin_full or (starting and bool(self._pending_input))
        if blocked and not self._channel_paused:
            self._channel_paused = True
            self._chan.pause_reading()
        elif not blocked and self._channel_paused:
            self._channel_paused = False
            self._chan.resume_reading()

    def _close_io(self) -> None:
        for transport in self._outputs:
            transport.close()
        if self._stdin is not None:
            self._stdin.close()
            self._stdin = None
        self._master = None  # the read transport owns (and closes) the master fd
        if self._open_outputs <= 0:
            self._outputs_done.set()

    def _kill(self, signum: int) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signum)

    def _emit(self, event: str, **fields: Any) -> None:
        self._ctx.emit({"event": event, "session_id": self.session_id, **fields})

    def _start_recorder(self, details: dict[str, Any]) -> None:
        factory = self._ctx.recorder_factory
        if factory is None:
            return
        tty = details.get("tty", {})
        info = {
            "session_id": self.session_id,
            "user": self._ctx.user,
            "login": self._ctx.login,
            "remote_addr": self._ctx.remote_addr,
            **self._ctx.node_info,
            "kind": self._kind,
            "command": self._command,
            "term": tty.get("term"),
            "cols": tty.get("cols"),
            "rows": tty.get("rows"),
            "started": datetime.now(UTC).isoformat(),
        }
        try:
            self._recorder = factory(info)
        except Exception:
            self._ctx.log.exception("session %s: recorder factory failed", self.session_id)
            return
        bind = getattr(self._recorder, "bind_session", None)
        if callable(bind):
            bind(self._end_unrecorded)

    def _record(self, method: str, *args: Any) -> None:
        if method == "close":
            self._recording_done = True
        recorder = self._recorder
        if recorder is None:
            return
        try:
            getattr(recorder, method)(*args)
        except Exception as exc:
            self._ctx.log.exception("session %s: recorder failed; recording stops", self.session_id)
            self._recorder = None
            if getattr(recorder, "required", False) and method != "close":
                self._end_unrecorded(f"the session recording failed ({exc})")

    def _end_unrecorded(self, reason: str) -> None:
        """A required recording failed: tell the user, audit it, end the session (SIGHUP)."""
        if self._recording_failed or self._recording_done:
            return  # a stream that fails after the session ended ends nothing
        self._recording_failed = True
        self._ctx.log.error("session %s: %s; ending the session", self.session_id, reason)
        self._emit("session.recording_failed", reason=reason, kind=self._kind)
        if self._chan is not None and not self._closed:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._chan.write(
                    f"\r\nteleport: {reason}; this cluster records every session "
                    "(session_recording: node-sync), so the session ends\r\n".encode()
                )
        self._kill(signal.SIGHUP)

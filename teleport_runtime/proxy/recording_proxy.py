"""The proxy terminating SSH, and recording what goes through.

The proxy terminates the client's SSH connection (instead of relaying its bytes end to end) for
OpenSSH nodes always (a stock sshd knows nothing of roles and cannot record, so this is how they
are reached whatever ``session_recording`` says), and for every node in the proxy recording
modes (``proxy``, ``proxy-sync``). The client's connection for the node ends here, in an SSH
server run on one end of a socket pair whose other end the jump channel (``direct-tcpip`` or the
``proxy:`` subsystem, :mod:`teleport_runtime.proxy.ssh`) is relayed to. So:

1. The client sees a host certificate naming the node (its name, hostname, their
   ``.<cluster>`` forms and its address host), signed by the host CA and issued by the auth
   service to this proxy for this node only (``/v1/certs/proxy/host``, Proxy role, registered
   nodes only). The key lives in memory for the connection.
2. The client logs in with its user certificate (a trusted user CA, valid now, listing the
   login). The user's roles (``node_labels``, ``logins``) are checked here, before anything is
   dialled; a refusal is told in an authentication banner and audited (``auth.rejected``).
3. The proxy opens its own SSH connection to the node's registered address. To a node service
   host (proxy mode) it logs in with the user's forwarded agent (``tsh ssh -A``, ``ssh -A``),
   which the node checks as usual; without one the session is refused saying so. To an OpenSSH
   node it logs in with a certificate the auth service issues for this one session
   (``/v1/certs/proxy/session``: the user's own certificate is sent along and checked again, the
   roles are checked again; the only principal
   is the login, it lives 2 minutes, ``source-address`` is the proxy's addresses; its key is made
   here and never leaves this process's memory). The node must present a host certificate from
   the cluster's host CA naming its address host, hostname or name, valid now; otherwise the
   client is refused with a message naming the node and the fix.
4. Sessions (shell, exec, subsystems such as sftp/scp, with or without a PTY, window changes,
   signals, exit status) and local port forwarding (``-L``, direct-tcpip) are relayed; PTY
   sessions are recorded (asciicast) with the node's recording code
   (:class:`~teleport_runtime.recording.node.NodeRecording` over the proxy's own spool
   ``<data_dir>/log/upload/proxy-sessions``), uploaded and audited (``session.upload``) as a node's
   are, kept on disk and retried when the upload fails. ``proxy-sync`` / ``node-sync`` stream
   the recording to the auth service and end the session when that fails; ``off`` records
   nothing. Audit events: ``session.start``, ``session.end``, ``port``, ``auth.rejected`` with
   ``target_node`` and ``target_addr``.

Not done here: remote forwarding (``-R``) is refused, and the user's agent is not forwarded on
to the node. In the node modes, sessions to node service hosts are relayed end to end as before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncssh

from teleport_runtime.api.client import AuthClient
from teleport_runtime.api.types import SessionCertRequest, TargetHostCertRequest
from teleport_runtime.ca import UserCertInfo, parse_user_ssh_cert
from teleport_runtime.ca.authority import generate_ssh_keypair
from teleport_runtime.config import SSH_MAX_PACKET, SSH_PACKET_FRAMING
from teleport_runtime.errors import TeleportError
from teleport_runtime.proxy.directory import NodeRecord
from teleport_runtime.rbac import Role, RoleSet
from teleport_runtime.recording.node import NodeRecording
from teleport_runtime.sshinternals import RelayServerProcess, ServerConnection
from teleport_runtime.sshserver import TrustedUserCAs, cert_only_options

log = logging.getLogger("teleport.proxy.recording")

#: Bound on reaching and logging in to an OpenSSH node.
UPSTREAM_TIMEOUT = 15.0
CHUNK = 64 * 1024

Audit = Callable[..., None]
#: The modes in which the proxy terminates (and records) every session.
PROXY_MODES = ("proxy", "proxy-sync")


def _cert_line(key_data: bytes) -> str:
    """An SSH certificate in wire format as an OpenSSH line."""
    (length,) = struct.unpack(">I", key_data[:4])
    algorithm = key_data[4 : 4 + length].decode("ascii")
    return f"{algorithm} {base64.b64encode(key_data).decode()}"


class UpstreamRefused(TeleportError):
    """The OpenSSH node could not be reached or trusted (the message names it and the fix)."""

    code = "upstream_refused"
    status = 502


class AgentRequired(TeleportError):
    """Proxy recording mode needs the user's forwarded agent to reach a node service host."""

    code = "agent_required"
    status = 400


class _TerminatedConnection(ServerConnection):
    """The server side for one client: decides the login once its signature is verified."""

    async def validate_public_key(self, username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        ok = bool(await super().validate_public_key(username, key_data, msg, signature))
        owner = self.get_owner()
        if ok and msg and isinstance(owner, _Terminated):
            return await owner.authorize(username, key_data)
        return ok


class RecordingProxy:
    """Terminates client SSH for OpenSSH nodes (see the module docstring)."""

    def __init__(
        self,
        *,
        client: AuthClient,
        cluster: str,
        trusted_user_ca_keys: Callable[[], list[str]],
        host_ca_keys: Callable[[], list[str]],
        roles: Callable[[list[str]], Awaitable[list[Role]]],
        recording: NodeRecording | None,
        audit: Audit,
        mode: Callable[[], str] = lambda: "node",
    ) -> None:
        self.client = client
        self.cluster = cluster
        self.trusted_user_ca_keys = trusted_user_ca_keys
        self.host_ca_keys = host_ca_keys
        self.roles = roles
        self.recording = recording
        self.audit = audit
        self.mode = mode
        self.connections: set[_Terminated] = set()
        #: How to reach a tunnel node (asyncssh's ``tunnel=`` object), set by the proxy service.
        self.tunnel_for: Callable[[NodeRecord], Any] | None = None

    def terminates(self, node: NodeRecord) -> bool:
        """OpenSSH nodes always; every node in the proxy recording modes."""
        return node.sub_kind == "openssh" or self.mode() in PROXY_MODES

    async def dial(self, node: NodeRecord, user: str, remote_addr: str) -> socket.socket:
        """A socket whose peer is an SSH server speaking for ``node``: relay the client's
        channel to it. TeleportError (naming the node) when no host certificate is issued."""
        key_pem, public = generate_ssh_keypair()
        host_cert = (await self.client.sign_target_host(TargetHostCertRequest(node=node.id,
                                                                              ssh_public_key=public))).ssh_cert
        host_key = asyncssh.import_private_key(key_pem)
        options = cert_only_options(
            server_factory=lambda: _Terminated(self, node, remote_addr),
            server_host_keys=[(host_key, asyncssh.import_certificate(host_cert))],
            server_version="Teleport-Proxy",
            allow_scp=False,
            agent_forwarding=True,  # the user's agent logs the proxy in to node service hosts
            keepalive_interval=60,
            max_pktsize=SSH_MAX_PACKET + SSH_PACKET_FRAMING,
        )
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        theirs.setblocking(False)
        await loop.connect_accepted_socket(lambda: _TerminatedConnection(loop, options), ours)
        return theirs

    async def close(self) -> None:
        for terminated in list(self.connections):
            terminated.close()

    # ------------------------------------------------------------------ upstream

    async def session_keys(self, node: NodeRecord, login: str, user_cert: str) -> list[Any]:
        """A key and the auth service's certificate for one session to an OpenSSH node."""
        key_pem, public = generate_ssh_keypair()
        answer = await self.client.sign_session(
            SessionCertRequest(user_ssh_cert=user_cert, login=login, node=node.id, ssh_public_key=public))
        return [(asyncssh.import_private_key(key_pem), asyncssh.import_certificate(answer.ssh_cert))]

    async def agent_keys(self, node: NodeRecord, agent_path: str) -> tuple[asyncssh.SSHAgentClient, list[Any]]:
        """The keys in the user's forwarded agent (for a node service host in proxy mode)."""
        try:
            agent = await asyncssh.connect_agent(agent_path)
            return agent, list(await agent.get_keys())
        except (OSError, asyncssh.Error) as exc:
            raise UpstreamRefused(f"cannot use your forwarded agent to log in to {node.hostname}: {exc}") from None

    async def connect_upstream(self, node: NodeRecord, login: str, keys: list[Any]) -> asyncssh.SSHClientConnection:
        """The proxy's own SSH connection to ``node`` as ``login`` with ``keys``; UpstreamRefused
        naming the node and the fix otherwise."""
        what = "OpenSSH node" if node.sub_kind == "openssh" else "node"
        cas = [asyncssh.import_public_key(k) for k in self.host_ca_keys()]
        names = list(dict.fromkeys([node.addr.host, node.hostname, node.id]))
        last = ""
        for alias in names:
            try:
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    return await asyncssh.connect(
                        node.addr.host, node.addr.port, username=login, client_keys=keys,
                        tunnel=self.tunnel_for(node) if node.tunnel and self.tunnel_for else (),
                        known_hosts=([], cas, []), host_key_alias=alias, agent_path=None,
                        preferred_auth="publickey", config=None, keepalive_interval=60,
                    )
            except asyncssh.HostKeyNotVerifiable as exc:
                last = exc.reason
                if "principal" in exc.reason.lower():
                    continue  # the certificate may name the node another way
                break
            except asyncssh.PermissionDenied:
                fix = ("its sshd must trust the cluster's user CA (TrustedUserCAKeys from `tctl auth export "
                       f"--type=user`) and allow {login!r} (AuthorizedPrincipalsFile, if set, must list it)"
                       if node.sub_kind == "openssh" else
                       "your forwarded agent must hold your Teleport key and certificate (`ssh-add` the key "
                       "`tsh login` wrote) and your roles must allow the login there")
                raise UpstreamRefused(
                    f"{what} {node.hostname} ({node.addr}) refused the login {login!r}: {fix}"
                ) from None
            except (OSError, TimeoutError, asyncssh.Error) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
                    getattr(exc, "reason", "") or "timed out")
                raise UpstreamRefused(
                    f"{what} {node.hostname} is registered at {node.addr} but cannot be reached from "
                    f"the proxy: {reason}"
                ) from None
        raise UpstreamRefused(
            f"{what} {node.hostname} ({node.addr}) did not present a valid host certificate from "
            f"cluster {self.cluster}'s host CA ({last}): sign its host key with `tctl auth sign "
            f"--host={node.hostname},{node.addr.host} --out=/etc/ssh/teleport_host_key` and set HostKey and "
            "HostCertificate in its sshd_config (or rerun the openssh_node role), then reload sshd"
        )

    # ------------------------------------------------------------------ sessions

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        owner = process.channel.get_connection().get_owner()
        if not isinstance(owner, _Terminated):
            process.exit(1)
            return
        if owner.upstream is None:
            try:
                await owner.connect_with_agent(process.channel.get_agent_path)
            except TeleportError as exc:
                owner._audit("auth.rejected", reason=exc.message)
                process.stderr.write(f"teleport: {exc.message}\r\n".encode())
                process.exit(1)
                return
        await owner.relay_session(process)


class _Terminated(asyncssh.SSHServer):
    """One client connection terminated for one OpenSSH node."""

    def __init__(self, proxy: RecordingProxy, node: NodeRecord, remote_addr: str) -> None:
        self.proxy = proxy
        self.node = node
        self.remote_addr = remote_addr
        self.conn: asyncssh.SSHServerConnection | None = None
        self.upstream: asyncssh.SSHClientConnection | None = None
        self.info: UserCertInfo | None = None
        self.login = ""
        self.user_cert = ""
        self._connecting = asyncio.Lock()

    # --- asyncssh.SSHServer

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.proxy.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connections.discard(self)
        if self.upstream is not None:
            self.upstream.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def begin_auth(self, username: str) -> bool:
        assert self.conn is not None
        self.conn.set_authorized_keys(TrustedUserCAs(self.proxy.trusted_user_ca_keys()))  # type: ignore[arg-type]
        return True

    def session_requested(self) -> RelayServerProcess:
        return RelayServerProcess(self.proxy._session)  # every subsystem, sftp too, goes to the node

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False

    async def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                                   orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
        """``-L``: the node's sshd opens the connection (its own AllowTcpForwarding applies)."""
        if self.info is None or not self.info.permit_port_forwarding:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "port forwarding is not permitted by your roles")
        if self.upstream is None:  # a node service host in proxy mode: needs the agent of a session
            try:
                await self.connect_with_agent(lambda: self.conn.get_agent_path() if self.conn else None)
            except TeleportError as exc:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, exc.message) from None
            assert self.upstream is not None
        try:
            reader, writer = await self.upstream.open_connection(dest_host, dest_port, encoding=None)
        except asyncssh.ChannelOpenError as exc:
            raise asyncssh.ChannelOpenError(exc.code, f"{self.node.hostname}: {exc.reason}") from None
        self._audit("port", dest=f"{dest_host}:{dest_port}")
        return _ForwardSession(reader, writer)

    # --- decisions

    def _audit(self, event: str, **fields: Any) -> None:
        self.proxy.audit(event, user=self.info.username if self.info else "", login=self.login,
                         remote_addr=self.remote_addr, target_node=self.node.hostname,
                         target_addr=str(self.node.addr), **fields)

    def _refuse(self, reason: str) -> bool:
        log.warning("refused %s@%s from %s: %s", self.login, self.node.hostname, self.remote_addr, reason)
        self._audit("auth.rejected", reason=reason)
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.send_auth_banner(f"teleport proxy: {reason}\r\n")
        return False

    async def authorize(self, login: str, key_data: bytes) -> bool:
        """After the client proved it holds the certificate's key: the login and the roles,
        then the proxy's own connection to the node."""
        self.login = login
        try:
            self.user_cert = _cert_line(key_data)
            self.info = parse_user_ssh_cert(self.user_cert, self.proxy.trusted_user_ca_keys())
        except (TeleportError, struct.error, UnicodeDecodeError) as exc:
            return self._refuse(f"not a user certificate of cluster {self.proxy.cluster}: {exc}")
        if login not in self.info.logins:
            return self._refuse(
                f"your certificate does not allow login {login!r} (it allows {', '.join(self.info.logins) or 'none'})")
        try:
            roles = await self.proxy.roles(list(self.info.roles))
            RoleSet(roles, self.info.traits).check_access_to_node(login, self.node.labels)
        except TeleportError as exc:
            return self._refuse(f"access to {login}@{self.node.hostname} denied: {exc.message}")
        if self.node.sub_kind != "openssh":
            return True  # logged in with the user's forwarded agent at the first session
        try:
            keys = await self.proxy.session_keys(self.node, login, self.user_cert)
            self.upstream = await self.proxy.connect_upstream(self.node, login, keys)
        except TeleportError as exc:
            return self._refuse(exc.message)
        log.info("[user=%s login=%s target=%s] terminated for OpenSSH node at %s", self.info.username, login,
                 self.node.hostname, self.node.addr)
        return True

    # --- sessions

    async def connect_with_agent(self, agent_path: Callable[[], str | None]) -> None:
        """Proxy recording mode, a node service host: log in with the user's forwarded agent."""
        async with self._connecting:
            if self.upstream is not None:
                return
            path = agent_path()
            for _ in range(20):  # the agent request is answered just before the session's
                if path:
                    break
                await asyncio.sleep(0.025)
                path = agent_path()
            if not path:
                raise AgentRequired(
                    f"this cluster records sessions at the proxy (session_recording: {self.proxy.mode()}): "
                    f"the proxy logs in to {self.node.hostname} with your forwarded agent, and you forwarded "
                    "none: connect with `tsh ssh -A` or `ssh -A` (with your Teleport key in the agent)"
                )
            agent, keys = await self.proxy.agent_keys(self.node, path)
            try:
                self.upstream = await self.proxy.connect_upstream(self.node, self.login, keys)
            finally:
                agent.close()

    async def relay_session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        assert self.upstream is not None and self.info is not None
        term = process.get_terminal_type()
        cols, rows, *_ = process.get_terminal_size()
        kind = "subsystem" if process.subsystem else "exec" if process.command is not None else "shell"
        session_id = str(uuid.uuid4())
        details: dict[str, Any] = {"session_id": session_id, "kind": kind}
        if process.command is not None:
            details["command"] = process.command
        if process.subsystem:
            details["subsystem"] = process.subsystem
        if term:
            details["tty"] = {"term": term, "cols": cols, "rows": rows}
        try:
            upstream = await self.upstream.create_process(
                process.command, subsystem=process.subsystem or None, term_type=term or None,
                term_size=(cols, rows) if term else None, encoding=None,
                request_pty=bool(term),
            )
        except (asyncssh.Error, OSError) as exc:
            process.stderr.write(f"teleport: {self.node.hostname}: {exc}\r\n".encode())
            process.exit(1)
            return
        self._audit("session.start", **details)
        recorder = self._recorder(details, term, cols, rows) if term else None
        abort: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def end(reason: str) -> None:
            if not abort.done():
                abort.set_result(reason)

        if recorder is not None and callable(getattr(recorder, "bind_session", None)):
            recorder.bind_session(end)
        status = await self._pump(process, upstream, recorder, abort)
        if recorder is not None:
            with contextlib.suppress(Exception):
                recorder.close(status)
        self._audit("session.end", exit_status=status, **details)
        with contextlib.suppress(Exception):
            if status is None and upstream.exit_signal:
                process.exit_with_signal(upstream.exit_signal[0])
            else:
                process.exit(status if status is not None else 255)

    def _recorder(self, details: dict[str, Any], term: str, cols: int, rows: int) -> Any:
        recording = self.proxy.recording
        if recording is None:
            return None
        assert self.info is not None
        info = {
            "session_id": details["session_id"], "user": self.info.username, "login": self.login,
            "remote_addr": self.remote_addr, "cluster_name": self.proxy.cluster, "host_uuid": self.node.id,
            "nodename": self.node.hostname, "kind": details["kind"], "command": details.get("command"),
            "term": term, "cols": cols, "rows": rows, "started": datetime.now(UTC).isoformat(),
            "recorded_by": "proxy",
        }
        try:
            return recording.recorder_factory(info)
        except Exception:
            log.exception("session %s: cannot start the recording", details["session_id"])
            return None

    async def _pump(self, process: asyncssh.SSHServerProcess[bytes], upstream: asyncssh.SSHClientProcess[bytes],
                    recorder: Any, abort: asyncio.Future[str]) -> int | None:
        """Copy both ways until the node's process ends; returns its exit status."""

        def record(method: str, *args: Any) -> None:
            nonlocal recorder
            if recorder is None:
                return
            try:
                getattr(recorder, method)(*args)
            except Exception as exc:
                log.exception("recorder failed; recording stops")
                if getattr(recorder, "required", False) and not abort.done():
                    abort.set_result(f"the session recording failed ({exc})")
                recorder = None

        async def client_to_node() -> None:
            while True:
                try:
                    data = await process.stdin.read(CHUNK)
                except asyncssh.TerminalSizeChanged as change:
                    upstream.change_terminal_size(change.width, change.height)
                    record("resize", change.width, change.height)
                    continue
                except asyncssh.SignalReceived as sig:
                    upstream.send_signal(sig.signal)
                    continue
                except asyncssh.BreakReceived as brk:
                    upstream.channel.send_break(brk.msec)
                    continue
                if not data:
                    upstream.stdin.write_eof()
                    return
                record("input", data)
                upstream.stdin.write(data)
                await upstream.stdin.drain()

        async def node_to_client(source: asyncssh.SSHReader[bytes], sink: asyncssh.SSHWriter[bytes]) -> None:
            while data := await source.read(CHUNK):
                record("output", data)
                sink.write(data)
                await sink.drain()

        inbound = asyncio.ensure_future(client_to_node())
        outputs: asyncio.Future[Any] = asyncio.gather(node_to_client(upstream.stdout, process.stdout),
                                                      node_to_client(upstream.stderr, process.stderr))
        waits: list[asyncio.Future[Any]] = [outputs, abort]
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if abort in done:
            reason = abort.result()
            self._audit("session.recording_failed", reason=reason)
            with contextlib.suppress(Exception):
                process.stderr.write(f"\r\nteleport: {reason}; this cluster records every session "
                                     "(session_recording: proxy-sync), so the session ends\r\n".encode())
            upstream.close()
        with contextlib.suppress(Exception):
            await outputs
        inbound.cancel()
        await asyncio.gather(inbound, return_exceptions=True)
        with contextlib.suppress(Exception):
            await upstream.wait_closed()
        if abort.done():
            return None
        return upstream.exit_status


class _ForwardSession(asyncssh.SSHTCPSession[bytes]):
    """A client's ``-L`` channel relayed to a channel the proxy opened on the node."""

    def __init__(self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
        self._reader, self._writer = reader, writer
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan

    def session_started(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._copy())

    async def _copy(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            while data := await self._reader.read(CHUNK):
                if self._chan is not None:
                    self._chan.write(data)
        if self._chan is not None:
            with contextlib.suppress(Exception):
                self._chan.write_eof()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._writer.write(data)

    def eof_received(self) -> bool:
        with contextlib.suppress(Exception):
            self._writer.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()

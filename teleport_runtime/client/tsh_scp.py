"""``tsh scp``: copy files to and from nodes over SFTP, through the proxy.

Arguments are local paths or ``[login@]node:path`` (an empty path is the login's home). Either
every source is local and the destination remote (upload), or every source is on one node and
the destination local (download).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from teleport_runtime.errors import BadParameter, TeleportError
from teleport_runtime.netaddr import unbracket

if TYPE_CHECKING:
    import asyncssh

_REMOTE = re.compile(r"(?:(?P<login>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<path>.*)", re.DOTALL)


@dataclass(frozen=True)
class Location:
    path: str
    host: str | None = None  # None: local
    login: str | None = None

    @property
    def remote(self) -> bool:
        return self.host is not None

    def __str__(self) -> str:
        if not self.remote:
            return self.path
        return f"{self.login + '@' if self.login else ''}{self.host}:{self.path}"


def parse_location(text: str) -> Location:
    """``[login@]node:path`` is remote; anything else (``./a:b``, ``/x``) is local."""
    if text.startswith(("/", "./", "../")):
        return Location(text)
    match = _REMOTE.fullmatch(text)
    if not match:
        return Location(text)
    return Location(match.group("path"), unbracket(match.group("host")), match.group("login"))


@dataclass(frozen=True)
class CopyPlan:
    sources: list[Location]
    dest: Location

    @property
    def upload(self) -> bool:
        return self.dest.remote

    @property
    def remote(self) -> Location:
        return self.dest if self.dest.remote else self.sources[0]


def plan_copy(args: list[str]) -> CopyPlan:
    if len(args) < 2:
        raise BadParameter("tsh scp needs a source and a destination: tsh scp [-r] SRC... DEST")
    *sources, dest = [parse_location(a) for a in args]
    if dest.remote:
        if any(s.remote for s in sources):
            raise BadParameter(
                "copying between two remote locations is not supported: copy to a local file first"
            )
    else:
        if not all(s.remote for s in sources):
            raise BadParameter(
                "one side must be remote: use [login@]node:path for the node's side "
                "(to copy locally, use cp)"
            )
        hosts = {(s.host, s.login) for s in sources}
        if len(hosts) > 1:
            raise BadParameter("all remote sources must be on the same node with the same login")
    return CopyPlan(sources, dest)


def check_local_sources(plan: CopyPlan, recursive: bool) -> None:
    """Refuse missing local sources, and directories without -r, before connecting."""
    if not plan.upload:
        return
    for src in plan.sources:
        if not os.path.exists(src.path):
            raise BadParameter(f"{src.path}: no such file or directory")
        if os.path.isdir(src.path) and not recursive:
            raise BadParameter(f"{src.path} is a directory: use tsh scp -r to copy directories")


async def run_copy(
    conn: asyncssh.SSHClientConnection, plan: CopyPlan, *, recursive: bool, preserve: bool
) -> None:
    """Perform the copy over an SFTP session on ``conn`` (a connection to the node)."""
    import asyncssh  # loaded already (by tsh_ssh, which made ``conn``)

    try:
        async with conn.start_sftp_client() as sftp:
            if plan.upload:
                dest = plan.dest.path or "."
                await sftp.put(
                    [s.path for s in plan.sources], dest, recurse=recursive, preserve=preserve,
                )
            else:
                for src in plan.sources:
                    path = src.path or "."
                    if await sftp.isdir(path) and not recursive:
                        raise BadParameter(f"{src}: is a directory: use tsh scp -r to copy directories")
                await sftp.get(
                    [s.path or "." for s in plan.sources], plan.dest.path, recurse=recursive,
                    preserve=preserve,
                )
    except asyncssh.SFTPError as exc:
        raise TeleportError(f"scp failed: {exc.reason}") from None
    except asyncssh.ChannelOpenError as exc:
        raise TeleportError(f"the node refused the SFTP session: {exc.reason}") from None
    except OSError as exc:
        raise TeleportError(f"scp failed: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None

"""OS logins on the node: lookup (passwd and group database) and the session environment.

The lookups are blocking (NSS may go to the network); the SSH server runs them in an executor.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

#: PATH for sessions, as Debian's sshd sets it.
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Environment variables a client may set with ``env`` requests (like sshd's AcceptEnv).
ACCEPTED_ENV_PREFIXES = ("LC_",)
ACCEPTED_ENV = frozenset({"LANG", "LANGUAGE", "TZ", "COLORTERM"})


@dataclass(frozen=True)
class OSUser:
    """A local account sessions run as."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]
    #: Working directory of sessions: the home directory, or ``/`` when it does not exist.
    cwd: str


def lookup_os_user(login: str) -> OSUser | None:
    """The account ``login`` with its supplementary groups (as initgroups would set), or None."""
    try:
        entry = pwd.getpwnam(login)
    except KeyError:
        return None
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return OSUser(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        home=entry.pw_dir or "/",
        shell=entry.pw_shell or "/bin/sh",
        groups=groups,
        cwd=entry.pw_dir if entry.pw_dir and os.path.isdir(entry.pw_dir) else "/",
    )


def can_switch_to(user: OSUser) -> bool:
    """Whether this process can start processes as ``user`` (it is root, or it is ``user``)."""
    return os.geteuid() == 0 or os.geteuid() == user.uid


def accepted_client_env(requested: Mapping[str, str]) -> dict[str, str]:
    """The subset of the client's ``env`` requests a session accepts."""
    return {
        key: value for key, value in requested.items() if key in ACCEPTED_ENV or key.startswith(ACCEPTED_ENV_PREFIXES)
    }


def session_env(user: OSUser, extra: Mapping[str, str]) -> dict[str, str]:
    """The base environment of a session process for ``user``, updated with ``extra``."""
    env = {
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": user.shell,
        "PATH": ROOT_PATH if user.uid == 0 else USER_PATH,
    }
    env.update(extra)
    return env

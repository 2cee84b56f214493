"""Host users: OS accounts and sudoers entries the node creates from the user's roles.

When a role matching the node sets ``options.create_host_user_mode`` (``keep`` or
``insecure-drop``), a login that does not exist is created on the node at login
(``useradd --create-home``) with the roles' ``allow.host_groups`` (groups that do not exist are
created) and a sudoers file ``/etc/sudoers.d/teleport-<login>`` holding the roles'
``allow.host_sudoers`` entries. Every account the node creates is a member of the
``teleport-system`` group: that membership is how the node knows an account is its own, and it
never changes or removes one without it. A login that exists without it is refused (the reason
is audited) and left untouched. An account the node made is brought in line with the roles on
every login (groups, sudoers). ``insecure-drop`` accounts are removed (``userdel --remove``) when
the last connection using them ends.

The sudoers file is written to a temporary file in the sudoers directory (a name with a dot,
which sudo ignores), checked with ``visudo -cf`` and only then renamed into place; content
visudo rejects refuses the login and writes nothing, and it is checked before the account is
created so a refusal leaves no account behind. Logins of the same account are serialised by a
per-login lock, so concurrent first logins create it once.

The commands run with argument lists (never a shell) and names are validated with
:func:`~teleport_runtime.rbac.check_posix_name` first, so a login can never be read as an option.

Audit events (through ``emit``): ``host_user.create`` (``login``, ``groups``, ``sudoers``,
``mode``), ``host_user.update`` (``login``, ``groups``, ``sudoers``, ``changed``),
``host_user.delete`` (``login``) and ``host_user.rejected`` (``login``, ``reason``).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teleport_runtime.errors import AccessDenied, BadParameter
from teleport_runtime.rbac import HostUserPolicy, check_posix_name, check_sudoers_line

#: Group marking the accounts this node created (and so may change and remove).
SYSTEM_GROUP = "teleport-system"
SUDOERS_DIR = Path("/etc/sudoers.d")
#: Bound on each account command.
COMMAND_TIMEOUT = 60.0
#: userdel attempts while the account still has processes (they got SIGHUP and are exiting).
USERDEL_ATTEMPTS = 25

_LOG = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], object]


class HostUserRefused(AccessDenied):
    """The login cannot get a host user; the message is the reason (audited)."""


@dataclass
class _Account:
    lock: threading.Lock
    connections: int = 0
    drop: bool = False


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)


class HostUsers:
    """Creates, updates and removes the accounts the node makes for logins (see the module)."""

    def __init__(self, sudoers_dir: Path = SUDOERS_DIR, system_group: str = SYSTEM_GROUP) -> None:
        self.sudoers_dir = sudoers_dir
        self.system_group = system_group
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}

    # ------------------------------------------------------------------ helpers

    def _account(self, login: str) -> _Account:
        with self._lock:
            return self._accounts.setdefault(login, _Account(threading.Lock()))

    @contextlib.contextmanager
    def _locked(self, login: str) -> Iterator[_Account]:
        account = self._account(login)
        with account.lock:
            yield account

    def sudoers_path(self, login: str) -> Path:
        # sudo skips files in sudoers.d whose names contain a dot
        return self.sudoers_dir / f"teleport-{login.replace('.', '_')}"

    def is_managed(self, login: str) -> bool:
        """Whether ``login`` is an account this node created (a member of the system group)."""
        try:
            group = grp.getgrnam(self.system_group)
        except KeyError:
            return False
        return login in group.gr_mem

    @staticmethod
    def _exists(login: str) -> bool:
        try:
            pwd.getpwnam(login)
        except KeyError:
            return False
        return True

    @staticmethod
    def _groups_of(login: str) -> set[str]:
        return {g.gr_name for g in grp.getgrall() if login in g.gr_mem}

    def _ensure_group(self, name: str, *, system: bool = False) -> None:
        try:
            grp.getgrnam(name)
            return
        except KeyError:
            pass
        result = _run(["groupadd", *(["--system"] if system else []), "--", name])
        # 9: created meanwhile by someone else, which is what we wanted
        if result.returncode not in (0, 9):
            raise HostUserRefused(f"cannot create group {name!r}: {result.stderr.strip() or result.returncode}")

    def _sudoers_text(self, login: str, policy: HostUserPolicy) -> str:
        return "".join(f"{login} {line}\n" for line in policy.sudoers)

    def _check_sudoers(self, login: str, text: str) -> Path:
        """Write ``text`` to a temporary file beside the final one and check it with visudo;
        returns the temporary path (the caller renames or removes it)."""
        visudo = shutil.which("visudo") or "/usr/sbin/visudo"
        if not os.path.exists(visudo):
            raise HostUserRefused("cannot check sudoers entries: visudo is not installed (install sudo)")
        self.sudoers_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        tmp = self.sudoers_dir / f".teleport-{login}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o440)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            result = _run([visudo, "-cf", str(tmp)])
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            detail = (result.stderr or result.stdout).strip().replace(str(tmp), "sudoers")
            raise HostUserRefused(
                f"the roles' host_sudoers entries for {login!r} are rejected by visudo ({detail}); "
                "fix allow.host_sudoers in the role"
            )
        return tmp

    def _install_sudoers(self, login: str, policy: HostUserPolicy) -> bool:
        """Bring the login's sudoers file in line with ``policy``; whether it changed."""
        path = self.sudoers_path(login)
        text = self._sudoers_text(login, policy)
        try:
            current: str | None = path.read_text()
        except FileNotFoundError:
            current = None
        if not text:
            if current is None:
                return False
            path.unlink(missing_ok=True)
            return True
        if current == text:
            return False
        tmp = self._check_sudoers(login, text)
        os.replace(tmp, path)
        return True

    # ------------------------------------------------------------------ the API

    def ensure(self, login: str, policy: HostUserPolicy, emit: Emit) -> None:
        """Make ``login`` exist as ``policy`` says (blocking: run it in an executor).

        Raises :class:`HostUserRefused` with the reason (already audited) when the login must
        not go ahead: an account the node did not create, or sudoers entries visudo rejects.
        """
        try:
            self._ensure(login, policy, emit)
        except Exception as exc:  # whatever went wrong, the login does not go ahead
            reason = exc.message if isinstance(exc, BadParameter | HostUserRefused) else f"{type(exc).__name__}: {exc}"
            _LOG.warning("host user %r refused: %s", login, reason)
            emit({"event": "host_user.rejected", "login": login, "reason": reason})
            raise HostUserRefused(reason) from None

    def _ensure(self, login: str, policy: HostUserPolicy, emit: Emit) -> None:
        check_posix_name(login, "login")
        for group in policy.groups:
            check_posix_name(group, "group name")
        for index, line in enumerate(policy.sudoers):
            check_sudoers_line(line, f"host_sudoers[{index}]")
        if self.system_group in policy.groups:
            raise HostUserRefused(f"the group {self.system_group!r} is the node's own and cannot be given by a role")
        with self._locked(login) as account:
            if self._exists(login) and not self.is_managed(login):
                raise HostUserRefused(
                    f"the login {login!r} is an existing account the node did not create "
                    f"(not in the {self.system_group} group): a role cannot make it a host user; "
                    "log in with another login or remove create_host_user_mode from the role"
                )
            account.drop = policy.mode == "insecure-drop"
            groups = [*policy.groups, self.system_group]
            if not self._exists(login):
                # checked first: a refused sudoers leaves no account behind
                tmp = self._check_sudoers(login, self._sudoers_text(login, policy)) if policy.sudoers else None
                try:
                    self._ensure_group(self.system_group, system=True)
                    for group in policy.groups:
                        self._ensure_group(group)
                    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
                    result = _run(
                        ["useradd", "--create-home", "--shell", shell, "--groups", ",".join(groups), "--", login]
                    )
                    if result.returncode != 0:
                        raise HostUserRefused(
                            f"cannot create the host user {login!r}: {result.stderr.strip() or result.returncode}"
                        )
                    if tmp is not None:
                        os.replace(tmp, self.sudoers_path(login))
                        tmp = None
                finally:
                    if tmp is not None:
                        tmp.unlink(missing_ok=True)
                _LOG.info("host user %r created (groups %s, %d sudoers entries)", login, groups, len(policy.sudoers))
                emit({
                    "event": "host_user.create", "login": login, "groups": list(policy.groups),
                    "sudoers": list(policy.sudoers), "mode": policy.mode,
                })
                return
            changed: list[str] = []
            have = self._groups_of(login)
            if set(groups) != have:
                for group in policy.groups:
                    self._ensure_group(group)
                result = _run(["usermod", "--groups", ",".join(groups), "--", login])
                if result.returncode != 0:
                    raise HostUserRefused(
                        f"cannot update the groups of {login!r}: {result.stderr.strip() or result.returncode}"
                    )
                changed.append("groups")
            if self._install_sudoers(login, policy):
                changed.append("sudoers")
            if changed:
                _LOG.info("host user %r updated (%s)", login, ", ".join(changed))
                emit({
                    "event": "host_user.update", "login": login, "groups": list(policy.groups),
                    "sudoers": list(policy.sudoers), "changed": changed,
                })

    def acquire(self, login: str) -> None:
        """A connection logged in as ``login`` (counted for ``insecure-drop``)."""
        with self._lock:
            self._accounts.setdefault(login, _Account(threading.Lock())).connections += 1

    def release(self, login: str, emit: Emit) -> None:
        """A connection of ``login`` ended: the last one removes an ``insecure-drop`` account
        (blocking: run it in an executor)."""
        with self._locked(login) as account:
            account.connections = max(0, account.connections - 1)
            if account.connections or not account.drop:
                return
            if not self.is_managed(login):
                return  # never touch an account the node did not create
            for _ in range(USERDEL_ATTEMPTS):
                result = _run(["userdel", "--remove", "--", login])
                if result.returncode != 8:
                    break
                time.sleep(0.2)  # 8: processes of the ended sessions are still exiting (SIGHUP)
            # 12: the home directory could not be removed; the account itself is gone
            if result.returncode not in (0, 12):
                _LOG.error("cannot remove host user %r: %s", login, result.stderr.strip())
                emit({"event": "host_user.rejected", "login": login,
                      "reason": f"cannot remove the host user: {result.stderr.strip() or result.returncode}"})
                return
            self.sudoers_path(login).unlink(missing_ok=True)
            account.drop = False
            _LOG.info("host user %r removed (insecure-drop, last session ended)", login)
            emit({"event": "host_user.delete", "login": login})

# -*- coding: utf-8 -*-
# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""One way to talk to the cluster from a module: ``tctl <args> --format=json`` on the auth host.

Every module of the collection builds a :class:`Tctl` runner from its ``AnsibleModule`` and lets a
:class:`TctlModule` subclass decide what to change. Errors cross into Ansible once, in
:meth:`TctlModule.execute`, as ``fail_json`` with the command, exit status and tctl's message.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable, Sequence

#: Options every tctl-driven module takes (documented in the ``tctl`` doc fragment).
TCTL_ARGUMENT_SPEC = dict(
    tctl_path=dict(type="str", default="tctl"),
    tctl_config=dict(type="path"),
    auth_server=dict(type="str"),
)


def tctl_argument_spec(**options):
    """The shared connection options plus a module's own."""
    spec = copy.deepcopy(TCTL_ARGUMENT_SPEC)
    spec.update(options)
    return spec


class TctlError(Exception):
    """tctl failed, or printed something that is not what its JSON contract promises."""

    def __init__(self, message, cmd=None, rc=None, stdout=None, stderr=None):
        super().__init__(message)
        self.message = message
        self.cmd = cmd
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr

    def details(self):
        """Extra keys for ``fail_json``: what ran and what it said."""
        out = {}
        for key in ("cmd", "rc", "stdout", "stderr"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def _mask(args, secrets):
    """``args`` with every secret replaced, for error messages."""
    masked = []
    for arg in args:
        for secret in secrets:
            if secret:
                arg = arg.replace(secret, "********")
        masked.append(arg)
    return masked


class Tctl:
    """Runs tctl with the module's connection options and decodes its JSON output."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.path = params.get("tctl_path") or "tctl"
        self.config = params.get("tctl_config")
        self.auth_server = params.get("auth_server")

    def command(self, args):
        """The argv for ``tctl <global options> <args>``."""
        cmd = [self._binary()]
        if self.config:
            cmd += ["--config", self.config]
        if self.auth_server:
            cmd += ["--auth-server", self.auth_server]
        return cmd + [str(a) for a in args]

    def _binary(self):
        if "/" in self.path:
            return self.path
        found = self.module.get_bin_path(self.path, opt_dirs=["/usr/local/bin"])
        if not found:
            raise TctlError(
                "cannot find %s on PATH or in /usr/local/bin: is the runtime installed on this "
                "host (role teleport_access.cluster.runtime), and is it an auth server?" % self.path
            )
        return found

    def run(self, args, json_output=True, secrets=(), stdin=None):
        """Run ``tctl args`` (+ ``--format=json``); returns the decoded JSON, or stdout text.

        A secret goes to tctl as ``stdin`` (with ``--value-file=-`` in ``args``): an argv is
        readable by every local user (ps, /proc/PID/cmdline). ``secrets`` are also masked in
        anything reported on failure.
        """
        cmd = self.command(list(args) + (["--format=json"] if json_output else []))
        kwargs = {} if stdin is None else dict(data=stdin)
        rc, stdout, stderr = self.module.run_command(cmd, environ_update={"LC_ALL": "C"}, **kwargs)
        shown = " ".join(_mask(cmd, secrets))
        if rc != 0:
            stdout, stderr = _mask([stdout or "", stderr or ""], secrets)
            reason = _first_error_line(stderr) or _first_error_line(stdout) or "no message"
            raise TctlError(
                "%s failed (exit %d): %s" % (shown, rc, reason),
                cmd=shown, rc=rc, stdout=stdout, stderr=stderr,
            )
        if not json_output:
            return stdout
        try:
            return json.loads(stdout)
        except ValueError as exc:
            raise TctlError(
                "%s printed no JSON (%s): %s" % (shown, exc, stdout[:200]),
                cmd=shown, rc=rc, stdout=stdout, stderr=stderr,
            ) from None


def _first_error_line(text):
    """tctl prints ``ERROR: <message>`` on failure; return that message, else the last line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for line in lines:
        if line.startswith("ERROR:"):
            return line[len("ERROR:"):].strip()
    return lines[-1] if lines else ""


class TctlModule:
    """Base of the modules: subclasses implement :meth:`run` and return the result dict.

    ``run`` computes ``changed`` the same way in check mode and skips only the mutations, so
    ``--check`` predicts a real run. Diffs are added only when the user asked for them.
    """

    def __init__(self, module, tctl=None):
        self.module = module
        self.tctl = tctl or Tctl(module)

    @property
    def check_mode(self):
        return self.module.check_mode

    def diff(self, result, before, after):
        """Attach a before/after diff to ``result`` when ``--diff`` is on."""
        if self.module._diff:
            result["diff"] = dict(before=before, after=after)
        return result

    def find(self, list_args: Sequence[str], matches: Callable[[dict], bool]) -> dict | None:
        """The first record ``tctl <list_args>`` lists for which ``matches(record)`` holds, else None."""
        return next((record for record in self.tctl.run(list_args) if matches(record)), None)

    def remove(
        self,
        existing: dict | None,
        rm_args: Sequence[str],
        view: Callable[[dict | None], dict],
        secrets: Sequence[str] = (),
        stdin: str | None = None,
        **result: Any,
    ) -> dict:
        """``state=absent``: run ``tctl <rm_args>`` when ``existing`` is there (not in check mode).

        ``view`` gives the diff's before; ``result`` holds the module's own keys (such as ``name``);
        ``stdin`` is what tctl reads for ``--value-file=-``.
        """
        result.update(changed=existing is not None, state="absent")
        if existing is not None and not self.check_mode:
            self.tctl.run(rm_args, json_output=False, secrets=secrets, stdin=stdin)
        return self.diff(result, view(existing), {})

    def run(self):
        raise NotImplementedError

    def execute(self):
        try:
            result = self.run()
        except TctlError as exc:
            self.module.fail_json(msg=exc.message, **exc.details())
        self.module.exit_json(**result)

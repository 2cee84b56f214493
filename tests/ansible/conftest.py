"""Fixtures for the collection's module unit tests.

The modules import ``ansible_collections.teleport_access.cluster...``; the collection loader is
pointed at ``playbooks/collections`` (a link to the repository root), as ansible-test does for a
collection checked out elsewhere. ``FakeCluster`` stands in for tctl at the one boundary the
modules have: ``AnsibleModule.run_command``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from teleport_runtime import rotation_phases

REPO = Path(__file__).resolve().parents[2]


def _install_collection_finder() -> None:
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    _AnsibleCollectionFinder(paths=[str(REPO / "playbooks" / "collections")])._install()


_install_collection_finder()

PIN = "sha256:" + "ab" * 32
NEW_PIN = "sha256:" + "cd" * 32
SIGNUP_TOKEN = "5e" * 16
#: The phases the fake auth service allows next: the runtime's table.
ALLOWED_NEXT = {p.value: [n.value for n in nexts] for p, nexts in rotation_phases.ALLOWED_NEXT.items()}


class ModuleExit(Exception):
    def __init__(self, result: dict, failed: bool) -> None:
        super().__init__(result.get("msg", ""))
        self.result = result
        self.failed = failed


class FakeTctlError(Exception):
    """What the fake auth service refuses (tctl exits 1 with ERROR: ...)."""


class FakeCluster:
    """A tiny in-memory cluster answering tctl's JSON contract, recording every argv.

    Its answers have the shape of the real tctl's: test_fake_cluster_contract.py compares them.
    """

    def __init__(self) -> None:
        self.tokens: list[dict] = []
        self.users: list[dict] = []
        self.roles: list[dict] = []
        self.nodes: list[dict] = []
        self.proxies: list[dict] = []
        self.pins = [PIN]
        self.cas = [
            {"type": "host", "created": "2025-01-01T00:00:00+00:00", "rotation": self.standby_rotation()},
            {"type": "user", "created": "2025-01-01T00:00:00+00:00",
             "rotation": dict(self.standby_rotation(), state="in_progress", phase="init", mode="manual", id="r1",
                              current_id="r1", started="2025-01-02T00:00:00+00:00",
                              phase_changed="2025-01-02T00:00:00+00:00")},
        ]
        self.calls: list[list[str]] = []
        #: What each call wrote to tctl's stdin (None: nothing).
        self.stdin: list[str | None] = []
        self.fail_with: tuple[int, str] = (0, "")

    def __call__(self, module, args, **kwargs):  # AnsibleModule.run_command signature
        argv = list(args) if isinstance(args, list) else shlex.split(args)
        self.calls.append(argv)
        self.stdin.append(kwargs.get("data"))
        rc, msg = self.fail_with
        if rc:
            return rc, "", f"ERROR: {msg}\n"
        words = [a for a in argv[1:] if a != "--format=json"]
        while words and words[0] in ("--config", "--auth-server"):  # global options
            words = words[2:]
        handler = getattr(self, "_".join(w for w in words[:2] if not w.startswith("-")).replace("-", "_"), None)
        if handler is None:
            handler = getattr(self, words[0])
        try:
            out = handler(words)
        except FakeTctlError as exc:
            return 1, "", f"ERROR: {exc}\n"
        return 0, out if isinstance(out, str) else json.dumps(out), ""

    @staticmethod
    def standby_rotation() -> dict:
        """A CA's rotation as tctl shows it before any rotation."""
        return {"state": "standby", "phase": "standby", "mode": "", "id": "", "current_id": None, "started": None,
                "grace_period": None, "schedule": {}, "phase_changed": None, "last_rotated": None}

    @staticmethod
    def node_record(hostname: str, role: str = "Node", **fields) -> dict:
        """A node (``tctl nodes ls``) or proxy (``tctl get proxies``) as tctl lists it."""
        record = {
            "id": f"{hostname}-uuid", "hostname": hostname, "addr": "127.0.0.2:3022", "static_labels": {},
            "command_labels": {}, "roles": [role],
            "rotation": {"host": {"phase": "standby", "id": ""}, "user": {"phase": "standby", "id": ""}},
            "version": "0.1.0", "web_addr": "", "ssh_addr": "", "last_heartbeat": "2030-01-01T00:00:00+00:00",
            "expires": "2030-01-01T00:10:00+00:00", "labels": {}, "tunnel": False, "sub_kind": "teleport",
        }
        record.update(fields)
        return record

    @staticmethod
    def _flag(words, name):
        for w in words:
            if w.startswith(name + "="):
                return w.split("=", 1)[1]
        return None

    def _value(self, words, flag):
        """A token value as tctl reads it: ``flag=VALUE`` or ``--value-file=-`` and stdin."""
        if self._flag(words, "--value-file") == "-":
            return (self.stdin[-1] or "").removesuffix("\n")
        return self._flag(words, flag)

    def status(self, words):
        return {"cluster": "example.test", "version": "0.1.0", "ca_pins": list(self.pins),
                "cas": json.loads(json.dumps(self.cas)), "proxy_listener_mode": "separate"}

    def ca(self, ca_type: str) -> dict:
        return next(ca for ca in self.cas if ca["type"] == ca_type)

    def auth_rotate(self, words):
        ca = self.ca(self._flag(words, "--type"))
        rotation = ca["rotation"]
        phase = self._flag(words, "--phase") or "init"
        if phase not in ALLOWED_NEXT[rotation["phase"]]:
            raise FakeTctlError(f"cannot move from {rotation['phase']} to {phase}")
        if phase == "init":
            grace = self._flag(words, "--grace-period")
            rotation.update(id="r2", current_id="r2", started="2030-01-01T00:00:00+00:00",
                            mode="manual" if "--manual" in words else "auto", grace_period=grace,
                            schedule={} if "--manual" in words else {
                                "update_clients": "2030-01-01T10:00:00+00:00",
                                "update_servers": "2030-01-01T20:00:00+00:00",
                                "standby": "2030-01-02T06:00:00+00:00"})
            if ca["type"] == "host":
                self.pins = [PIN, NEW_PIN]
        if phase == "standby":
            if rotation["phase"] == "update_servers":
                rotation["last_rotated"] = "2030-01-01T01:00:00+00:00"
                ca["created"] = "2030-01-01T00:00:00+00:00"
                if ca["type"] == "host":
                    self.pins = [NEW_PIN]
            elif ca["type"] == "host":
                self.pins = [PIN]
            rotation.update(mode="", schedule={})
        elif "--manual" in words or phase == "rollback":
            rotation.update(mode="manual", schedule={})
        rotation.update(phase=phase, state="standby" if phase == "standby" else "in_progress",
                        phase_changed="2030-01-01T00:30:00+00:00")
        return dict(rotation)

    def get_proxies(self, words):
        return self.proxies

    def tokens_ls(self, words):
        return self.tokens

    def tokens_add(self, words):
        value = self._value(words, "--value") or "f" * 32
        roles = self._flag(words, "--type").split(",")
        self.tokens = [t for t in self.tokens if t["token"] != value]
        token = {"token": value, "roles": roles, "expires": "2030-01-01T00:30:00+00:00", "static": False}
        self.tokens.append(token)
        return dict(token, ca_pins=[PIN], auth_server="auth1:3025",
                    join_command=f"teleport start --token={value}")

    def tokens_rm(self, words):
        value = self._value(words, "--value") or words[2]
        self.tokens = [t for t in self.tokens if t["token"] != value]
        return "The token has been deleted\n"

    def nodes_ls(self, words):
        return self.nodes

    def users_ls(self, words):
        return self.users

    def users_add(self, words):
        user = {"name": words[2], "roles": self._flag(words, "--roles").split(","),
                "logins": self._flag(words, "--logins").split(","), "status": "pending signup",
                "created": "2030-01-01T00:00:00+00:00"}
        self.users.append(user)
        return {"user": user["name"], "token": SIGNUP_TOKEN, "expires": "2030-01-01T01:00:00+00:00"}

    def users_update(self, words):
        user = next(u for u in self.users if u["name"] == words[2])
        user["roles"] = self._flag(words, "--set-roles").split(",")
        user["logins"] = self._flag(words, "--set-logins").split(",")
        return f"User {words[2]!r} has been updated\n"

    def users_rm(self, words):
        self.users = [u for u in self.users if u["name"] != words[2]]
        return f"User {words[2]!r} has been deleted\n"

    def get_roles(self, words):
        """The roles as created (``self.roles`` keeps what the modules sent), in the form the
        cluster lists them: every spec part present, a one-value label selector as a scalar."""
        listed = json.loads(json.dumps(self.roles))
        for resource in listed:
            spec = resource.setdefault("spec", {})
            for part in ("allow", "deny", "options"):
                spec.setdefault(part, {})
                labels = spec[part].get("node_labels") if part != "options" else None
                if isinstance(labels, dict):
                    spec[part]["node_labels"] = {k: v[0] if isinstance(v, list) and len(v) == 1 else v
                                                 for k, v in labels.items()}
        return listed

    def create(self, words):
        resource = json.loads(Path(words[-1]).read_text())
        self.roles = [r for r in self.roles if r["metadata"]["name"] != resource["metadata"]["name"]]
        self.roles.append(resource)
        return "role {!r} has been created\n".format(resource["metadata"]["name"])

    def rm(self, words):
        name = words[1].split("/", 1)[1]
        self.roles = [r for r in self.roles if r["metadata"]["name"] != name]
        return f"role {name!r} has been deleted\n"

    def mutations(self) -> list[list[str]]:
        """Calls that change the cluster (everything but reads)."""
        reads = {("tokens", "ls"), ("users", "ls"), ("nodes", "ls"), ("get", "roles"), ("get", "proxies"),
                 ("status",)}
        out = []
        for argv in self.calls:
            words = [a for a in argv[1:] if not a.startswith("-")]
            if tuple(words[:2]) not in reads and tuple(words[:1]) not in reads:
                out.append(argv)
        return out


@pytest.fixture
def cluster(monkeypatch):
    from ansible.module_utils import basic

    fake = FakeCluster()

    def exit_json(self, **kwargs):
        raise ModuleExit(kwargs, failed=False)

    def fail_json(self, **kwargs):
        raise ModuleExit(kwargs, failed=True)

    def run_command(self, args, **kwargs):
        return fake(self, args, **kwargs)

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    return fake


@pytest.fixture
def run_module(cluster, tmp_path):
    """Run a module's main() with these args; returns (result, failed)."""
    from ansible.module_utils.testing import patch_module_args

    def run(module, args, check=False, diff=False, no_log=False):
        args = dict(args, tctl_path="/usr/local/bin/tctl", _ansible_check_mode=check,
                    _ansible_diff=diff, _ansible_no_log=no_log, _ansible_tmpdir=str(tmp_path))
        with patch_module_args(args), pytest.raises(ModuleExit) as exc:
            module.main()
        return exc.value.result, exc.value.failed

    return run

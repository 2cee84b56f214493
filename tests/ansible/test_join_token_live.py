"""join_token against a real auth service through the real tctl: the token value reaches tctl on
stdin (``--value-file=-``) and never its argv, which every local user of the auth host can read."""

from __future__ import annotations

import os
import subprocess

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.teleport_access.cluster.plugins.modules import join_token

from tests.conftest import TCTL

from .conftest import ModuleExit

VALUE = "live0123456789abcdef0123456789ab"


@pytest.fixture
def argvs(monkeypatch):
    """Every argv the module starts."""
    seen: list[list[str]] = []
    real = subprocess.Popen

    class Recording(real):  # type: ignore[misc,valid-type]
        def __init__(self, args, *rest, **kwargs):
            seen.append([os.fsdecode(a) for a in args] if isinstance(args, (list, tuple)) else [os.fsdecode(args)])
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    return seen


def run(auth, args, monkeypatch, tmp_path):
    def exit_json(self, **kwargs):
        raise ModuleExit(kwargs, failed=False)

    def fail_json(self, **kwargs):
        raise ModuleExit(kwargs, failed=True)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    args = dict(args, tctl_path=TCTL, tctl_config=str(auth.config_path), _ansible_tmpdir=str(tmp_path))
    with patch_module_args(args), pytest.raises(ModuleExit) as exc:
        join_token.main()
    return exc.value.result, exc.value.failed


def test_token_value_goes_to_tctl_on_stdin_never_argv(cluster_factory, argvs, monkeypatch, tmp_path):
    auth = cluster_factory()
    result, failed = run(auth, {"value": VALUE, "roles": ["node", "proxy"], "ttl": "5m"}, monkeypatch, tmp_path)
    assert not failed, result
    assert result["changed"] is True and result["token"] == VALUE
    listed = {t["token"]: t for t in auth.tctl_json("tokens", "ls")}
    assert sorted(listed[VALUE]["roles"]) == ["node", "proxy"]

    result, failed = run(auth, {"value": VALUE, "state": "absent"}, monkeypatch, tmp_path)
    assert not failed and result["changed"] is True, result
    assert VALUE not in {t["token"] for t in auth.tctl_json("tokens", "ls")}

    tctl_runs = [argv for argv in argvs if any(a.endswith("tctl") for a in argv)]
    assert any("add" in argv for argv in tctl_runs) and any("rm" in argv for argv in tctl_runs)
    assert not any(VALUE in arg for argv in argvs for arg in argv), argvs


def test_tctl_value_file_from_a_file_and_refusals(cluster_factory, tmp_path):
    auth = cluster_factory()
    path = tmp_path / "value"
    path.write_text(VALUE + "\n")
    path.chmod(0o600)
    created = auth.tctl_json("nodes", "add", "--roles=node", f"--value-file={path}")
    assert created["token"] == VALUE
    both = auth.tctl("tokens", "add", "--value=x", f"--value-file={path}", check=False)
    assert both.returncode == 1 and "--value and --value-file" in both.stderr
    missing = auth.tctl("tokens", "rm", check=False)
    assert missing.returncode == 1 and "--value-file" in missing.stderr
    removed = auth.tctl("tokens", "rm", f"--value-file={path}")
    assert VALUE not in removed.stdout
    assert VALUE not in {t["token"] for t in auth.tctl_json("tokens", "ls")}

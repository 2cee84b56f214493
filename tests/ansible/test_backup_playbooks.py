"""playbooks/backup.yml and restore.yml run with ansible-playbook against a real cluster on this
machine (a local connection; the auth host's tctl is this checkout's): backups fetched mode 0600
into a directory kept at N files, the copy on the auth host removed; a restore into an empty
storage; a second restore refused (the storage is not empty) unless forced."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from teleport_runtime.backend import snapshot
from tests.conftest import TCTL

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


def playbook(tmp_path: Path, name: str, **extra: Any) -> subprocess.CompletedProcess[str]:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"teleport_auth": {"hosts": {"auth1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
    }}}}}}))
    extra = {"teleport_tctl_path": TCTL, "teleport_backup_remote_dir": str(tmp_path / "remote"), **extra}
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [PLAYBOOK, "-i", str(inventory), str(REPO / "playbooks" / name), "-e", json.dumps(extra)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False,
    )


def test_backup_keeps_n_private_copies_and_restore_refuses_a_non_empty_storage(cluster_factory, tmp_path):
    cluster = cluster_factory()
    cluster.tctl("users", "add", "alice", "--roles=access", "--logins=root")
    backups = tmp_path / "backups"
    for _run in range(3):
        result = playbook(tmp_path, "backup.yml", teleport_tctl_config=str(cluster.config_path),
                          teleport_backup_dir=str(backups), teleport_backup_keep=2)
        assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(backups.glob("teleport-backup-*.json"))
    assert len(files) == 2
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert list((tmp_path / "remote").iterdir()) == []  # nothing left on the auth host
    taken = snapshot.read(files[-1])
    keys = {item.key: item.value for item in taken.items}
    assert "/authorities/host" in keys and "/users/alice" in keys

    # Into a new auth host's empty storage (SQLite in its data dir).
    target = tmp_path / "target.yaml"
    config = yaml.safe_load(cluster.config_path.read_text())
    config["teleport"]["data_dir"] = str(tmp_path / "target-data")
    target.write_text(yaml.safe_dump(config))
    restore = {"teleport_tctl_config": str(target), "teleport_restore_file": str(files[-1]),
               "teleport_restore_manage_service": False}
    result = playbook(tmp_path, "restore.yml", **restore)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restored" in result.stdout
    again = subprocess.run([TCTL, "-c", str(target), "backup", "create", str(tmp_path / "check.json")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    restored = {item.key: item.value for item in snapshot.read(tmp_path / "check.json").items}
    assert restored["/authorities/host"] == keys["/authorities/host"]
    assert list((tmp_path / "remote").iterdir()) == []

    refused = playbook(tmp_path, "restore.yml", **restore)
    assert refused.returncode != 0
    assert "not empty" in refused.stdout and "teleport_restore_force=true" in refused.stdout
    forced = playbook(tmp_path, "restore.yml", **restore, teleport_restore_force=True)
    assert forced.returncode == 0, forced.stdout + forced.stderr

    missing = playbook(tmp_path, "restore.yml", teleport_tctl_config=str(target),
                       teleport_restore_manage_service=False)
    assert missing.returncode != 0 and "Name the backup to restore" in missing.stdout

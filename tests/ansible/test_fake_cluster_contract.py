"""The module tests' FakeCluster answers as the real tctl does: each tctl command the fake imitates
runs against a real auth service (with a proxy and a node joined) and against the fake, with the
argv the modules use, and the answers must have the same shape (JSON keys and value types) or,
for a text answer, the same text. A change to tctl's output fails here before the module tests
drift from it.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.conftest import TCTL

from .conftest import FakeCluster

VALUE = "contract0123456789abcdef01234567"
ROLE = {"kind": "role", "version": "v1", "metadata": {"name": "dev", "description": "Developers"},
        "spec": {"allow": {"logins": ["dev"], "node_labels": {"env": ["dev"]}},
                 "options": {"max_session_ttl": "8h"}}}


def shape_problems(fake: Any, real: Any, where: str = "$") -> list[str]:
    """Where ``fake`` differs from ``real`` in shape: the keys of objects (an empty object is a map
    that may hold anything), the types of values (``null`` stands for any optional value), the
    shape of list items."""
    if fake is None or real is None:
        return []
    if isinstance(real, dict) and isinstance(fake, dict):
        if not real or not fake:
            return []
        problems = []
        if set(fake) != set(real):
            missing, extra = sorted(set(real) - set(fake)), sorted(set(fake) - set(real))
            problems.append(f"{where}: the fake lacks keys {missing} and has extra keys {extra}")
        for key in sorted(set(fake) & set(real)):
            problems += shape_problems(fake[key], real[key], f"{where}.{key}")
        return problems
    if isinstance(real, list) and isinstance(fake, list):
        problems = []
        for item in fake:
            for other in real[:1]:
                problems += shape_problems(item, other, f"{where}[]")
        return problems
    kinds = {type(fake), type(real)}
    if len(kinds) == 1 or kinds <= {int, float}:
        return []
    return [f"{where}: the fake gives {type(fake).__name__} {fake!r}, tctl {type(real).__name__} {real!r}"]


def test_shape_problems_finds_drift() -> None:
    assert shape_problems({"a": 1, "b": [{"c": "x"}]}, {"a": 2, "b": [{"c": "y"}]}) == []
    assert shape_problems({"a": 1}, {"a": 1, "b": 2}) == ["$: the fake lacks keys ['b'] and has extra keys []"]
    assert shape_problems([{"a": "1"}], [{"a": 1}]) == ["$[].a: the fake gives str '1', tctl int 1"]
    assert shape_problems({"a": None, "m": {}}, {"a": "x", "m": {"k": 1}}) == []


@pytest.fixture
def real(cluster_factory):
    """A real auth service with a proxy and a node joined (as an Ansible-managed cluster has)."""
    auth = cluster_factory()
    auth.start_proxy(auth.add_token("proxy")["token"], name="proxy1")
    auth.start_node("node1", token=auth.add_token("node")["token"], pins=(auth.pin(),))
    tokens = {t["token"] for t in auth.tctl_json("tokens", "ls")}
    for token in tokens:  # the joins' tokens are spent: start from an empty token list as the fake
        auth.tctl("tokens", "rm", f"--value={token}", check=False)
    return auth


def test_fake_cluster_answers_as_tctl_does(real, tmp_path) -> None:
    fake = FakeCluster()
    for ca in fake.cas:
        ca["rotation"] = FakeCluster.standby_rotation()
    fake.nodes = [fake.node_record("node1")]
    fake.proxies = [fake.node_record("proxy1", role="Proxy", web_addr="127.0.0.2:3080")]
    role_file = tmp_path / "role.json"
    role_file.write_text(json.dumps(ROLE))

    # (argv as the modules run it, whether it asks for JSON, what goes to stdin)
    steps: list[tuple[list[str], bool, str | None]] = [
        (["status"], True, None),
        (["nodes", "ls"], True, None),
        (["get", "proxies"], True, None),
        (["tokens", "add", "--type=node,proxy", "--ttl=5m", "--value-file=-"], True, VALUE),
        (["tokens", "ls"], True, None),
        (["tokens", "rm", "--value-file=-"], False, VALUE),
        (["users", "add", "alice", "--roles=access", "--logins=root"], True, None),
        (["users", "ls"], True, None),
        (["users", "update", "alice", "--set-roles=access", "--set-logins=root,ubuntu"], False, None),
        (["users", "ls"], True, None),
        (["users", "rm", "alice"], False, None),
        (["create", "--force", str(role_file)], False, None),
        (["get", "roles"], True, None),
        (["rm", "role/dev"], False, None),
        (["auth", "rotate", "--type=user", "--manual", "--phase=init"], True, None),
        (["auth", "rotate", "--type=host", "--grace-period=30h"], True, None),
        (["status"], True, None),
        (["auth", "rotate", "--type=user", "--manual", "--phase=update_clients"], True, None),
        (["auth", "rotate", "--type=user", "--manual", "--phase=rollback"], True, None),
        (["status"], True, None),
    ]
    problems: list[str] = []
    for args, json_output, stdin in steps:
        argv = [*args, "--format=json"] if json_output else list(args)
        done = subprocess.run([TCTL, "-c", str(real.config_path), *argv], input=stdin, capture_output=True,
                              text=True, cwd=real.root, timeout=60, check=False)
        assert done.returncode == 0, f"tctl {' '.join(argv)}: {done.stderr}"
        rc, out, err = fake(None, [TCTL, *argv], data=stdin)
        assert rc == 0, f"the fake refused tctl {' '.join(argv)}: {err}"
        shown = "tctl " + " ".join(args)
        if not json_output:
            if out != done.stdout:
                problems.append(f"{shown}: the fake prints {out!r}, tctl {done.stdout!r}")
            continue
        real_answer, fake_answer = json.loads(done.stdout), json.loads(out)
        if args == ["get", "roles"]:  # the presets are the cluster's own: compare the role created
            real_answer = [r for r in real_answer if r["metadata"]["name"] == "dev"]
        problems += [f"{shown}: {p}" for p in shape_problems(fake_answer, real_answer)]
    assert problems == []

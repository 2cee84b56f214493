"""The lock files: every pin hashed, the runtime lock (the hosts' wheelhouse) a subset of the full
lock (scripts/setup) with the same hashes, and both inside pyproject.toml's ranges."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def read_lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of a ``--generate-hashes`` requirements file."""
    text = (REPO / name).read_text()
    entries = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.split()[0] if block.strip() else ""
        if "==" not in head:
            continue
        project, version = head.split("==")
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
        assert canonicalize_name(project) not in entries, f"{name}: {project} pinned twice"
        entries[canonicalize_name(project)] = (version, hashes)
    return entries


def test_every_pin_has_hashes():
    for name in ("requirements.lock", "requirements-runtime.lock"):
        lock = read_lock(name)
        assert lock, name
        for project, (_version, hashes) in lock.items():
            assert hashes, f"{name}: {project} has no --hash"


def test_runtime_lock_is_the_full_locks_runtime_part():
    full, runtime = read_lock("requirements.lock"), read_lock("requirements-runtime.lock")
    for project, pin in runtime.items():
        assert full.get(project) == pin, f"{project}: {pin[0]} in the runtime lock, {full.get(project)} in the full"


def test_locks_pin_what_pyproject_allows():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime, full = read_lock("requirements-runtime.lock"), read_lock("requirements.lock")
    for spec in project["dependencies"]:
        req = Requirement(spec)
        version = runtime[canonicalize_name(req.name)][0]
        assert req.specifier.contains(version), f"{req.name}=={version} is outside {spec}"
    for spec in project["optional-dependencies"]["test"]:
        req = Requirement(spec)
        version = full[canonicalize_name(req.name)][0]
        assert req.specifier.contains(version), f"{req.name}=={version} is outside {spec}"


def test_asyncssh_is_capped():
    """The runtime subclasses asyncssh internals: a new minor release must be tested first."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (spec,) = [Requirement(s) for s in project["dependencies"] if s.startswith("asyncssh")]
    assert any(clause.operator == "<" for clause in spec.specifier)

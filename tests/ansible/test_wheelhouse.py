"""The runtime role's wheelhouse builder takes only the wheels the runtime lock names, with its hashes."""

from __future__ import annotations

import hashlib
import importlib.util
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("build_wheelhouse", REPO / "roles/runtime/files/build_wheelhouse.py")
assert spec and spec.loader
build_wheelhouse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_wheelhouse)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def wheels(tmp_path):
    directory = tmp_path / "wheels"
    directory.mkdir()
    (directory / "segno-1.6.6-py3-none-any.whl").write_bytes(b"the locked segno wheel")
    (directory / "teleport_runtime-0.1.0-py3-none-any.whl").write_bytes(b"the runtime")
    lock = tmp_path / "requirements-runtime.lock"
    lock.write_text(f"segno==1.6.6 \\\n    --hash=sha256:{sha256(b'the locked segno wheel')}\n    # via x\n")
    return directory, lock


def test_locked_wheels_pass(wheels):
    directory, lock = wheels
    names = sorted(p.name for p in directory.iterdir())
    build_wheelhouse.check_wheels(str(directory), names, build_wheelhouse.read_lock(str(lock)))


def test_a_wheel_with_other_bytes_is_refused(wheels):
    """A cache or index that serves other bytes under the locked name does not reach the hosts."""
    directory, lock = wheels
    (directory / "segno-1.6.6-py3-none-any.whl").write_bytes(b"tampered")
    names = sorted(p.name for p in directory.iterdir())
    with pytest.raises(SystemExit, match="does not match any hash"):
        build_wheelhouse.check_wheels(str(directory), names, build_wheelhouse.read_lock(str(lock)))


def test_an_unlocked_version_or_a_missing_wheel_is_refused(wheels):
    directory, lock = wheels
    (directory / "segno-1.6.6-py3-none-any.whl").rename(directory / "segno-1.7.0-py3-none-any.whl")
    pins = build_wheelhouse.read_lock(str(lock))
    with pytest.raises(SystemExit, match="not what the lock pins"):
        build_wheelhouse.check_wheels(str(directory), sorted(p.name for p in directory.iterdir()), pins)
    (directory / "segno-1.7.0-py3-none-any.whl").unlink()
    with pytest.raises(SystemExit, match="no wheel for segno"):
        build_wheelhouse.check_wheels(str(directory), sorted(p.name for p in directory.iterdir()), pins)


def test_a_lock_without_hashes_is_refused(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("segno==1.6.6\n")
    with pytest.raises(SystemExit, match="no --hash"):
        build_wheelhouse.read_lock(str(lock))


def test_the_archive_is_reproducible(wheels, tmp_path):
    directory, _lock = wheels
    names = sorted(p.name for p in directory.iterdir())
    build_wheelhouse.write_archive(str(directory), names, str(tmp_path / "a.tar"))
    build_wheelhouse.write_archive(str(directory), names, str(tmp_path / "b.tar"))
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert tar.getnames() == names


def test_the_wheels_tags_name_the_hosts_they_run_on():
    """Only major.minor was compared: an x86_64 controller's wheels went to arm64 hosts."""
    names = [
        "aiohttp-3.9.5-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "cryptography-42.0.8-cp39-abi3-manylinux_2_28_x86_64.whl",
        "segno-1.6.6-py3-none-any.whl",
        "teleport_runtime-0.1.0-py3-none-any.whl",
    ]
    assert build_wheelhouse.wheel_targets(names) == {"pythons": ["3.11"], "machines": ["x86_64"]}
    arm = ["aiohttp-3.9.5-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"]
    assert build_wheelhouse.wheel_targets(arm) == {"pythons": ["3.12"], "machines": ["aarch64"]}
    assert build_wheelhouse.wheel_targets(names[2:]) == {"pythons": [], "machines": []}

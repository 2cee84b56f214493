# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Build the runtime's wheelhouse on the controller, as one reproducible archive.

The hosts install the runtime offline from this archive (pip --no-index --find-links), so they
need no package index. The dependencies are exactly the wheels that the hash-pinned lock file
(requirements-runtime.lock) names: pip checks each download against the lock's sha256 hashes,
this script checks every wheel again before it goes into the archive, and the lock goes in too,
so the hosts install with --require-hashes. The same sources and lock give a byte-identical
archive, which is what lets a re-run of the playbook report no change.

Prints one JSON object: {"archive", "sha1", "sha256", "wheels", "runtime_wheel"}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

#: Fixed timestamps: the project wheel (SOURCE_DATE_EPOCH, zip cannot go before 1980) and the tar.
WHEEL_EPOCH = "315532800"
#: The lock's name inside the archive (the role installs with -r this).
LOCK_NAME = "requirements.lock"
SOURCE_IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".venv*", ".git", "tests", "bench",
    "molecule", "roles", "playbooks", "plugins", "inventory", ".ci", ".cache", ".ansible",
)


def digest(path, algorithm):
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def stage_source(source, staging):
    """Copy only what building the package needs, so no stale build/ in the checkout leaks in."""
    for name in ("pyproject.toml", "README.md", "setup.cfg", "setup.py", "LICENSE"):
        if os.path.exists(os.path.join(source, name)):
            shutil.copy2(os.path.join(source, name), staging)
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if name.startswith("teleport_runtime") and os.path.isdir(path) and not name.endswith(".egg-info"):
            shutil.copytree(path, os.path.join(staging, name), ignore=SOURCE_IGNORE)


def canonical(name: str) -> str:
    """A project name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> dict[str, tuple[str, set[str]]]:
    """project -> (version, sha256 hashes) of a requirements file made with --generate-hashes."""
    pins: dict[str, tuple[str, set[str]]] = {}
    with open(path) as handle:
        text = handle.read()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", block)
        if match:
            hashes = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
            if not hashes:
                raise SystemExit("%s: %s has no --hash: regenerate the lock with scripts/lock" % (path, match.group(1)))
            pins[canonical(match.group(1))] = (match.group(2), hashes)
    if not pins:
        raise SystemExit("%s pins nothing: point runtime_requirements_lock at requirements-runtime.lock" % path)
    return pins


def check_wheels(directory: str, names: list[str], pins: dict[str, tuple[str, set[str]]]) -> None:
    """Every dependency wheel is the locked version with a locked hash, and none is missing."""
    seen = set()
    for name in names:
        project, version = name.split("-")[:2]
        project = canonical(project)
        if project == "teleport-runtime":
            continue
        if project not in pins or pins[project][0] != version:
            raise SystemExit("%s is not what the lock pins (%s)" % (name, pins.get(project, ("nothing",))[0]))
        if digest(os.path.join(directory, name), "sha256") not in pins[project][1]:
            raise SystemExit("%s does not match any hash the lock has for %s==%s" % (name, project, version))
        seen.add(project)
    missing = sorted(set(pins) - seen)
    if missing:
        raise SystemExit("no wheel for %s from the lock" % ", ".join(missing))


def run_pip(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip"] + args
    env = dict(os.environ, SOURCE_DATE_EPOCH=WHEEL_EPOCH, PYTHONHASHSEED="0")
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    if done.returncode != 0:
        raise SystemExit("%s failed (exit %d):\n%s%s" % (" ".join(cmd), done.returncode, done.stdout, done.stderr))


def build(args: argparse.Namespace) -> dict:
    source = os.path.realpath(args.source)
    if not os.path.exists(os.path.join(source, "pyproject.toml")):
        raise SystemExit("%s has no pyproject.toml: set runtime_source to the runtime's source tree" % source)
    lock = os.path.realpath(args.lock)
    pins = read_lock(lock)
    os.makedirs(args.cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix="teleport-wheelhouse-")
    try:
        staging = os.path.join(work, "src")
        wheels = os.path.join(work, "wheels")
        os.makedirs(staging)
        os.makedirs(wheels)
        stage_source(source, staging)
        common = ["wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", wheels] + (args.pip_arg or [])
        # The runtime itself, then exactly the locked dependency wheels (hash-checked by pip; only
        # binary wheels, so the hosts get the very files whose hashes the lock holds).
        run_pip(common + ["--no-deps", staging])
        run_pip(common + ["--no-deps", "--require-hashes", "--only-binary=:all:", "--find-links", args.cache,
                          "-r", lock])
        names = sorted(n for n in os.listdir(wheels) if n.endswith(".whl"))
        check_wheels(wheels, names, pins)
        for name in names:  # keep dependency wheels for the next build
            if not name.startswith("teleport_runtime-"):
                shutil.copy2(os.path.join(wheels, name), os.path.join(args.cache, name))
        shutil.copyfile(lock, os.path.join(wheels, LOCK_NAME))
        archive = os.path.abspath(args.archive)
        os.makedirs(os.path.dirname(archive), exist_ok=True)
        write_archive(wheels, names + [LOCK_NAME], archive + ".tmp")
        os.replace(archive + ".tmp", archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runtime_wheel = [n for n in names if n.startswith("teleport_runtime-")]
    return dict(archive=archive, sha1=digest(archive, "sha1"), sha256=digest(archive, "sha256"), wheels=names,
                runtime_wheel=runtime_wheel[0], **wheel_targets(names))


def wheel_targets(names: list[str]) -> dict:
    """What hosts the binary wheels can run on, from their file names (PEP 427 tags):
    {"pythons": ["3.11"], "machines": ["x86_64"]}; pure wheels (py3-none-any) add nothing."""
    pythons, machines = set(), set()
    for name in names:
        parts = name[:-len(".whl")].split("-")
        if len(parts) < 5:
            continue
        python_tag, abi_tag, platform_tag = parts[-3:]
        if platform_tag == "any":
            continue
        for tag in abi_tag.split("."):
            match = re.fullmatch(r"cp(3)(\d+)", tag)
            if match:
                pythons.add("%s.%s" % match.groups())
        for tag in platform_tag.split("."):
            match = re.fullmatch(r"(?:many|musl)?linux(?:1|2010|2014|_\d+_\d+)?_(\w+)", tag)
            if match:
                machines.add(match.group(1))
        if abi_tag == "abi3" or abi_tag == "none":
            for tag in python_tag.split("."):
                match = re.fullmatch(r"cp3(\d+)", tag)
                if match and abi_tag == "none":
                    pythons.add("3.%s" % match.group(1))
    return dict(pythons=sorted(pythons), machines=sorted(machines))


def write_archive(directory, names, path):
    """An uncompressed tar (wheels are compressed already) with fixed owners, modes and times."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(os.path.join(directory, name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            info.mtime = 0
            with open(os.path.join(directory, name), "rb") as handle:
                tar.addfile(info, handle)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the runtime's source tree (has pyproject.toml)")
    parser.add_argument("--archive", required=True, help="where to write the wheelhouse tar")
    parser.add_argument("--cache", required=True, help="dependency wheels kept between builds")
    parser.add_argument("--lock", required=True, help="hash-pinned requirements of the runtime (requirements-runtime.lock)")
    parser.add_argument("--pip-arg", action="append", help="extra pip wheel argument (repeatable)")
    print(json.dumps(build(parser.parse_args())))


if __name__ == "__main__":
    main()

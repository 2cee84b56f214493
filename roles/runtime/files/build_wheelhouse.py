# Copyright: teleport-access maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Build the runtime's wheelhouse on the controller, as one reproducible archive.

The hosts install the runtime offline from this archive (pip --no-index --find-links), so they
need no package index. The same sources and dependency versions give a byte-identical archive,
which is what lets a re-run of the playbook report no change.

Prints one JSON object: {"archive", "sha1", "sha256", "wheels"}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

#: Fixed timestamps: the project wheel (SOURCE_DATE_EPOCH, zip cannot go before 1980) and the tar.
WHEEL_EPOCH = "315532800"
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


def build(args):
    source = os.path.realpath(args.source)
    if not os.path.exists(os.path.join(source, "pyproject.toml")):
        raise SystemExit("%s has no pyproject.toml: set runtime_source to the runtime's source tree" % source)
    os.makedirs(args.cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix="teleport-wheelhouse-")
    try:
        staging = os.path.join(work, "src")
        wheels = os.path.join(work, "wheels")
        os.makedirs(staging)
        os.makedirs(wheels)
        stage_source(source, staging)
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
               "--prefer-binary", "--wheel-dir", wheels, "--find-links", args.cache]
        for constraint in args.constraint or []:
            cmd += ["--constraint", constraint]
        cmd += args.pip_arg or []
        cmd.append(staging)
        env = dict(os.environ, SOURCE_DATE_EPOCH=WHEEL_EPOCH, PYTHONHASHSEED="0")
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, check=False)
        if done.returncode != 0:
            raise SystemExit("pip wheel failed (exit %d):\n%s%s" % (done.returncode, done.stdout, done.stderr))
        names = sorted(n for n in os.listdir(wheels) if n.endswith(".whl"))
        for name in names:  # keep dependency wheels for the next build
            if not name.startswith("teleport_runtime-"):
                shutil.copy2(os.path.join(wheels, name), os.path.join(args.cache, name))
        archive = os.path.abspath(args.archive)
        os.makedirs(os.path.dirname(archive), exist_ok=True)
        write_archive(wheels, names, archive + ".tmp")
        os.replace(archive + ".tmp", archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dict(archive=archive, sha1=digest(archive, "sha1"), sha256=digest(archive, "sha256"), wheels=names)


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
    parser.add_argument("--constraint", action="append", help="pip constraints file (repeatable)")
    parser.add_argument("--pip-arg", action="append", help="extra pip wheel argument (repeatable)")
    print(json.dumps(build(parser.parse_args())))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Prepare this machine for the collection's tests, without touching /etc or the caller's
# environment:
#   1. builds the Molecule base image (skipped when it exists),
#   2. puts a stand-in for ansible-test's pip bootstrap script in its cache
#      (~/.ansible/test/cache/get_pip_<version>.py): the script is normally downloaded from a
#      CI file host that the project's machines cannot reach; the stand-in bootstraps pip with
#      ensurepip and installs the same packages from the package index,
#   3. prints the CONTAINERS_CONF path to use, and only that, on stdout.
#
# Usage: export CONTAINERS_CONF="$(molecule/setup-host.sh)"
# Env:   PYTHON  interpreter that has ansible-core installed (default: .venv/bin/python of the repo,
#                else python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
conf="$here/containers.conf"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi

CONTAINERS_CONF="$conf" "$here/base-image/build.sh" >&2

# The pip version ansible-test bootstraps follows ansible-core (24.2 for 2.19); read it from the
# installed ansible-test so the file name stays right when ansible-core moves.
pip_version="$("$PYTHON" - <<'PY'
import os, re
import ansible_test
src = os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")
with open(src, encoding="utf-8") as f:
    m = re.search(r"pip='([0-9.]+)'", f.read())
print(m.group(1) if m else "24.2")
PY
)"
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
mkdir -p "$(dirname "$cache")"
cat > "$cache" <<'PY'
"""Stand-in for get-pip.py: bootstrap pip from ensurepip, then install the requested packages.

Written by molecule/setup-host.sh. ansible-test runs it as `python get_pip.py <pip install args>`;
--no-setuptools and --no-wheel are get-pip options that pip install does not know.
"""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
PY
echo "ansible-test pip bootstrap stand-in: $cache" >&2

echo "$conf"

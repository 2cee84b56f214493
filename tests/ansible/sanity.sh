#!/usr/bin/env bash
# ansible-test sanity on the collection's Ansible content, without containers.
# ansible-test needs the collection at .../ansible_collections/<namespace>/<name>; this copies the
# collection's own files there (not the runtime's Python package, which has its own lint and
# tests) and runs the sanity tests with Python 3.11.
# Needs: ansible-core on PATH, and molecule/setup-host.sh run once (its pip bootstrap stand-in).
# Usage: tests/ansible/sanity.sh [ansible-test sanity args...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/teleport_access/cluster"
mkdir -p "$dest"

cd "$repo"
git ls-files -z --cached --others --exclude-standard -- \
        galaxy.yml meta plugins roles playbooks inventory molecule tests/ansible ansible.cfg README.md \
    | grep -zv '^playbooks/collections/' \
    | xargs -0 -I{} cp --parents -P {} "$dest/"

# The ignore file lives with the collection's tests (tests/sanity/ belongs to the runtime's
# suite); each entry says why.
mkdir -p "$dest/tests/sanity"
cp "$repo"/tests/ansible/sanity/ignore-*.txt "$dest/tests/sanity/"

cd "$dest"
git init -q . && git add -A   # ansible-test lists a collection's files from git when it can
ansible-test sanity --python 3.11 --requirements --color no "$@"

"""The built collection tarball carries what Galaxy and users need: the license, the changelog,
galaxy.yml's links, and no checkout-only files."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GALAXY = Path(sys.executable).parent / "ansible-galaxy"

pytestmark = pytest.mark.skipif(not GALAXY.exists(), reason="ansible-galaxy is not installed")


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("build")
    subprocess.run([str(GALAXY), "collection", "build", str(REPO), "--output-path", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    (tarball,) = out.glob("teleport_access-cluster-*.tar.gz")
    with tarfile.open(tarball) as tar:
        return set(tar.getnames())


def test_license_changelog_and_playbooks_are_in_the_tarball(members):
    for name in ("LICENSE", "CHANGELOG.rst", "changelogs/changelog.yaml", "changelogs/config.yaml",
                 "playbooks/site.yml", "playbooks/upgrade.yml", "playbooks/decommission.yml",
                 "playbooks/rotate_ca.yml", "meta/runtime.yml", "requirements-runtime.lock"):
        assert name in members, name
    assert not any(m.startswith(("tests/", ".git/", "bench/", "playbooks/collections")) for m in members)


def test_galaxy_metadata_links_and_license():
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    for key in ("repository", "documentation", "homepage", "issues"):
        assert str(galaxy.get(key, "")).startswith("https://"), key
    assert galaxy["license_file"] == "LICENSE" and "Apache License" in (REPO / "LICENSE").read_text()


def test_the_installed_ansible_core_meets_requires_ansible():
    from ansible.module_utils.compat.version import LooseVersion
    from ansible.release import __version__

    spec = yaml.safe_load((REPO / "meta/runtime.yml").read_text())["requires_ansible"]
    floor = spec.split(">=", 1)[1].split(",")[0].strip()
    assert LooseVersion(__version__) >= LooseVersion(floor)

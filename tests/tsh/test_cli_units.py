"""tsh pieces without a cluster: argument parsing, the scp plan, profile storage, the OpenSSH
config text, and usage errors as one ERROR line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from teleport_runtime.client.tsh import _parse_selector, _split_destination
from teleport_runtime.client.tsh_profile import Profile, ProfileStore, known_hosts_patterns, ssh_config
from teleport_runtime.client.tsh_scp import Location, parse_location, plan_copy
from teleport_runtime.errors import BadParameter, NotFound
from tests.tsh.conftest import TSH


@pytest.mark.parametrize(
    "text, expected",
    [
        ("root@node1:/tmp/x", Location("/tmp/x", "node1", "root")),
        ("node1:", Location("", "node1", None)),
        ("node1.example.com:rel/path", Location("rel/path", "node1.example.com", None)),
        ("root@[fd00::1]:/x", Location("/x", "fd00::1", "root")),
        ("./a:b", Location("./a:b")),
        ("/abs/path", Location("/abs/path")),
        ("plain.txt", Location("plain.txt")),
    ],
)
def test_parse_location(text: str, expected: Location) -> None:
    assert parse_location(text) == expected


def test_plan_copy() -> None:
    up = plan_copy(["a", "b", "root@n:/tmp"])
    assert up.upload and up.remote.host == "n"
    down = plan_copy(["root@n:/a", "root@n:/b", "."])
    assert not down.upload and [s.path for s in down.sources] == ["/a", "/b"]
    for bad in (["a"], ["a", "b"], ["n1:/a", "n2:/b"], ["root@n:/a", "bob@n:/b", "."], ["a", "n:/x", "m:/y"]):
        with pytest.raises(BadParameter):
            plan_copy(bad)


def test_destination_and_selector() -> None:
    assert _split_destination("root@node1", None) == ("root", "node1")
    assert _split_destination("node1", "bob") == ("bob", "node1")
    assert _split_destination("a@b@node1", None) == ("a@b", "node1")
    assert _parse_selector(["env=prod,role=web", "x=1"]) == {"env": "prod", "role": "web", "x": "1"}
    with pytest.raises(BadParameter):
        _parse_selector(["noequals"])


def _profile(home: Path) -> Profile:
    return Profile(proxy_host="proxy.example.com", web_port=3080, ssh_host="proxy.example.com", ssh_port=3023,
                   user="alice", cluster="example.com", home=home)


def test_profile_store_round_trip_and_modes(tmp_path: Path) -> None:
    home = tmp_path / "tsh"
    store = ProfileStore(home)
    with pytest.raises(NotFound, match="not logged in"):
        store.load()
    profile = _profile(home)
    store.save_login(profile, ssh_key=b"KEY", ssh_public_key="ssh-ed25519 AAAA", ssh_cert="CERT",
                     tls_key=b"TLSKEY", tls_cert="TLSCERT", host_ca_certs=[], host_ca_keys=["ssh-ed25519 CAKEY c"])
    assert store.load() == profile
    assert store.current_proxy() == "proxy.example.com"
    for path in home.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert (home / "known_hosts").read_text() == (
        "@cert-authority proxy.example.com,example.com,*.example.com ssh-ed25519 CAKEY type=host\n"
    )
    assert profile.host_ca_keys() == ["ssh-ed25519 CAKEY"]
    # a second login replaces the cluster's lines, other clusters' lines stay
    (home / "known_hosts").write_text("@cert-authority other.com,*.other.com ssh-ed25519 OTHER\n"
                                      + (home / "known_hosts").read_text())
    store.save_trust(profile, [], ["ssh-ed25519 NEWKEY"])
    lines = (home / "known_hosts").read_text().splitlines()
    assert lines == ["@cert-authority other.com,*.other.com ssh-ed25519 OTHER",
                     "@cert-authority proxy.example.com,example.com,*.example.com ssh-ed25519 NEWKEY type=host"]
    assert [p.user for p in store.logout()] == ["alice"]
    assert not profile.key_path.exists() and store.current_proxy() is None
    assert (home / "known_hosts").exists()


def test_unsafe_names_are_refused(tmp_path: Path) -> None:
    profile = _profile(tmp_path)
    profile.user = "../escape"
    with pytest.raises(BadParameter):
        _ = profile.key_path


def test_ssh_config_text(tmp_path: Path) -> None:
    text = ssh_config(_profile(tmp_path))
    assert "Host *.example.com proxy.example.com\n" in text
    assert f'    UserKnownHostsFile "{tmp_path}/known_hosts"\n' in text
    assert "Host proxy.example.com\n    Port 3023\n" in text
    assert "Host *.example.com !proxy.example.com\n    Port 3022\n" in text
    proxy_command = next(line for line in text.splitlines() if "ProxyCommand" in line)
    assert proxy_command.startswith("    ProxyCommand ssh -p 3023 ")
    assert proxy_command.endswith("%r@proxy.example.com -s proxy:%h:%p@example.com")
    assert known_hosts_patterns("p", "c") == "p,c,*.c"


@pytest.mark.parametrize(
    "args, message",
    [
        (["ssh"], "ERROR: Missing argument 'DESTINATION'. (see `tsh ssh --help`)"),
        (["login"], "ERROR: Missing option '--proxy'. (see `tsh login --help`)"),
        (["status"], "ERROR: not logged in: run `tsh login --proxy=HOST:3080 --user=NAME`"),
        (["scp", "a", "b"], "ERROR: one side must be remote"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([TSH, *args], capture_output=True, text=True, timeout=60,
                            env={"TELEPORT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "module, absent",
    [
        # every command: asyncssh only where SSH is spoken, pyotp/segno only for login and
        # sign-up, the recording code (and aiohttp with it) only for the recording commands
        ("teleport_runtime.client.tsh", ["asyncssh", "segno", "pyotp", "aiohttp", "teleport_runtime.recording"]),
        # `tsh ls`, `status` and `config` refresh the host CAs without SSH
        ("teleport_runtime.client.tsh_trust", ["asyncssh", "segno", "pyotp", "aiohttp"]),
        ("teleport_runtime.client.tsh_recordings", ["asyncssh", "aiohttp", "teleport_runtime.recording"]),
    ],
)
def test_tsh_imports_only_what_a_command_needs(module: str, absent: list[str]) -> None:
    repo = Path(__file__).resolve().parents[2]
    code = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
    assert result.stdout.split() == []


def test_tsh_ssh_keeps_the_post_quantum_key_exchange() -> None:
    """tsh skips asyncssh's liboqs lookup when it imports it; the hybrid our servers prefer
    (mlkem768x25519, from cryptography) stays first among tsh's key exchanges."""
    repo = Path(__file__).resolve().parents[2]
    code = (
        "import teleport_runtime.client.tsh_ssh, asyncssh.kex, asyncssh.crypto.pq as pq;"
        "from teleport_runtime.sshserver import KEX_ALGS;"
        "print(pq.mlkem_available, KEX_ALGS[0],"
        " [a.decode() for a in asyncssh.kex.get_default_kex_algs() if not a.startswith(b'gss-')][0])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
    mlkem, server_first, client_first = result.stdout.split()
    if mlkem != "True":
        pytest.skip("this cryptography has no ML-KEM")
    assert server_first == client_first == "mlkem768x25519-sha256"

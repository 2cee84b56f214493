"""``teleport configure``: the starter config, and ``--test FILE`` naming the bad key."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from tests.conftest import TELEPORT, free_port


def configure(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TELEPORT, "configure", *args], capture_output=True, text=True,
                          timeout=60)


def write(tmp_path, text: str):
    path = tmp_path / "teleport.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
    version: v1
    teleport:
      nodename: node1
      data_dir: /var/lib/teleport
      auth_token: abcd123
      ca_pin: sha256:7e12c17c20d9cb504bbcb3f0236be3f446861f1396dcbb44425fe28ec1c108f1
      auth_servers: ["10.12.0.6:3025"]
    ssh_service:
      enabled: true
      labels: {env: prod}
      commands: [{name: arch, command: [uname, -p], period: 1h}]
"""


def test_good_file_passes(tmp_path):
    path = write(tmp_path, GOOD)
    result = configure("--test", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "node" in result.stdout
    assert result.stderr == ""


def test_good_auth_file_with_static_tokens_passes(tmp_path):
    tokenfile = tmp_path / "tokenfile"
    tokenfile.write_text("auth-secret-value-1234\n")  # static tokens have 16+ characters
    path = write(tmp_path, f"""\
        auth_service:
          enabled: true
          cluster_name: example.com
          tokens: ["proxy,node:secret-token-value", "auth:{tokenfile}"]
          presence_ttl: 2s
    """)
    result = configure("--test", str(path))
    assert result.returncode == 0, result.stderr
    assert "auth" in result.stdout


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        # an unknown key names itself, with its section
        ("teleport:\n  nodname: x\n  auth_servers: [a:3025]\nssh_service: {enabled: true}\n",
         "teleport.nodname", "unknown key"),
        ("ssh_service:\n  enabled: true\n  lables: {env: prod}\n", "ssh_service.lables",
         "unknown key"),
        ("auth_servce:\n  enabled: true\n", "auth_servce", "unknown key"),
        # a bad duration
        ("auth_service:\n  presence_ttl: 5minutes\n", "auth_service.presence_ttl",
         "invalid duration"),
        ("teleport:\n  auth_servers: [a:3025]\nssh_service:\n  commands:\n"
         "    - {name: arch, command: [uname], period: often}\n",
         "ssh_service.commands[0].period", "invalid duration"),
        # a bad label key
        ("teleport:\n  auth_servers: [a:3025]\nssh_service:\n  labels: {'bad key': x}\n",
         "ssh_service.labels", "invalid label key"),
        # a bad pin
        ("teleport:\n  ca_pin: sha256:abc\n  auth_servers: [a:3025]\n"
         "ssh_service: {enabled: true}\n", "teleport.ca_pin", "invalid CA pin"),
        ("teleport:\n  ca_pin: [md5:00]\n  auth_servers: [a:3025]\n"
         "ssh_service: {enabled: true}\n", "teleport.ca_pin", "invalid CA pin"),
        # other keys, for good measure
        ("auth_service:\n  listen_addr: 0.0.0.0:99999\n", "auth_service.listen_addr",
         "out of range"),
        ("auth_service:\n  tokens: ['wizard:x']\n", "auth_service.tokens", "unknown role"),
        ("ssh_service:\n  enabled: maybe\n", "ssh_service.enabled", "true or false"),
    ],
)
def test_bad_file_names_the_key(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    result = configure("--test", str(path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ERROR: ")
    assert str(path) in lines[0]
    assert f"{key}:" in lines[0]
    assert fragment in lines[0]


def test_node_file_without_auth_servers_fails_test(tmp_path):
    path = write(tmp_path, "ssh_service:\n  enabled: true\n")
    result = configure("--test", str(path))
    assert result.returncode != 0
    assert "teleport.auth_servers" in result.stderr


def test_missing_file(tmp_path):
    result = configure("--test", str(tmp_path / "nope.yaml"))
    assert result.returncode != 0
    assert "cannot read config file" in result.stderr


def test_starter_config_passes_test(tmp_path):
    result = configure()
    assert result.returncode == 0, result.stderr
    assert "auth_service:" in result.stdout
    assert "ssh_service:" in result.stdout
    path = tmp_path / "starter.yaml"
    path.write_text(result.stdout)
    checked = configure("--test", str(path))
    assert checked.returncode == 0, checked.stderr
    assert "auth, proxy, node" in checked.stdout


def test_starter_config_written_with_output(tmp_path):
    path = tmp_path / "out.yaml"
    result = configure("-o", str(path))
    assert result.returncode == 0, result.stderr
    assert configure("--test", str(path)).returncode == 0


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--labels=bad key=x"], "--labels: invalid label key 'bad key'"),
        (["--labels=env"], "--labels: 'env' is not key=value"),
        (["--roles=wizard"], "--roles: unknown role 'wizard'"),
        (["--ca-pin=sha256:abc"], "--ca-pin: invalid CA pin"),
        (["--auth-server=host:notaport"], "--auth-server: invalid port"),
    ],
)
def test_start_flag_errors_name_the_flag(tmp_path, flags, fragment):
    result = subprocess.run(
        [TELEPORT, "start", "--roles=node", "--auth-server=127.0.0.1:3025",
         f"--data-dir={tmp_path}", *flags],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ERROR: ") and fragment in lines[0], lines[0]


def test_node_config_file_completed_by_auth_server_flag(tmp_path):
    """A node's teleport.yaml may leave auth_servers to --auth-server (as the seed's join
    command does); the file alone is still incomplete for --test."""
    path = write(tmp_path, "ssh_service:\n  enabled: true\n  labels: {env: prod}\n")
    nowhere = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [TELEPORT, "start", "-c", str(path), "--roles=node", f"--auth-server={nowhere}",
         "--token=abc", f"--data-dir={tmp_path / 'data'}"],
        capture_output=True, text=True, timeout=60,
    )
    # the config is accepted and the join is attempted (and fails: nothing listens there)
    assert result.returncode != 0
    assert "auth_servers is empty" not in result.stderr
    assert "cannot reach the auth server" in result.stderr and nowhere in result.stderr
    assert configure("--test", str(path)).returncode != 0

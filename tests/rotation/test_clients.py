"""Users through a host CA rotation without logging in again: tsh refreshes its trusted host CAs
from the proxy (over TLS verified with the CAs it already trusts) on every command, so a client
that ran tsh during init or update_clients keeps working at update_servers and after standby,
and OpenSSH with `tsh config` shares the refreshed known_hosts. A client that missed the whole
rotation learns nothing and is told to log in again with the new pin. Real daemons on loopback;
the checks of the proxy's answer are unit tests at the end."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from teleport_runtime.ca import (
    CAKeyPair,
    CAType,
    TLSIdentity,
    generate_tls_identity_cert,
    generate_tls_keypair,
    new_cert_authority,
)
from teleport_runtime.client.tsh_trust import host_cas_from_ping
from teleport_runtime.errors import BadParameter
from tests.conftest import require_binary
from tests.rotation.conftest import CLUSTER, RotationEnv, fingerprint


def trusted_host_ca_lines(env: RotationEnv, home: Path | None = None) -> list[str]:
    """The cluster's @cert-authority lines in the client's known_hosts."""
    path = (home or env.root / "tsh-home") / "known_hosts"
    return [line for line in path.read_text().splitlines()
            if line.startswith("@cert-authority") and f"*.{CLUSTER}" in line.split()[1].split(",")]


def trusted_fingerprints(env: RotationEnv, tmp: Path, home: Path | None = None) -> set[str]:
    return {fingerprint(" ".join(line.split()[2:4]), tmp) for line in trusted_host_ca_lines(env, home)}


def exported_fingerprints(env: RotationEnv, tmp: Path) -> set[str]:
    """Every host CA key `tctl auth export --type=host` prints."""
    lines = env.cluster.tctl("auth", "export", "--type=host").stdout.splitlines()
    return {fingerprint(" ".join(line.split()[2:4]), tmp) for line in lines}


def credentials(env: RotationEnv) -> dict[str, bytes]:
    """The user's key and certificates: a login would replace them."""
    keys = env.root / "tsh-home" / "keys"
    return {str(p.relative_to(keys)): p.read_bytes() for p in sorted(keys.rglob("*")) if p.is_file()}


def tsh_hostname(env: RotationEnv, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    return env.tsh("ssh", "root@node1", "hostname", home=home)


def assert_runs(result: subprocess.CompletedProcess[str], phase: str) -> None:
    assert (result.returncode, result.stdout.strip()) == (0, socket.gethostname()), (
        f"tsh ssh at {phase}: {result.stderr}"
    )


def test_tsh_keeps_access_through_a_host_rotation_without_logging_in(
    rotation_env: Callable[..., RotationEnv], tmp_path: Path
) -> None:
    env = rotation_env("node1")
    logged_in = credentials(env)
    old = exported_fingerprints(env, tmp_path)
    assert trusted_fingerprints(env, tmp_path) == old and len(old) == 1

    env.step("host", "init")
    both = exported_fingerprints(env, tmp_path)  # tctl auth export prints every trusted host CA key
    assert len(both) == 2 and old < both
    assert_runs(tsh_hostname(env), "init")
    assert trusted_fingerprints(env, tmp_path) == both  # learned from the proxy, no login

    for phase in ("update_clients", "update_servers"):
        env.step("host", phase)
        assert exported_fingerprints(env, tmp_path) == both
        assert_runs(tsh_hostname(env), phase)

    # a known_hosts that lost the new CA (an older copy of ~/.tsh): the proxy's host cert does not
    # verify, tsh waits for the refresh it started (its web trust still verifies the proxy) and
    # connects again with what it learned
    known_hosts = env.root / "tsh-home" / "known_hosts"
    old_line = next(line for line in trusted_host_ca_lines(env)
                    if fingerprint(" ".join(line.split()[2:4]), tmp_path) in old)
    known_hosts.write_text(old_line + "\n")
    assert_runs(tsh_hostname(env), "update_servers with a stale known_hosts")
    assert trusted_fingerprints(env, tmp_path) == both

    env.step("host", "standby")
    new = exported_fingerprints(env, tmp_path)
    assert len(new) == 1 and new != old and new < both
    assert_runs(tsh_hostname(env), "standby")
    assert trusted_fingerprints(env, tmp_path) == new  # the old host CA is dropped
    assert len(trusted_host_ca_lines(env)) == 1
    assert credentials(env) == logged_in  # never logged in again

    # the stored X.509 trust followed too: the proxy verifies with it, tsh ls works
    listed = env.tsh("ls")
    assert listed.returncode == 0 and "node1" in listed.stdout, listed.stderr


def test_openssh_with_tsh_config_keeps_working_when_its_owner_ran_tsh_ls(
    rotation_env: Callable[..., RotationEnv], tmp_path: Path
) -> None:
    env = rotation_env("node1")
    config = tmp_path / "ssh_config"
    out = env.tsh("config")
    assert out.returncode == 0, out.stderr
    config.write_text(out.stdout)
    old = exported_fingerprints(env, tmp_path)

    def openssh() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [require_binary("ssh"), "-F", str(config), "-o", "BatchMode=yes", f"root@node1.{CLUSTER}", "hostname"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    env.step("host", "init")
    env.step("host", "update_clients")
    assert trusted_fingerprints(env, tmp_path) == old  # no tsh command since the login
    listed = env.tsh("ls")
    assert listed.returncode == 0, listed.stderr
    assert trusted_fingerprints(env, tmp_path) == exported_fingerprints(env, tmp_path) > old

    env.step("host", "update_servers")
    result = openssh()
    assert (result.returncode, result.stdout.strip()) == (0, socket.gethostname()), result.stderr
    env.step("host", "standby")
    result = openssh()
    assert (result.returncode, result.stdout.strip()) == (0, socket.gethostname()), result.stderr


def test_a_client_that_missed_the_whole_rotation_is_told_to_log_in_with_the_pin(
    rotation_env: Callable[..., RotationEnv], tmp_path: Path
) -> None:
    env = rotation_env("node1")
    known_hosts = (env.root / "tsh-home" / "known_hosts").read_text()
    for phase in ("init", "update_clients", "update_servers", "standby"):
        env.step("host", phase)

    refused = tsh_hostname(env)
    assert refused.returncode != 0
    assert "host CA" in refused.stderr and "tsh login" in refused.stderr and "--ca-pin" in refused.stderr
    listed = env.tsh("ls")
    assert listed.returncode != 0 and "tsh login" in listed.stderr and "--ca-pin" in listed.stderr
    status = env.tsh("status")
    assert "--ca-pin" in status.stderr
    # nothing was learned over the connection tsh could not verify
    assert (env.root / "tsh-home" / "known_hosts").read_text() == known_hosts

    # as told: log in again with the new pin
    env.login(pin=env.status()["ca_pins"][0])
    assert_runs(tsh_hostname(env), "after the new login")


def test_rollback_after_update_servers_keeps_the_client_working(
    rotation_env: Callable[..., RotationEnv], tmp_path: Path
) -> None:
    env = rotation_env("node1")
    logged_in = credentials(env)
    old = exported_fingerprints(env, tmp_path)
    for phase in ("init", "update_clients", "update_servers", "rollback", "standby"):
        env.step("host", phase)
        assert_runs(tsh_hostname(env), phase)
    assert env.ca("host")["rotation"]["state"] == "standby"
    assert exported_fingerprints(env, tmp_path) == old
    assert trusted_fingerprints(env, tmp_path) == old  # the rolled-back CA is dropped
    assert credentials(env) == logged_in


# ---------------------------------------------------------------------------- the proxy's answer


def _host_ca(cluster: str = CLUSTER) -> CAKeyPair:
    return new_cert_authority(CAType.HOST, cluster).active


def _proxy_cert(ca: CAKeyPair) -> bytes:
    _key, public = generate_tls_keypair()
    identity = TLSIdentity(name="proxy1", kind="host", roles=["Proxy"], cluster=CLUSTER, host_uuid="u1")
    return generate_tls_identity_cert(ca, public, identity, ttl=timedelta(hours=1))


def _ping(*cas: CAKeyPair, **overrides: object) -> dict[str, object]:
    ping: dict[str, object] = {"cluster": CLUSTER, "host_ca_certs": [ca.tls_cert.decode() for ca in cas],
            "host_ca_keys": [ca.ssh_public_key for ca in cas]}
    ping.update(overrides)
    return ping


def test_the_proxys_host_cas_are_taken_whole_when_they_include_its_issuer() -> None:
    old, new = _host_ca(), _host_ca()
    cas = host_cas_from_ping(_ping(new, old), CLUSTER, _proxy_cert(old))
    assert cas.keys == [new.ssh_public_key, old.ssh_public_key]
    assert len(cas.certs) == 2


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"cluster": "other.test"}, "cluster"),
        ({"host_ca_keys": []}, "host_ca_keys"),
        ({"host_ca_keys": ["ssh-ed25519 not-a-key"]}, "invalid host CA key"),
        ({"host_ca_certs": []}, "host_ca_certs"),
        ({"host_ca_certs": ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]}, "host_ca_certs"),
    ],
)
def test_a_malformed_answer_changes_nothing(overrides: dict[str, object], why: str) -> None:
    ca = _host_ca()
    with pytest.raises(BadParameter, match=why):
        host_cas_from_ping(_ping(ca, **overrides), CLUSTER, _proxy_cert(ca))


def test_an_answer_without_the_proxys_own_issuer_is_refused() -> None:
    """Storing it would cut the client off from the proxy it just verified."""
    issuer, other = _host_ca(), _host_ca()
    with pytest.raises(BadParameter, match="issued"):
        host_cas_from_ping(_ping(other), CLUSTER, _proxy_cert(issuer))
    with pytest.raises(BadParameter, match="host_ca_certs"):  # a leaf certificate is no CA
        host_cas_from_ping(_ping(issuer, host_ca_certs=[_proxy_cert(issuer).decode()]), CLUSTER, _proxy_cert(issuer))

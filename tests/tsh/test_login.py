"""tsh login, status, logout, ls, config and signup against a real proxy (the non-interactive
paths: --password-file / --otp-secret-file / --otp-secret-out)."""

from __future__ import annotations

import json
import stat

import pyotp
import pytest

from teleport_runtime.ca import CAType, ca_pin, new_cert_authority
from teleport_runtime.client.tsh import _totp_from_file
from teleport_runtime.errors import BadParameter
from tests.conftest import async_wait_for
from tests.tsh.conftest import PASSWORD, Setup


async def test_first_login_needs_a_pin_or_insecure(setup: Setup) -> None:
    result = await setup.tsh(*setup.login_args())
    assert result.returncode == 1
    assert result.stderr.startswith("ERROR: first contact with the proxy")
    assert "--ca-pin" in result.stderr and "--insecure" in result.stderr
    assert not (setup.tsh.home / "keys").exists()


async def test_wrong_pin_is_refused_before_the_password_is_sent(setup: Setup) -> None:
    other = ca_pin(new_cert_authority(CAType.HOST, "x").active.tls_cert)
    result = await setup.tsh(*setup.login_args(f"--ca-pin={other}"))
    assert result.returncode == 1
    assert "CA pin mismatch" in result.stderr
    assert not [e for e in await setup.cluster.audit_events("user.login") if e.get("user") == "alice"]


async def test_login_with_pin_stores_private_files(setup: Setup) -> None:
    result = await setup.tsh(*setup.login_args(f"--ca-pin={setup.pin}", "--ttl=2h"))
    assert result.returncode == 0, result.stderr
    home = setup.tsh.home
    host = setup.web.split(":")[0]
    keys = home / "keys" / host
    files = [keys / "alice", keys / "alice.pub", keys / "alice-cert.pub", keys / "alice-x509.pem",
             keys / "alice-x509-key.pem", home / "cas" / "proxy.test.pem", home / "known_hosts",
             home / f"{host}.yaml", home / "current-profile"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in (home, home / "keys", keys, home / "cas"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert (keys / "alice-cert.pub").read_text().startswith("ssh-ed25519-cert-v01@openssh.com ")
    known = (home / "known_hosts").read_text().splitlines()
    prefix = f"@cert-authority {host},proxy.test,*.proxy.test ssh-ed25519 "
    assert known and all(line.startswith(prefix) for line in known)
    assert (home / "current-profile").read_text().strip() == host
    assert "User:         alice" in result.stdout

    status = await setup.tsh("status")
    assert status.returncode == 0
    for expected in (f"Proxy:        {setup.web}", "User:         alice", "Cluster:      proxy.test",
                     "Roles:        access", "Logins:       root, alice", "Valid until:"):
        assert expected in status.stdout, status.stdout
    data = json.loads((await setup.tsh("status", "--format=json")).stdout)
    assert data["user"] == "alice" and data["logins"] == ["root", "alice"] and not data["expired"]

    # the CA stored at the first login verifies the proxy from now on: no pin needed
    again = await setup.tsh(*setup.login_args())
    assert again.returncode == 0, again.stderr


async def test_insecure_first_contact_warns(setup: Setup) -> None:
    result = await setup.tsh(*setup.login_args("--insecure"))
    assert result.returncode == 0, result.stderr
    assert "WARNING: --insecure" in result.stderr


async def test_wrong_password_or_code(setup: Setup) -> None:
    bad = setup.password_file.parent / "bad-password"
    bad.write_text("not the password\n")
    result = await setup.tsh("login", f"--proxy={setup.web}", "--user=alice", f"--ca-pin={setup.pin}",
                             f"--password-file={bad}", f"--otp-secret-file={setup.otp_file}")
    assert result.returncode == 1
    assert result.stderr.strip() == "ERROR: invalid user name, password or one-time code"
    other_secret = setup.password_file.parent / "other-otp"
    other_secret.write_text(pyotp.random_base32())
    result = await setup.tsh("login", f"--proxy={setup.web}", "--user=alice", f"--ca-pin={setup.pin}",
                             f"--password-file={setup.password_file}", f"--otp-secret-file={other_secret}")
    assert result.returncode == 1
    assert "invalid user name, password or one-time code" in result.stderr


async def test_ls_lists_reachable_nodes(setup: Setup) -> None:
    await setup.cluster.add_node("node1", {"env": "prod", "role": "web"})
    await setup.cluster.add_node("node2", {"env": "dev"})
    await setup.proxy.directory.refresh()
    assert (await setup.tsh(*setup.login_args(f"--ca-pin={setup.pin}"))).returncode == 0

    result = await setup.tsh("ls")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Node", "Name", "Address", "Labels"]
    assert lines[2].split()[0] == "node1" and lines[2].split()[2] == "env=prod,role=web"
    assert lines[3].split()[0] == "node2" and lines[3].split()[2] == "env=dev"

    prod = json.loads((await setup.tsh("ls", "env=prod", "--format=json")).stdout)
    assert [n["hostname"] for n in prod] == ["node1"]
    assert set(prod[0]) == {"id", "hostname", "addr", "labels"}
    none = await setup.tsh("ls", "env=staging")
    assert none.returncode == 0 and len(none.stdout.splitlines()) == 2


async def test_logout(setup: Setup) -> None:
    assert (await setup.tsh(*setup.login_args(f"--ca-pin={setup.pin}"))).returncode == 0
    result = await setup.tsh("logout")
    assert result.returncode == 0
    assert "Logged out alice" in result.stdout
    assert not list((setup.tsh.home / "keys").rglob("alice*"))
    status = await setup.tsh("status")
    assert status.returncode == 1
    assert "not logged in" in status.stderr
    ls = await setup.tsh("ls")
    assert ls.returncode == 1 and "tsh login" in ls.stderr


async def test_expired_certificate(setup: Setup) -> None:
    assert (await setup.tsh(*setup.login_args(f"--ca-pin={setup.pin}", "--ttl=1s"))).returncode == 0

    async def expired() -> bool:
        return (await setup.tsh("status")).returncode == 1

    await async_wait_for(expired, what="the 1s certificate to expire")
    status = await setup.tsh("status")
    assert "[EXPIRED]" in status.stdout
    assert "ERROR: the certificate has expired" in status.stderr
    for args in (("ls",), ("ssh", "root@node1", "true")):
        result = await setup.tsh(*args)
        assert result.returncode == 1
        assert "expired" in result.stderr and "tsh login" in result.stderr


async def test_config_for_openssh(setup: Setup) -> None:
    assert (await setup.tsh(*setup.login_args(f"--ca-pin={setup.pin}"))).returncode == 0
    text = (await setup.tsh("config")).stdout
    host = setup.web.split(":")[0]
    home = setup.tsh.home
    assert f"Host *.proxy.test {host}\n" in text
    assert f'    UserKnownHostsFile "{home}/known_hosts"\n' in text
    assert f'    IdentityFile "{home}/keys/{host}/alice"\n' in text
    assert f'    CertificateFile "{home}/keys/{host}/alice-cert.pub"\n' in text
    assert f"Host *.proxy.test !{host}\n    Port 3022\n" in text
    assert f"    ProxyCommand ssh -p {setup.proxy.ssh_port} " in text
    assert f"%r@{host} -s proxy:%h:%p@proxy.test\n" in text


async def test_signup_then_login_non_interactive(setup: Setup) -> None:
    invite = await setup.cluster.auth.users.add_user("bob", ["access"], ["bob"])
    secret_file = setup.password_file.parent / "bob-otp"
    result = await setup.tsh("signup", f"--proxy={setup.web}", f"--token={invite['token']}",
                             f"--ca-pin={setup.pin}", f"--password-file={setup.password_file}",
                             f"--otp-secret-out={secret_file}")
    assert result.returncode == 0, result.stderr
    assert "User bob is ready" in result.stdout
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    login = await setup.tsh("login", f"--proxy={setup.web}", "--user=bob", f"--ca-pin={setup.pin}",
                            f"--password-file={setup.password_file}", f"--otp-secret-file={secret_file}")
    assert login.returncode == 0, login.stderr
    assert PASSWORD  # the same password file served both


async def test_signup_with_a_bad_token(setup: Setup) -> None:
    result = await setup.tsh("signup", f"--proxy={setup.web}", "--token=nope", f"--ca-pin={setup.pin}",
                             f"--password-file={setup.password_file}", f"--otp-secret-out={setup.otp_file}.x")
    assert result.returncode == 1
    assert "sign-up token is unknown or expired" in result.stderr


def test_a_counter_based_otp_secret_is_refused_with_the_fix(tmp_path) -> None:
    """An otpauth://hotp URI parses as an OTP without a current code: it is refused by name
    instead of failing inside the code generator."""
    secret = tmp_path / "otp"
    secret.write_text(pyotp.HOTP(pyotp.random_base32()).provisioning_uri(name="alice", initial_count=0))
    with pytest.raises(BadParameter, match=r"otpauth://hotp URI; the cluster uses time-based codes"):
        _totp_from_file(str(secret))

"""The node with the real OpenSSH clients: ssh, scp (SFTP and legacy modes) and sftp."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from teleport_runtime.node.session import DEFAULT_SFTP_SERVER
from tests.conftest import require_binary

from .conftest import WAIT

pytestmark = pytest.mark.interop




def options(key_path: Path, cert_path: Path, known_hosts: Path) -> list[str]:
    return [
        "-F",
        "/dev/null",
        "-i",
        str(key_path),
        "-o",
        f"CertificateFile={cert_path}",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
    ]


async def execute(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), WAIT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def ssh(node, files, login: str, *command: str, extra: tuple[str, ...] = ()):
    return await execute(
        require_binary("ssh"),
        *options(*files),
        *extra,
        "-p",
        str(node.port),
        f"{login}@127.0.0.1",
        *command,
    )


async def test_ssh_runs_a_command(node, client_files, os_login):
    code, out, err = await ssh(node, client_files, os_login, "id -un; echo ok")
    assert code == 0, err
    assert out == f"{os_login}\nok\n"
    code, _, _ = await ssh(node, client_files, os_login, "exit 7")
    assert code == 7


async def test_ssh_with_a_tty(node, client_files, os_login):
    code, out, err = await ssh(node, client_files, os_login, "tty; echo $TERM", extra=("-tt",))
    assert code == 0, err
    assert "/dev/pts/" in out


async def test_ssh_stdin(node, client_files, os_login):
    data = os.urandom(1024 * 1024)
    proc = await asyncio.create_subprocess_exec(
        require_binary("ssh"),
        *options(*client_files),
        "-p",
        str(node.port),
        f"{os_login}@127.0.0.1",
        "sha256sum",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(data), WAIT)
    assert out.decode().split()[0] == hashlib.sha256(data).hexdigest()


async def test_ssh_refusal_is_audited(node, client_files):
    code, _, err = await ssh(node, client_files, "no-such-login-q", "true")
    assert code == 255
    assert "Permission denied" in err
    event = await node.wait_event("auth.rejected")
    assert "not among the certificate's principals" in event["reason"]


async def test_ssh_shows_unknown_login_banner(node, tmp_path, issue):
    key_path, cert_path = issue(["no-such-login-z"]).write(tmp_path)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("".join(f"@cert-authority * {k}\n" for k in node.host_ca.trusted_ssh_public_keys()))
    code, _, err = await ssh(node, (key_path, cert_path, known_hosts), "no-such-login-z", "true")
    assert code == 255
    assert "does not exist on this node" in err


@pytest.mark.usefixtures("sftp_server_installed")
async def test_scp_both_ways(node, client_files, os_login, os_user, tmp_path):
    scp = require_binary("scp")
    local = tmp_path / "upload.bin"
    payload = os.urandom(300_000)
    local.write_bytes(payload)
    remote_dir = Path(os_user.pw_dir)
    for mode, name in (((), "sftp-mode.bin"), (("-O",), "legacy.bin")):
        code, _, err = await execute(
            scp,
            *options(*client_files),
            *mode,
            "-P",
            str(node.port),
            str(local),
            f"{os_login}@127.0.0.1:{name}",
        )
        assert code == 0, (mode, err)
        uploaded = remote_dir / name
        assert uploaded.read_bytes() == payload
        assert uploaded.stat().st_uid == os_user.pw_uid
        back = tmp_path / f"back-{name}"
        code, _, err = await execute(
            scp,
            *options(*client_files),
            *mode,
            "-P",
            str(node.port),
            f"{os_login}@127.0.0.1:{name}",
            str(back),
        )
        assert code == 0, (mode, err)
        assert back.read_bytes() == payload


@pytest.fixture
def sftp_server_installed():
    if not os.path.exists(DEFAULT_SFTP_SERVER):
        pytest.skip("openssh-sftp-server is not installed")


@pytest.mark.usefixtures("sftp_server_installed")
async def test_sftp_both_ways(node, client_files, os_login, os_user, tmp_path):
    sftp = require_binary("sftp")
    local = tmp_path / "put.txt"
    local.write_text("hello over sftp\n")
    fetched = tmp_path / "got.txt"
    batch = tmp_path / "batch"
    batch.write_text(f"put {local} sftp-put.txt\nget sftp-put.txt {fetched}\nls -l\n")
    code, out, err = await execute(
        sftp,
        *options(*client_files),
        "-P",
        str(node.port),
        "-b",
        str(batch),
        f"{os_login}@127.0.0.1",
    )
    assert code == 0, err
    assert (Path(os_user.pw_dir) / "sftp-put.txt").read_text() == "hello over sftp\n"
    assert fetched.read_text() == "hello over sftp\n"
    assert "sftp-put.txt" in out
    event = await node.wait_event("subsystem", name="sftp")
    assert event["exit_status"] == 0

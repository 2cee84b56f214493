"""tsh as a user runs it: a real subprocess with its own $TELEPORT_HOME, against an in-process
cluster (the real auth service and proxy on loopback addresses)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import TSH, tsh_env
from tests.proxy.harness import LocalCluster

PASSWORD = "correct horse battery staple"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Tsh:
    def __init__(self, home: Path, workdir: Path) -> None:
        self.home = home
        self.workdir = workdir

    async def __call__(self, *args: str, stdin: bytes | None = None, bound: float = 60) -> Result:
        proc = await asyncio.create_subprocess_exec(
            TSH, *args, env=tsh_env(self.home), cwd=self.workdir,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), bound)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"tsh {' '.join(args)} did not finish within {bound:.0f}s")
        return Result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


@dataclass
class Setup:
    cluster: LocalCluster
    proxy: object
    web: str
    pin: str
    tsh: Tsh
    password_file: Path
    otp_file: Path

    def login_args(self, *extra: str, user: str = "alice") -> list[str]:
        return ["login", f"--proxy={self.web}", f"--user={user}", f"--password-file={self.password_file}",
                f"--otp-secret-file={self.otp_file}", *extra]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    cluster = LocalCluster(tmp_path / "cluster")
    await cluster.start()
    try:
        proxy = await cluster.start_proxy()
        secret = await cluster.add_user("alice", ["access"], ["root", "alice"], PASSWORD)
        password_file = tmp_path / "password"
        password_file.write_text(PASSWORD + "\n")
        otp_file = tmp_path / "otp"
        otp_file.write_text(secret + "\n")
        web = f"{proxy.cfg.proxy.web_listen_addr.host}:{proxy.web_port}"
        yield Setup(cluster, proxy, web, (await cluster.pins())[0], Tsh(tmp_path / "tsh-home", tmp_path),
                    password_file, otp_file)
    finally:
        await cluster.stop()

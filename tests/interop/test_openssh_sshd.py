"""A real OpenSSH sshd as a cluster node: it trusts the user CA (`tctl auth export --type=user`)
and serves a host cert from `tctl auth sign --host`; the OpenSSH client logs in with the files
`tctl auth sign --user` wrote and trusts the host through the exported host CA."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, require_binary

pytestmark = pytest.mark.interop


def test_sshd_accepts_cluster_user_cert_and_client_trusts_host_ca(cluster, tmp_path: Path) -> None:
    sshd = require_binary("/usr/sbin/sshd")
    cluster.tctl("users", "add", "carol", "--roles=access", "--logins=root")
    cluster.tctl("auth", "sign", "--user=carol", "--format=openssh", f"--out={tmp_path}/carol", "--ttl=1h")
    cluster.tctl("auth", "sign", "--host=127.0.0.1,sshd.test", "--format=openssh", f"--out={tmp_path}/host")
    user_ca = cluster.tctl("auth", "export", "--type=user").stdout
    host_ca = cluster.tctl("auth", "export", "--type=host").stdout.split()[-2:]
    (tmp_path / "user_ca.pub").write_text(user_ca)
    (tmp_path / "known_hosts").write_text(f"@cert-authority 127.0.0.1 {' '.join(host_ca)}\n")
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path}/host\n"
        f"HostCertificate {tmp_path}/host-cert.pub\nTrustedUserCAKeys {tmp_path}/user_ca.pub\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nAuthorizedKeysFile none\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nPidFile none\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        argv = ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={tmp_path}/known_hosts",
                "-o", "StrictHostKeyChecking=yes", "-i", f"{tmp_path}/carol",
                "-o", f"CertificateFile={tmp_path}/carol-cert.pub", "-p", str(port), "root@127.0.0.1"]
        for _ in range(50):  # sshd needs a moment to listen
            result = subprocess.run([*argv, "echo ok"], capture_output=True, text=True, timeout=30)
            if "Connection refused" not in result.stderr:
                break
            time.sleep(0.1)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"
        # A key the cluster did not sign is refused by the same sshd.
        other = subprocess.run(
            [*argv[:-7], "-o", "IdentitiesOnly=yes", "-i", "/dev/null", "-p", str(port), "root@127.0.0.1", "true"],
            capture_output=True, text=True, timeout=30,
        )
        assert other.returncode != 0
    finally:
        server.terminate()
        server.wait(timeout=10)

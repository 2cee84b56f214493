"""What ``tsh login`` keeps on disk, and the OpenSSH config ``tsh config`` prints.

Layout under ``$TELEPORT_HOME`` (default ``~/.tsh``), directories 0700, files 0600::

    current-profile                      the proxy host of the active profile
    <proxy-host>.yaml                    profile: proxy web/SSH addresses, user, cluster
    keys/<proxy-host>/<user>             SSH private key (OpenSSH format, Ed25519)
    keys/<proxy-host>/<user>.pub         SSH public key
    keys/<proxy-host>/<user>-cert.pub    SSH user certificate
    keys/<proxy-host>/<user>-x509.pem    X.509 user certificate
    keys/<proxy-host>/<user>-x509-key.pem  X.509 private key
    cas/<cluster>.pem                    trusted host CA certificates (verify the proxy)
    known_hosts                          @cert-authority lines for the cluster's host CA(s)

Both trust files are written at login and kept current by every later tsh command that reaches
the proxy (:mod:`teleport_runtime.client.tsh_trust`), so they follow a host CA rotation.

The certificates are the source of truth for roles, logins and expiry; the profile only says
where the proxy is and who logged in.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from teleport_runtime.ca import UserCertInfo, parse_user_ssh_cert
from teleport_runtime.config import HostPort
from teleport_runtime.durable import write_private
from teleport_runtime.errors import BadParameter, NotFound
from teleport_runtime.identity import split_pem

CURRENT_PROFILE = "current-profile"
DEFAULT_WEB_PORT = 3080
DEFAULT_SSH_PORT = 3023


def tsh_home() -> Path:
    """``$TELEPORT_HOME`` if set, else ``~/.tsh``."""
    override = os.environ.get("TELEPORT_HOME")
    return Path(override).expanduser() if override else Path.home() / ".tsh"


def _safe_component(value: str, what: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise BadParameter(f"invalid {what} {value!r} for a file name")
    return value


@dataclass
class Profile:
    """One logged-in proxy."""

    proxy_host: str
    web_port: int
    ssh_host: str
    ssh_port: int
    user: str
    cluster: str
    home: Path

    # ------------------------------------------------------------------ paths

    @property
    def key_dir(self) -> Path:
        return self.home / "keys" / _safe_component(self.proxy_host, "proxy host")

    def _key_file(self, suffix: str) -> Path:
        return self.key_dir / (_safe_component(self.user, "user name") + suffix)

    @property
    def key_path(self) -> Path:
        return self._key_file("")

    @property
    def pub_path(self) -> Path:
        return self._key_file(".pub")

    @property
    def cert_path(self) -> Path:
        return self._key_file("-cert.pub")

    @property
    def x509_path(self) -> Path:
        return self._key_file("-x509.pem")

    @property
    def x509_key_path(self) -> Path:
        return self._key_file("-x509-key.pem")

    @property
    def ca_path(self) -> Path:
        return self.home / "cas" / f"{_safe_component(self.cluster, 'cluster name')}.pem"

    @property
    def known_hosts_path(self) -> Path:
        return self.home / "known_hosts"

    @property
    def web_addr(self) -> HostPort:
        return HostPort(self.proxy_host, self.web_port)

    @property
    def ssh_addr(self) -> HostPort:
        return HostPort(self.ssh_host, self.ssh_port)

    # ------------------------------------------------------------------ contents

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("home")
        return data

    def cert_info(self) -> UserCertInfo:
        """The stored SSH certificate, parsed; NotFound if the keys are gone."""
        try:
            return parse_user_ssh_cert(self.cert_path.read_text())
        except FileNotFoundError:
            raise NotFound(
                f"no certificate for {self.user} at {self.proxy_host}: run "
                f"`tsh login --proxy={self.web_addr} --user={self.user}`"
            ) from None

    def expires(self) -> datetime | None:
        return self.cert_info().valid_before

    def expired(self, now: datetime | None = None) -> bool:
        valid_before = self.expires()
        return valid_before is not None and valid_before <= (now or datetime.now(UTC))

    def host_ca_certs(self) -> list[bytes]:
        try:
            return split_pem(self.ca_path.read_bytes())
        except FileNotFoundError:
            return []

    def host_ca_keys(self) -> list[str]:
        """The host CA SSH keys from the known_hosts lines of this cluster."""
        keys = []
        for line in read_lines(self.known_hosts_path):
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "@cert-authority" and f"*.{self.cluster}" in parts[1].split(","):
                keys.append(" ".join(parts[2:4]))
        return keys


def read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


class ProfileStore:
    """Profiles, keys and trusted CAs under one tsh home."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or tsh_home()

    def _profile_path(self, proxy_host: str) -> Path:
        return self.home / f"{_safe_component(proxy_host, 'proxy host')}.yaml"

    def _mkdirs(self) -> None:
        for directory in (self.home, self.home / "keys", self.home / "cas"):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)

    # ------------------------------------------------------------------ reading

    def current_proxy(self) -> str | None:
        try:
            value = (self.home / CURRENT_PROFILE).read_text().strip()
        except FileNotFoundError:
            return None
        return value or None

    def load(self, proxy_host: str | None = None) -> Profile:
        """The named profile, or the current one; NotFound (saying how to log in) otherwise."""
        host = proxy_host or self.current_proxy()
        if not host:
            raise NotFound("not logged in: run `tsh login --proxy=HOST:3080 --user=NAME`")
        try:
            data = yaml.safe_load(self._profile_path(host).read_text()) or {}
        except FileNotFoundError:
            raise NotFound(
                f"not logged in to {host}: run `tsh login --proxy={host}:{DEFAULT_WEB_PORT} --user=NAME`"
            ) from None
        try:
            return Profile(
                proxy_host=str(data["proxy_host"]),
                web_port=int(data["web_port"]),
                ssh_host=str(data["ssh_host"]),
                ssh_port=int(data["ssh_port"]),
                user=str(data["user"]),
                cluster=str(data["cluster"]),
                home=self.home,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadParameter(
                f"profile {self._profile_path(host)} is damaged ({exc}); run `tsh logout` and log in again"
            ) from None

    def profiles(self) -> list[Profile]:
        out = []
        for path in sorted(self.home.glob("*.yaml")):
            try:
                out.append(self.load(path.stem))
            except (NotFound, BadParameter):
                continue
        return out

    def trusted_cas(self, proxy_host: str) -> tuple[str, list[bytes]] | None:
        """(cluster, host CA certs) remembered from an earlier login to ``proxy_host``."""
        try:
            profile = self.load(proxy_host)
        except (NotFound, BadParameter):
            return None
        certs = profile.host_ca_certs()
        return (profile.cluster, certs) if certs else None

    # ------------------------------------------------------------------ writing

    def save_login(
        self,
        profile: Profile,
        *,
        ssh_key: bytes,
        ssh_public_key: str,
        ssh_cert: str,
        tls_key: bytes,
        tls_cert: str,
        host_ca_certs: list[str],
        host_ca_keys: list[str],
    ) -> None:
        """Keep a login's keys and certificates, trust, and make it the current profile."""
        self._mkdirs()
        profile.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(profile.key_path, ssh_key)
        write_private(profile.pub_path, ssh_public_key.strip() + "\n")
        write_private(profile.cert_path, ssh_cert.strip() + "\n")
        write_private(profile.x509_key_path, tls_key)
        write_private(profile.x509_path, tls_cert)
        self.save_trust(profile, host_ca_certs, host_ca_keys)
        write_private(self._profile_path(profile.proxy_host), yaml.safe_dump(profile.to_dict(), sort_keys=False))
        write_private(self.home / CURRENT_PROFILE, profile.proxy_host + "\n")

    def save_trust(self, profile: Profile, host_ca_certs: list[str], host_ca_keys: list[str]) -> None:
        """``cas/<cluster>.pem`` and the cluster's ``@cert-authority`` lines in known_hosts."""
        self._mkdirs()
        if host_ca_certs:
            write_private(profile.ca_path, "".join(c if c.endswith("\n") else c + "\n" for c in host_ca_certs))
        if host_ca_keys:
            patterns = known_hosts_patterns(profile.proxy_host, profile.cluster)
            marker = f"*.{profile.cluster}"
            kept = []
            for line in read_lines(profile.known_hosts_path):
                parts = line.split()
                if len(parts) > 1 and parts[0] == "@cert-authority" and marker in parts[1].split(","):
                    continue
                kept.append(line)
            for key in host_ca_keys:
                kept.append(f"@cert-authority {patterns} {' '.join(key.split()[:2])} type=host")
            write_private(profile.known_hosts_path, "".join(line + "\n" for line in kept))

    def update_trust(self, profile: Profile, host_ca_certs: list[str], host_ca_keys: list[str]) -> bool:
        """Trust exactly these host CAs for the profile's cluster; writes only when they differ
        from the stored ones. True when something changed."""
        held = ({c.decode().strip() for c in profile.host_ca_certs()}, {_key_text(k) for k in profile.host_ca_keys()})
        wanted = ({c.strip() for c in host_ca_certs}, {_key_text(k) for k in host_ca_keys})
        if held == wanted:
            return False
        self.save_trust(profile, host_ca_certs, [_key_text(k) for k in host_ca_keys])
        return True

    def logout(self, proxy_host: str | None = None) -> list[Profile]:
        """Remove the keys and profile of ``proxy_host`` (every profile when None). Trusted CAs
        and known_hosts stay: they are not credentials, and they let the next login verify the
        proxy without a pin."""
        profiles = [self.load(proxy_host)] if proxy_host else self.profiles()
        for profile in profiles:
            for path in (profile.key_path, profile.pub_path, profile.cert_path, profile.x509_path,
                         profile.x509_key_path, self._profile_path(profile.proxy_host)):
                path.unlink(missing_ok=True)
            if profile.key_dir.exists() and not any(profile.key_dir.iterdir()):
                shutil.rmtree(profile.key_dir, ignore_errors=True)
        current = self.current_proxy()
        if current is None or any(p.proxy_host == current for p in profiles) or proxy_host is None:
            (self.home / CURRENT_PROFILE).unlink(missing_ok=True)
        return profiles


def _key_text(key: str) -> str:
    """``type base64`` of an SSH public key line (the comment dropped)."""
    return " ".join(key.split()[:2])


def known_hosts_patterns(proxy_host: str, cluster: str) -> str:
    """Host patterns of the cluster's ``@cert-authority`` line: the proxy and every node."""
    return ",".join(dict.fromkeys([proxy_host, cluster, f"*.{cluster}"]))


def _quote(path: Path) -> str:
    return f'"{path}"'


def ssh_config(profile: Profile, ssh_binary: str = "ssh") -> str:
    """The OpenSSH client config for this profile's cluster (what ``tsh config`` prints)."""
    cluster, proxy = profile.cluster, profile.ssh_host
    options = (
        f"-o UserKnownHostsFile={_quote(profile.known_hosts_path)} "
        f"-o IdentityFile={_quote(profile.key_path)} "
        f"-o CertificateFile={_quote(profile.cert_path)} "
        "-o IdentitiesOnly=yes"
    )
    return (
        f"# Teleport cluster {cluster} via proxy {profile.proxy_host} (generated by tsh config)\n"
        f"# Common flags for all {cluster} hosts\n"
        f"Host *.{cluster} {proxy}\n"
        f"    UserKnownHostsFile {_quote(profile.known_hosts_path)}\n"
        f"    IdentityFile {_quote(profile.key_path)}\n"
        f"    CertificateFile {_quote(profile.cert_path)}\n"
        f"    IdentitiesOnly yes\n"
        f"    HostKeyAlgorithms ssh-ed25519-cert-v01@openssh.com,ecdsa-sha2-nistp256-cert-v01@openssh.com,"
        f"rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-256-cert-v01@openssh.com\n"
        f"\n"
        f"# The proxy's SSH port\n"
        f"Host {proxy}\n"
        f"    Port {profile.ssh_port}\n"
        f"\n"
        f"# Flags for all {cluster} hosts except the proxy\n"
        f"Host *.{cluster} !{proxy}\n"
        f"    Port 3022\n"
        f"    ProxyCommand {ssh_binary} -p {profile.ssh_port} {options} %r@{proxy} -s proxy:%h:%p@{cluster}\n"
    )

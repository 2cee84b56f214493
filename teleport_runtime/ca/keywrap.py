"""CA private keys at rest: AES-256-GCM under a key-encryption key (KEK) kept outside the backend.

The backend (a shared PostgreSQL database, its backups) holds the CA records; with a KEK file
configured (``auth_service.ca_key_encryption_key_file``) the two private-key fields of every CA
key pair are stored sealed, so whoever reads the database alone cannot sign. Public fields stay
readable. Every auth server of a cluster is given the same file.

A sealed field is the text ``teleport-kek:v1:<kek id>:<base64(nonce || ciphertext+tag)>``; the
associated data binds it to the backend key of its CA record and the field's name, so a sealed
value moved to another record or field does not open. ``<kek id>`` (the first 8 bytes of the
KEK's SHA-256, hex) names which KEK a record needs without revealing it.

Re-keying: the file may hold several keys, one per line. The first seals; every line opens. The
auth server reads the file again when it changes (and when it meets a record sealed with a key it
does not hold), so a key added to the file on every auth server is usable without a restart;
``tctl auth rekey --new-key-file`` then re-seals every CA under the new key (see
:func:`~teleport_runtime.auth.service.reseal_cas`).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teleport_runtime.ca.authority import CertAuthority
from teleport_runtime.errors import ConfigError

KEK_BYTES = 32
KEK_CONFIG_KEY = "auth_service.ca_key_encryption_key_file"
_PREFIX = "teleport-kek:v1:"
_SEALED = re.compile(r"teleport-kek:v1:([0-9a-f]{16}):([A-Za-z0-9+/=]+)")
_SECRET_FIELDS = ("ssh_private_key", "tls_key")
_MAKE_ONE = ("create one with `head -c 32 /dev/urandom | base64 > FILE && chmod 600 FILE` and give every "
             "auth server the same file")


def load_kek(path: str | os.PathLike[str]) -> bytes:
    """The sealing key of a KEK file (its first line); see :func:`load_keks`."""
    return load_keks(path)[0]


def load_keks(path: str | os.PathLike[str]) -> list[bytes]:
    """Read a KEK file: 32-byte keys, each written base64 (or hex) on its own line, the one that
    seals first. Refuses a file others may read (the KEK is worth as much as the CA keys) and any
    line that is not a 32-byte key."""
    file = Path(path)
    try:
        info = file.stat()
        text = file.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{KEK_CONFIG_KEY}: cannot read {file} ({exc}): {_MAKE_ONE}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{KEK_CONFIG_KEY}: {file} may be read by other users (mode {stat.S_IMODE(info.st_mode):o}): "
            f"run `chmod 600 {file}`"
        )
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        key: bytes | None = None
        if re.fullmatch(r"[0-9a-fA-F]{64}", line):
            key = bytes.fromhex(line)
        else:
            try:
                key = base64.b64decode(line, validate=True)
            except (binascii.Error, ValueError):
                key = None
        if key is None or len(key) != KEK_BYTES:
            raise ConfigError(f"{KEK_CONFIG_KEY}: line {number} of {file} is not a 32-byte key in base64 "
                              f"or hex: {_MAKE_ONE}")
        keys.append(key)
    if not keys:
        raise ConfigError(f"{KEK_CONFIG_KEY}: {file} does not hold a 32-byte key in base64 or hex: {_MAKE_ONE}")
    return keys


def kek_id(kek: bytes) -> str:
    return hashlib.sha256(kek).hexdigest()[:16]


class CACodec:
    """Encodes CA records for the backend and decodes them, sealing private keys when a KEK is
    set. Without a KEK records are stored as before (plain PEM)."""

    def __init__(self, kek: bytes | None = None, *, older: Sequence[bytes] = (),
                 path: str | os.PathLike[str] | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._stamp: tuple[int, int, int] | None = None
        self._set_keys([kek, *older] if kek is not None else list(older))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CACodec:
        """A codec with the keys of a KEK file, read again whenever the file changes."""
        keys = load_keks(path)
        codec = cls(keys[0], older=keys[1:], path=path)
        codec._stamp = codec._file_stamp()
        return codec

    def _set_keys(self, keys: Sequence[bytes]) -> None:
        for key in keys:
            if len(key) != KEK_BYTES:
                raise ConfigError(f"{KEK_CONFIG_KEY}: the key must be {KEK_BYTES} bytes")
        self._aead = AESGCM(keys[0]) if keys else None
        self.kek_id = kek_id(keys[0]) if keys else ""
        self._openers = {kek_id(key): AESGCM(key) for key in keys}

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = self._path.stat() if self._path is not None else None
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size) if info is not None else None

    def refresh(self, force: bool = False) -> None:
        """Read the KEK file again if it changed (a key added or made the sealing one)."""
        if self._path is None:
            return
        stamp = self._file_stamp()
        if stamp is not None and (force or stamp != self._stamp):
            keys = load_keks(self._path)
            self._set_keys(keys)
            self._stamp = stamp

    @property
    def key_ids(self) -> list[str]:
        """The ids of every key this codec opens with, the sealing one first."""
        return list(self._openers)

    def encode(self, key: str, ca: CertAuthority) -> bytes:
        self.refresh()
        record = ca.to_dict(True)
        if self._aead is not None:
            for pair in _pairs(record):
                for name in _SECRET_FIELDS:
                    if pair.get(name):
                        pair[name] = self._seal(key, name, str(pair[name]))
        return json.dumps(record).encode()

    def decode(self, key: str, value: bytes) -> CertAuthority:
        self.refresh()
        record = json.loads(value)
        if isinstance(record, dict):
            record = copy.deepcopy(record)
            for pair in _pairs(record):
                for name in _SECRET_FIELDS:
                    text = pair.get(name)
                    if isinstance(text, str) and text.startswith(_PREFIX):
                        pair[name] = self._open(key, name, text)
        return CertAuthority.from_dict(record)

    def needs_sealing(self, value: bytes) -> bool:
        """True when a KEK is set and the stored record still holds a plain private key (a
        cluster from before the KEK was configured): the caller re-writes it sealed."""
        if self._aead is None:
            return False
        record = json.loads(value)
        return any(
            isinstance(pair.get(name), str) and pair[name] and not pair[name].startswith(_PREFIX)
            for pair in _pairs(record) for name in _SECRET_FIELDS
        )

    def sealed_with_other(self, value: bytes) -> bool:
        """True when the stored record holds a private key that is plain or sealed with another
        key than this codec's sealing key (what ``tctl auth rekey`` re-writes)."""
        record = json.loads(value)
        for pair in _pairs(record):
            for name in _SECRET_FIELDS:
                text = pair.get(name)
                if isinstance(text, str) and text:
                    match = _SEALED.fullmatch(text)
                    if match is None or match.group(1) != self.kek_id:
                        return True
        return False

    def _seal(self, key: str, field: str, text: str) -> str:
        assert self._aead is not None
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, text.encode(), _aad(key, field))
        return f"{_PREFIX}{self.kek_id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def _open(self, key: str, field: str, text: str) -> str:
        match = _SEALED.fullmatch(text)
        if match is None:
            raise ConfigError(f"the CA record {key} holds a damaged sealed key ({field}): restore it from a backup")
        wanted = match.group(1)
        if wanted not in self._openers:
            self.refresh(force=True)  # another auth server may already seal with a key just added
        if self._aead is None:
            raise ConfigError(
                f"the CA private keys in the backend are encrypted (key-encryption key {wanted}) but "
                f"{KEK_CONFIG_KEY} is not set on this auth server: set it to the file the other auth "
                "servers of this cluster use"
            )
        opener = self._openers.get(wanted)
        if opener is None:
            raise ConfigError(
                f"the CA private keys in the backend are encrypted with key-encryption key {wanted}, "
                f"but {KEK_CONFIG_KEY} holds key {', '.join(self._openers)}: give this auth server the same "
                "file as the other auth servers of this cluster"
            )
        raw = base64.b64decode(match.group(2))
        try:
            return opener.decrypt(raw[:12], raw[12:], _aad(key, field)).decode()
        except (InvalidTag, ValueError):
            raise ConfigError(
                f"the CA record {key} ({field}) does not decrypt with the configured key-encryption key: "
                "it was altered or moved; restore it from a backup"
            ) from None


def _aad(key: str, field: str) -> bytes:
    return f"{key}\n{field}".encode()


def _pairs(record: Any) -> list[dict[str, Any]]:
    """The key pair objects of a CA record (active, then additionally trusted)."""
    if not isinstance(record, dict):
        return []
    pairs = [record.get("active"), *(record.get("additional_trusted") or [])]
    return [p for p in pairs if isinstance(p, dict)]

"""Property: a teleport.yaml built from the known keys, with one value (or a whole section)
replaced by something of the wrong type or value, is either a valid Config or a ConfigError
whose message names the key; never another exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from teleport_runtime.config import _KNOWN_KEYS, config_from_dict, load_config_file
from teleport_runtime.errors import ConfigError
from tests.fuzz.conftest import FUZZ, junk_json

pytestmark = pytest.mark.fuzz

VALID: dict[str, Any] = {
    "version": "v1",
    "teleport": {
        "nodename": "node1", "data_dir": "/var/lib/teleport", "auth_token": "abc123",
        "ca_pin": "sha256:" + "a" * 64, "auth_servers": ["auth.example.com:3025"], "diag_addr": "127.0.0.1:3000",
        "advertise_ip": "10.0.0.5", "log": {"output": "stderr", "severity": "INFO"}, "storage": {"type": "sqlite"},
    },
    "auth_service": {
        "enabled": True, "listen_addr": "0.0.0.0:3025", "cluster_name": "example.com",
        "public_addr": ["auth.example.com"], "tokens": ["proxy,node:secret-value"],
        "session_recording": "node", "presence_ttl": "10m",
    },
    "ssh_service": {
        "enabled": True, "listen_addr": "0.0.0.0:3022", "public_addr": "node1.example.com:3022",
        "labels": {"env": "prod"}, "commands": [{"name": "arch", "command": ["uname", "-p"], "period": "1h"}],
    },
    "proxy_service": {
        "enabled": True, "listen_addr": "0.0.0.0:3023", "web_listen_addr": "0.0.0.0:3080",
        "public_addr": "proxy.example.com:3080", "ssh_public_addr": "proxy.example.com:3023",
    },
}

#: Every key path the loader reads: the sections' keys, and the nested ones.
PATHS: list[tuple[Any, ...]] = [
    *[(section, key) if section else (key,) for section, keys in _KNOWN_KEYS.items() for key in sorted(keys)],
    ("teleport", "log", "severity"), ("teleport", "log", "output"), ("teleport", "storage", "type"),
    ("ssh_service", "labels", "env"), ("ssh_service", "commands", 0),
    ("ssh_service", "commands", 0, "name"), ("ssh_service", "commands", 0, "command"),
    ("ssh_service", "commands", 0, "period"), ("ssh_service", "commands", 0, "command", 0),
    ("auth_service", "tokens", 0), ("teleport", "auth_servers", 0),
]

yaml_junk = st.one_of(
    junk_json,
    st.dates(), st.datetimes(), st.binary(max_size=20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["yes", "no", "on", "off", "~", "0x1F", "1_000", "5m\n", "host:99999", "[::1", "[x]:1",
                     "proxy:/nonexistent\x00", "/", "a b", "node\n1", "sha256:xyz", "-1", "1e400",
                     "99999999999999999d", "node,auth:" + "/" * 3, "wizard:x"]),
)


def dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def set_path(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def check_names_key(exc: ConfigError, path: tuple[Any, ...]) -> None:
    """The message names the key: the mutated path or one of its parents (an item of a list is
    named by the list, a section's unknown key by the section)."""
    prefixes = {dotted(path[:i]) for i in range(1, len(path) + 1)}
    assert any(p in exc.message for p in prefixes), f"{exc.message!r} names none of {sorted(prefixes)}"


@FUZZ
@given(path=st.sampled_from(PATHS), value=yaml_junk)
def test_one_bad_value_is_a_config_error_naming_the_key(path: tuple[Any, ...], value: Any) -> None:
    doc = copy.deepcopy(VALID)
    set_path(doc, path, value)
    try:
        config_from_dict(doc, "teleport.yaml", check=False)
    except ConfigError as exc:
        check_names_key(exc, path)


@FUZZ
@given(path=st.sampled_from(PATHS), value=yaml_junk, check=st.booleans())
def test_the_file_loader_raises_only_config_errors(tmp_path_factory: pytest.TempPathFactory,
                                                   path: tuple[Any, ...], value: Any, check: bool) -> None:
    doc = copy.deepcopy(VALID)
    set_path(doc, path, value)
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        assume(False)
    file = Path(tmp_path_factory.mktemp("cfg")) / "teleport.yaml"
    file.write_text(text, encoding="utf-8")
    try:
        load_config_file(file, check=check)
    except ConfigError as exc:
        assert str(file) in exc.message


@FUZZ
@given(section=st.sampled_from(["teleport", "auth_service", "ssh_service", "proxy_service"]),
       key=st.text(max_size=20), value=yaml_junk)
def test_unknown_keys_and_whole_sections(section: str, key: str, value: Any) -> None:
    doc = copy.deepcopy(VALID)
    doc[section][key] = value
    try:
        config_from_dict(doc, "teleport.yaml", check=False)
    except ConfigError as exc:
        assert section in exc.message
    doc = copy.deepcopy(VALID)
    doc[section] = value
    try:
        config_from_dict(doc, "teleport.yaml", check=False)
    except ConfigError as exc:
        assert section in exc.message


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.sampled_from(["- a\n- b", "!!python/object:os.system x", "a: [",
                                                               "\t", "version: v1\nversion: v2", "? [a]\n: 1"])))
def test_any_text_as_the_file(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    file = Path(tmp_path_factory.mktemp("cfg")) / "teleport.yaml"
    file.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config_file(file)
    except ConfigError as exc:
        assert str(file) in exc.message

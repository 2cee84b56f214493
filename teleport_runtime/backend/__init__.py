"""Storage backend: items with revision and expiry, watches, and the SQLite default.

See :mod:`teleport_runtime.backend.base` for the interface and its semantics, and
``tests/backend/conformance.py`` for the suite every backend must pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from teleport_runtime.backend.base import (
    DEFAULT_SWEEP_INTERVAL,
    DEFAULT_WATCHER_CAPACITY,
    Backend,
    Clock,
    Event,
    EventType,
    Item,
    Watcher,
    prefix_end,
    utc_now,
)
from teleport_runtime.errors import ConfigError

if TYPE_CHECKING:  # psycopg is imported only where PostgreSQL is configured
    from teleport_runtime.backend.postgres import PostgresBackend

__all__ = [
    "AUDIT_URI_SCHEMES",
    "DEFAULT_SWEEP_INTERVAL",
    "DEFAULT_WATCHER_CAPACITY",
    "STORAGE_TYPES",
    "Backend",
    "Clock",
    "Event",
    "EventType",
    "Item",
    "Watcher",
    "check_storage_config",
    "default_sqlite_path",
    "open_audit_backend",
    "open_backend",
    "prefix_end",
    "utc_now",
]

#: Accepted values of ``teleport.storage.type`` ("dir" is the reference's name for the same
#: SQLite-in-the-data-dir backend; "postgres" is taken for "postgresql").
STORAGE_TYPES = ("sqlite", "dir", "postgresql", "postgres")
POSTGRES_TYPES = ("postgresql", "postgres")
#: What ``teleport.storage.audit_events_uri`` may name: a PostgreSQL database.
AUDIT_URI_SCHEMES = ("postgresql://", "postgres://")


def default_sqlite_path(data_dir: str | os.PathLike[str]) -> str:
    """Where the SQLite backend lives by default: ``<data_dir>/backend/sqlite.db``."""
    return os.path.join(data_dir, "backend", "sqlite.db")


def check_storage_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the ``teleport.storage`` section; return it with ``type`` and
    ``audit_events_uri`` (a list) normalised. ConfigError naming ``teleport.storage.<key>`` and
    the fix. Does no I/O: whether the database answers is checked when the auth service starts."""
    config = dict(config or {})
    storage_type = config.get("type") or "sqlite"
    if not isinstance(storage_type, str) or storage_type.lower() not in STORAGE_TYPES:
        raise ConfigError(
            f"teleport.storage.type: unsupported storage type {storage_type!r}; "
            "expected sqlite (the default, a file in the data dir) or postgresql"
        )
    storage_type = storage_type.lower()
    config["type"] = "postgresql" if storage_type in POSTGRES_TYPES else storage_type
    if config["type"] == "postgresql":
        from teleport_runtime.backend.postgres import split_conn_string

        if "conn_string" not in config:
            raise ConfigError(
                "teleport.storage.conn_string: required with type postgresql, such as "
                "postgresql://teleport@db.example.com:5432/teleport_backend?sslmode=verify-full"
            )
        split_conn_string(config["conn_string"], "teleport.storage.conn_string")
    uris = config.get("audit_events_uri")
    if uris is None or uris == [] or uris == "":
        config.pop("audit_events_uri", None)
        return config
    if isinstance(uris, str):
        uris = [uris]
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise ConfigError("teleport.storage.audit_events_uri: expected a list of postgresql:// URIs")
    if len(uris) != 1 or not uris[0].startswith(AUDIT_URI_SCHEMES):
        raise ConfigError(
            f"teleport.storage.audit_events_uri: {uris!r}: expected one postgresql:// URI (the audit "
            "database); leave it out to keep the audit log in the cluster backend"
        )
    from teleport_runtime.backend.postgres import split_conn_string

    split_conn_string(uris[0], "teleport.storage.audit_events_uri")
    config["audit_events_uri"] = uris
    return config


def open_backend(
    config: Mapping[str, Any] | None,
    data_dir: str | os.PathLike[str],
    *,
    clock: Clock | None = None,
    sweep_interval: float | None = DEFAULT_SWEEP_INTERVAL,
) -> Backend:
    """Open the backend described by the ``teleport.storage`` section of teleport.yaml.

    ``{"type": "sqlite"}`` (the default when ``type`` is absent) with an optional ``path``: the
    database file, or a directory that gets ``sqlite.db`` inside it; default
    ``<data_dir>/backend/sqlite.db``. ``{"type": "postgresql", "conn_string": ...}``: a
    :class:`~teleport_runtime.backend.postgres.PostgresBackend`, which connects on first use (or
    ``await backend.open()``). Other keys are ignored. Raises ConfigError naming
    ``teleport.storage.<key>`` for a bad value.
    """
    from teleport_runtime.backend.sqlite import SQLiteBackend

    config = check_storage_config(config)
    if config["type"] == "postgresql":
        from teleport_runtime.backend.postgres import PostgresBackend

        return PostgresBackend(config["conn_string"], clock=clock, sweep_interval=sweep_interval)
    path = config.get("path")
    if path is None or path == "":
        db_path = default_sqlite_path(data_dir)
    elif isinstance(path, str | os.PathLike):
        db_path = os.path.expanduser(os.fspath(path))
        if os.path.isdir(db_path) or db_path.endswith(os.sep):
            db_path = os.path.join(db_path, "sqlite.db")
    else:
        raise ConfigError(
            f"teleport.storage.path: expected a file path string, got {type(path).__name__}"
        )
    return SQLiteBackend(db_path, clock=clock, sweep_interval=sweep_interval)


def open_audit_backend(config: Mapping[str, Any] | None, *, clock: Clock | None = None) -> PostgresBackend | None:
    """The backend the audit log writes to when ``teleport.storage.audit_events_uri`` names a
    PostgreSQL database (connects on first use); None: the audit log stays in the cluster
    backend."""
    config = check_storage_config(config)
    uris = config.get("audit_events_uri")
    if not uris:
        return None
    from teleport_runtime.backend.postgres import PostgresBackend

    return PostgresBackend(uris[0], config_key="teleport.storage.audit_events_uri", clock=clock)

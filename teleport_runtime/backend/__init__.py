"""Storage backend: items with revision and expiry, watches, and the SQLite default.

See :mod:`teleport_runtime.backend.base` for the interface and its semantics, and
``tests/backend/conformance.py`` for the suite every backend must pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

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

__all__ = [
    "DEFAULT_SWEEP_INTERVAL",
    "DEFAULT_WATCHER_CAPACITY",
    "STORAGE_TYPES",
    "Backend",
    "Clock",
    "Event",
    "EventType",
    "Item",
    "Watcher",
    "default_sqlite_path",
    "open_backend",
    "prefix_end",
    "utc_now",
]

#: Accepted values of ``teleport.storage.type`` ("dir" is the reference's name for the same
#: SQLite-in-the-data-dir backend). PostgreSQL is planned, not implemented.
STORAGE_TYPES = ("sqlite", "dir")


def default_sqlite_path(data_dir: str | os.PathLike[str]) -> str:
    """Where the SQLite backend lives by default: ``<data_dir>/backend/sqlite.db``."""
    return os.path.join(data_dir, "backend", "sqlite.db")


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
    ``<data_dir>/backend/sqlite.db``. Other keys are ignored. Raises ConfigError naming
    ``teleport.storage.<key>`` for a bad value.
    """
    from teleport_runtime.backend.sqlite import SQLiteBackend

    config = dict(config or {})
    storage_type = config.get("type") or "sqlite"
    if not isinstance(storage_type, str) or storage_type.lower() not in STORAGE_TYPES:
        raise ConfigError(
            f"teleport.storage.type: unsupported storage type {storage_type!r}; "
            f"expected one of: {', '.join(STORAGE_TYPES)} (postgres is planned, not yet "
            "available)"
        )
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

"""The session's PostgreSQL server for the HA tests (see tests/postgres_server.py)."""

from tests.postgres_server import pg_database, pg_server

__all__ = ["pg_database", "pg_server"]

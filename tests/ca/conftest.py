"""Shared fixtures: one host CA and one user CA per test session (key generation is cheap,
but sharing keeps the tests focused), and a fixed clock for exact validity checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from teleport_runtime.ca import CAType, CertAuthority, new_cert_authority

CLUSTER = "example.com"
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="session")
def host_ca() -> CertAuthority:
    return new_cert_authority(CAType.HOST, CLUSTER)


@pytest.fixture(scope="session")
def user_ca() -> CertAuthority:
    return new_cert_authority(CAType.USER, CLUSTER)


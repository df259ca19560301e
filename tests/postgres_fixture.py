"""Pytest plugin: one real PostgreSQL server per test session, a fresh database per test.

The server is the machine's own (Debian's `postgresql` package), started in a
temporary folder on a free port and stopped at the end of the session; a machine
without it fails these tests with the line that says what to install.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from evcharge.devtools.postgres import LocalPostgres
from evcharge.runtime.ports import free_port


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    folder = Path(tempfile.mkdtemp(prefix="evcharge-pg-"))
    server = LocalPostgres(folder, free_port())
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> str:
    """A database of the test's own on the session's server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")

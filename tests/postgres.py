"""A real PostgreSQL server for the tests, on 127.0.0.1 only, started once per session.

The server itself is ``pipeline_patches.postgres`` (also used by ``scripts/ten_plans.py``).
Each test gets a database of its own. The server's log is kept, so a test can check that the
server logged no error while it ran.
"""
from __future__ import annotations

import os
import time
from typing import Iterator

import pytest

from pipeline_patches.postgres import PostgresNotFound, PostgresServer, running_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = running_postgres()
        started = server.__enter__()
    except PostgresNotFound as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    try:
        yield started
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database for one test; its SQLAlchemy URL."""
    import psycopg2

    url = postgres_server.create_database()
    yield url
    name = url.rsplit("/", 1)[1]
    admin = postgres_server.admin()
    try:
        deadline = time.time() + 10
        while True:
            try:
                admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
                break
            except psycopg2.Error:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        admin.close()

"""A throwaway PostgreSQL server on 127.0.0.1, for the double's database worker.

Used by the tests (``tests/postgres.py``) and by ``scripts/ten_plans.py --via database-worker``.
It uses the machine's server binaries (Debian's ``postgresql`` package, which ``.ci/run``
installs), keeps its data in a temporary folder and its log, so a caller can check that the
server logged no error.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


class PostgresNotFound(RuntimeError):
    """The machine has no PostgreSQL server binaries."""


def _server_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    port: int
    log: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self) -> Any:
        """A psycopg2 connection to the server's own database, in autocommit (for CREATE/DROP DATABASE)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        return conn

    def create_database(self) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = self.admin()
        try:
            admin.cursor().execute(f"CREATE DATABASE {name}")
        finally:
            admin.close()
        return self.url(name)

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def problems_since(self, offset: int) -> list[str]:
        """ERROR, WARNING and FATAL lines the server logged after ``offset`` bytes of its log."""
        with self.log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode("utf-8", "replace").splitlines()
        return [line for line in lines if any(level in line for level in ("ERROR:", "WARNING:", "FATAL:", "PANIC:"))]



@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A fresh server (trust auth, fsync off), stopped and removed on exit."""
    bin_dir = _server_bin()
    if bin_dir is None:
        raise PostgresNotFound("PostgreSQL server binaries not found (Debian: apt-get install postgresql; .ci/run does)")
    folder = Path(tempfile.mkdtemp(prefix="planexe-concurrency-pg-"))
    data, log = folder / "data", folder / "server.log"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres user
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    try:
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c log_min_messages=warning -c max_connections=200"
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
                       check=True, capture_output=True)
        yield PostgresServer(port=port, log=log)
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

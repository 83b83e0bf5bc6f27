"""A throwaway PostgreSQL server in a temporary folder, for the tests and the benchmark.

``initdb`` refuses to run as root, so as root the data folder is handed to the ``postgres`` user
and the server binaries run through ``runuser``; as anyone else they run directly. The server
listens on 127.0.0.1 at a free port and on a Unix socket inside its own folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PASSWORD = "s3cret-Pa55word"
USER = "tripflow"
DATABASE = "trips"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL server binaries (initdb) found")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayPostgres:
    """``start()`` a private server with a password-protected user and database; ``stop()`` it."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.bindir = _bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tripflow-pg-"))
        self.data = self.root / "data"
        self.fsync = fsync
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=self.root)

    def start(self) -> ThrowawayPostgres:
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
        )
        pwfile.unlink()
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            f"-c fsync={'on' if self.fsync else 'off'} -c synchronous_commit=off "
            "-c full_page_writes=off -c shared_buffers=256MB -c max_wal_size=4GB"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
            "-o",
            options,
        )
        self.psql_local(f"CREATE DATABASE {DATABASE}", db="postgres")
        return self

    def psql_local(self, sql: str, *, db: str = DATABASE) -> str:
        """Run SQL over the Unix socket (trusted: no password)."""
        out = subprocess.run(
            [
                "psql",
                "-h",
                str(self.root),
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAtc",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout

    def dump(self, db: str = DATABASE) -> bytes:
        """``pg_dump`` of ``db`` (plain SQL, data included), over the Unix socket."""
        where = ["-h", str(self.root), "-p", str(self.port), "-U", USER]
        return subprocess.run(
            [str(self.bindir / "pg_dump"), *where, db],
            check=True,
            capture_output=True,
        ).stdout

    def dsn(self, *, password: str = PASSWORD, port: int | None = None, db: str = DATABASE) -> str:
        return (
            f"postgresql://{USER}:{password}@127.0.0.1:{port or self.port}/{db}?connect_timeout=5"
        )

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

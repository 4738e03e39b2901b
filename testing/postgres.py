"""A throwaway PostgreSQL cluster for tests: ``initdb`` + ``pg_ctl`` on a loopback port, in a temp folder.

PostgreSQL refuses to run as root; as root, the server runs as the ``postgres`` user (made by
Debian's package) in a temp folder of its own under the system's temp root (pytest keeps its
own folders private to their owner, which would lock the server out of its data).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from .server import free_port


def pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


class Cluster:
    """A PostgreSQL server of its own, trusting local connections (loopback only)."""

    def __init__(self, root: Path) -> None:
        self._as: list[str] = []
        self._own: Path | None = None
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            root = self._own = Path(tempfile.mkdtemp(prefix="lora-bridge-postgres-"))
            shutil.chown(root, "postgres", "postgres")
        self.data, self.log, self.port = root / "pgdata", root / "postgres.log", free_port()
        self.user = "postgres" if self._as else os.environ.get("USER", "postgres")

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}\n"
                               f"{self.log.read_text(errors='replace')[-2000:] if self.log.exists() else ''}")

    def start(self) -> "Cluster":
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        assert initdb and pg_ctl, "PostgreSQL is not installed (.ci/setup installs it from the distribution's packages)"
        if not (self.data / "PG_VERSION").exists():  # a stopped cluster starts again with its data
            self._run(initdb, "-D", str(self.data), "-U", self.user, "--auth=trust", "--no-sync", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c max_connections=200"
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database (one per test that needs its own)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        pg_ctl = pg_bin("pg_ctl")
        if pg_ctl and (self.data / "postmaster.pid").exists():
            self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "stop")

    def remove(self) -> None:
        """Stop, and delete the folder made for a server run as ``postgres``."""
        self.stop()
        if self._own is not None:
            shutil.rmtree(self._own, ignore_errors=True)

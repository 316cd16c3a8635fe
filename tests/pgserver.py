"""A throwaway PostgreSQL cluster for the tests: ``initdb`` in a temporary folder, the server
listening on a Unix socket in that folder only (no TCP port), trust authentication, fsync off.

PostgreSQL refuses to run as root: when the tests run as root the server runs as the
``postgres`` user (the folder is handed to it); otherwise as the current user. ``find_bin``
looks on PATH, then under ``/usr/lib/postgresql/*/bin``; ``SKIP_REASON`` says why the
server cannot run here (None where it can).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

TOOLS = ("initdb", "pg_ctl", "postgres")


def find_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, newest version first."""
    on_path = shutil.which("initdb")
    cands = [Path(on_path).resolve().parent] if on_path else []
    cands += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True,
                                      key=lambda p: int(Path(p).parent.name)
                                      if Path(p).parent.name.isdigit() else 0)]
    for c in cands:
        if all((c / t).is_file() and os.access(c / t, os.X_OK) for t in TOOLS):
            return c
    return None


def _runas() -> list[str]:
    """The prefix that runs a command as the server's user."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def _skip_reason() -> str | None:
    if find_bin() is None:
        return "PostgreSQL binaries (initdb, pg_ctl, postgres) not found on PATH or under " \
               "/usr/lib/postgresql/*/bin"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    return None


SKIP_REASON = _skip_reason()


class PgServer:
    """One cluster: ``start()``, ``stop()``, ``url(db)`` and ``create_db(name)``."""

    USER = "gpunet"

    def __init__(self, root: Path | None = None) -> None:
        self.bin = find_bin()
        assert self.bin is not None, SKIP_REASON
        self.root = Path(root or tempfile.mkdtemp(prefix="gpunet-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o755)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.USER, "--no-sync",
                  "-E", "UTF8")
        self.running = False

    def _run(self, tool: str, *args: str) -> None:
        r = subprocess.run([*_runas(), str(self.bin / tool), *args], capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{tool} failed: {r.stdout}{r.stderr}")

    def start(self) -> None:
        opts = (f"-c listen_addresses='' -c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w",
                  "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions and disconnect clients)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def url(self, db: str = "postgres", password: str | None = None) -> str:
        """A ``postgresql://`` URL for database ``db`` over the cluster's Unix socket."""
        auth = self.USER + (f":{password}" if password else "")
        return f"postgresql://{auth}@/{db}?host={self.root}"

    def create_db(self, name: str) -> str:
        """Create an empty database ``name``; returns its URL."""
        import psycopg

        with psycopg.connect(host=str(self.root), user=self.USER, dbname="postgres",
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        """Stop the server (if running) and remove the cluster."""
        if self.running:
            try:
                self.stop("immediate")
            except RuntimeError:
                time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)

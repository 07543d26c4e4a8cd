"""Throwaway real servers — Redis, PostgreSQL, an S3-compatible store — for tests and benches.

Each server binds loopback on a free port, keeps its state in a fresh temporary directory,
answers a health check before ``start()`` returns, and can be stopped and started again on the
same port with its data kept (the limiter tests kill Redis mid-run, the storage outage tests
PostgreSQL). A missing binary raises :class:`ServerUnavailable` with the
command that installs it: a missing server is a failure, never a silent skip.

Binaries are found through ``$REDIS_SERVER_BIN`` / ``$PG_BIN_DIR`` first, then ``PATH``, then
Debian's ``/usr/lib/postgresql/<major>/bin``. PostgreSQL refuses to run as root, so as root it
runs as the ``postgres`` user through ``runuser`` (the Debian package creates that user).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "MotoS3Server",
    "PostgresServer",
    "RedisServer",
    "ServerUnavailable",
    "free_port",
]

_INSTALL_HINT = (
    "run `bash .ci/run` once, or install it yourself: `apt-get install -y redis-server postgresql`"
)


class ServerUnavailable(RuntimeError):
    """A server binary is missing or the server did not become healthy."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerUnavailable(f"server exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.01)
    raise ServerUnavailable(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class RedisServer:
    """``redis-server`` on a free loopback port, persistence off. ``dsn`` is stable across
    stop/start (the same port is reused), so clients can reconnect after a restart."""

    def __init__(self) -> None:
        self.binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
        if not self.binary:
            raise ServerUnavailable(f"redis-server not found; {_INSTALL_HINT}")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="qmtl-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        if self.running:
            return self
        assert self.binary is not None
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no",
        ]  # fmt: skip
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:  # a missing or unusable binary
            raise ServerUnavailable(f"cannot run {self.binary}: {exc.strerror}") from exc
        _wait_for_port(self.port, 10.0, self._proc)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    candidates = [os.environ.get("PG_BIN_DIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if directory and os.access(os.path.join(directory, name), os.X_OK):
            return os.path.join(directory, name)
    found = shutil.which(name)
    if found:
        return found
    raise ServerUnavailable(f"PostgreSQL's {name} not found; {_INSTALL_HINT}")


class PostgresServer:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``), trust auth, fsync off.

    ``create_database()`` gives each test its own database; ``dsn`` points at ``postgres``.
    ``stop()`` then ``start()`` restarts it on the same port with its databases intact, so
    clients see an outage and can reconnect; ``stop(mode="immediate")`` is a crash (no
    goodbye to clients, crash recovery on the next start). Tests that stop a server use one of
    their own, never the session's shared one.
    """

    def __init__(self) -> None:
        self.initdb = _pg_bin("initdb")
        self.pg_ctl = _pg_bin("pg_ctl")
        self.port = free_port()
        # Not pytest's tmp_path: it is root-only (0700) and the postgres user cannot enter it.
        self.dir = tempfile.mkdtemp(prefix="qmtl-pg-")
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if not runuser:
                raise ServerUnavailable("running as root needs `runuser` to start PostgreSQL")
            self._as_user = [runuser, "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self._initialized = False
        self._running = False

    @property
    def data_dir(self) -> str:
        return os.path.join(self.dir, "data")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ServerUnavailable(f"{Path(args[0]).name} failed: {result.stderr.strip()}")

    @property
    def running(self) -> bool:
        """Whether the postmaster runs — asked of ``pg_ctl status``, so a server that died
        behind our back counts as stopped and ``start()`` brings it back."""
        if not self._initialized:
            return False
        status = subprocess.run(
            [*self._as_user, self.pg_ctl, "-D", self.data_dir, "status"],
            capture_output=True,
            check=False,
        )
        self._running = status.returncode == 0
        return self._running

    def start(self) -> PostgresServer:
        if self.running:
            return self
        if not self._initialized:
            self._run(
                self.initdb, "-D", self.data_dir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--no-sync", "--no-instructions",
            )  # fmt: skip
            self._initialized = True
        options = (
            f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        log = os.path.join(self.dir, "log")
        self._run(self.pg_ctl, "-D", self.data_dir, "-l", log, "-w", "-o", options, "start")
        self._running = True
        return self

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server: ``fast`` ends client sessions politely, ``immediate`` kills them
        like a crash. Its data survives either way. A no-op when it is not running."""
        if self.running:
            self._run(self.pg_ctl, "-D", self.data_dir, "-m", mode, "-w", "stop")
            self._running = False

    def close(self) -> None:
        with contextlib.suppress(ServerUnavailable):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a plain identifier) and return its DSN."""
        if not name.isidentifier():
            raise ValueError(f"not a plain identifier: {name!r}")
        self._psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        if not name.isidentifier():
            raise ValueError(f"not a plain identifier: {name!r}")
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _psql(self, sql: str) -> None:
        psql = _pg_bin("psql")
        cmd = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"]
        cmd += ["-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c", sql]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServerUnavailable(f"psql failed: {result.stderr.strip()}")


class MotoS3Server:
    """moto's S3-compatible server in a thread of this process (``pip install 'moto[server]'``).

    Credentials are dummies; ``endpoint_url`` is ``http://127.0.0.1:PORT``."""

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise ServerUnavailable(
                "moto[server] is missing; install the dev extra: pip install -e '.[all]'"
            ) from exc
        self._server: Any = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log on stderr
        self.endpoint_url = ""

    def start(self) -> MotoS3Server:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    close = stop

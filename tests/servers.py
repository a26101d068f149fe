"""Real servers the tests and benches start and stop themselves: `mlflow server`, PostgreSQL.

Nothing here is mocked: PostgreSQL is the Debian package's own server,
initialised into a temporary folder and listening on a free 127.0.0.1 port;
`mlflow server` is the venv's. Tests reach these through conftest's session
fixtures; benches import this module as `tests.servers` (`python -m bench.x`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with served artifacts; sqlite unless `backend_uri` names another store."""

    def __init__(self, workdir: Path, port: int | None = None, app_name: str | None = None,
                 env: dict[str, str] | None = None, backend_uri: str | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.app_name = app_name
        self.env = env or {}
        self.backend_uri = backend_uri or f"sqlite:///{workdir / 'server.db'}"
        self.log_path = workdir / "server.log"

    def start(self, timeout_s: float = 90) -> None:
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.env)
        env.pop("MLFLOW_TRACKING_URI", None)
        app = ["--app-name", self.app_name] if self.app_name else []
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [f"{VENV_BIN}/mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", self.backend_uri,
             "--artifacts-destination", str(self.workdir / "artifacts"), *app],
            cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_http(f"{self.uri}/health", timeout_s, self.proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None


def postgres_bindir() -> Path:
    """Where `initdb` and `pg_ctl` are: on PATH, else the newest Debian `postgresql-NN` package's folder."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    return Path(found[-1]).parent


class PostgresServer:
    """A throwaway PostgreSQL cluster: `initdb` into a temporary folder, `pg_ctl start` on 127.0.0.1.

    `initdb` refuses to run as root, so as root the cluster belongs to the
    `postgres` user the Debian package creates (in a folder of its own under
    /tmp: pytest's folders are root's 0700). Trust authentication on loopback
    only; a password user exists for tests that need one in their URLs.
    """

    USER = "trainflow"
    PASSWORD = "pg-secret-Pa55"  # a throwaway cluster's; tests search artifacts for it

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="trainflow-pg-"))
        self.data = self.folder / "data"
        self.bindir = postgres_bindir()
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if self._owner else list(cmd)

    def start(self) -> None:
        if self._owner:
            os.chown(self.folder, self._owner.pw_uid, self._owner.pw_gid)
        pwfile = self.folder / "pw"
        pwfile.write_text(self.PASSWORD + "\n")
        if self._owner:
            os.chown(pwfile, self._owner.pw_uid, self._owner.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.USER, "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.folder / "server.log"), "-w", "-t", "60", "start")

    def url(self, database: str = "postgres", driver: str = "postgresql", password: bool = True) -> str:
        secret = f":{self.PASSWORD}" if password else ""
        return f"{driver}://{self.USER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL (the psycopg 3 driver, SQLAlchemy 2.1's default)."""
        import psycopg

        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, *cmd: str, check: bool = True) -> None:
        done = subprocess.run(self._as_owner(*cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              cwd=self.folder, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:1])} failed ({done.returncode}): {done.stderr[-2000:]}")

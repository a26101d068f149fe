"""Real servers the tests and benches start and stop themselves: `mlflow server`, PostgreSQL.

Nothing here is mocked: PostgreSQL is the Debian package's own server,
initialised into a temporary folder and listening on a free 127.0.0.1 port;
`mlflow server` is the venv's. Tests reach these through conftest's session
fixtures; benches import this module as `tests.servers` (`python -m bench.x`).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
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
from collections.abc import Callable
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


class SessionServers:
    """Servers the processes of one test session share: the first that needs one starts it, the rest find it.

    Each pytest-xdist worker started its own `mlflow server` and its own
    PostgreSQL with an `mlflow server` on it: seconds of CPU each, on the
    two cores the tests share, for servers a session can share (every test
    names its own models and databases, and finds its runs by its own
    experiment, study or run id). A folder named by `ENV`, made by the
    controlling process before the workers start, holds one record per
    server; a lock per server makes the first process that asks start it.
    A server that fails to start is recorded as failed, so every test that
    needs it fails with that error instead of starting it again. The
    controlling process stops them all when the session ends (`stop_all`),
    after every worker has finished.
    """

    ENV = "TRAINFLOW_TEST_SERVERS"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def create(cls) -> SessionServers:
        """The session's folder, named in the environment the workers inherit (the controlling process)."""
        folder = Path(tempfile.mkdtemp(prefix="trainflow-test-servers-"))
        os.environ[cls.ENV] = str(folder)  # the workers, started after this, inherit it
        return cls(folder)

    @classmethod
    def of_session(cls) -> SessionServers:
        """The folder `create` made, from this process's environment (a worker, or the only process)."""
        return cls(Path(os.environ[cls.ENV]))

    def mlflow(self, name: str, backend_uri: Callable[[], str] | None = None) -> MlflowServer:
        """The session's `mlflow server` called `name`; `backend_uri` makes its store (sqlite when None)."""
        def start() -> dict[str, object]:
            workdir = self.folder / name
            workdir.mkdir()
            server = MlflowServer(workdir, backend_uri=backend_uri() if backend_uri else None)
            try:
                server.start(timeout_s=180)
            except BaseException:
                server.stop()  # no record will name it: stop_all would never find it
                raise
            assert server.proc is not None
            return {"kind": "mlflow", "workdir": str(workdir), "port": server.port, "backend_uri": server.backend_uri,
                    "pid": server.proc.pid}

        record = self._get(name, start)
        return MlflowServer(Path(str(record["workdir"])), port=int(str(record["port"])),
                            backend_uri=str(record["backend_uri"]))

    def postgres(self, name: str = "postgres") -> PostgresServer:
        """The session's PostgreSQL cluster called `name`."""
        def start() -> dict[str, object]:
            server = PostgresServer()
            try:
                server.start()
            except BaseException:
                server.stop()
                raise
            return {"kind": "postgres", "port": server.port, "folder": str(server.folder)}

        record = self._get(name, start)
        return PostgresServer(port=int(str(record["port"])), folder=Path(str(record["folder"])))

    def _get(self, name: str, start: Callable[[], dict[str, object]]) -> dict[str, object]:
        record = self.folder / f"{name}.json"
        with open(self.folder / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not record.exists():
                try:
                    found = start()
                except Exception as exc:
                    found = {"kind": "failed", "error": f"the session's {name} did not start: {exc}"}
                record.write_text(json.dumps(found))
            found = dict(json.loads(record.read_text()))
        if found["kind"] == "failed":
            raise RuntimeError(found["error"])
        return found

    def stop_all(self) -> None:
        """Stop every server started in this session: the `mlflow server`s together, then the PostgreSQL they use."""
        records = [json.loads(path.read_text()) for path in self.folder.glob("*.json")]
        groups = [int(r["pid"]) for r in records if r["kind"] == "mlflow"]  # each leads its process group
        for pid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for pid in groups:  # not this process's children: they cannot be waited for
            while time.monotonic() < deadline and proc_state(pid) not in ("Z", "gone"):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):  # what is left of the group
                os.killpg(pid, signal.SIGKILL)
        for record in records:
            if record["kind"] == "postgres":
                PostgresServer(port=int(record["port"]), folder=Path(record["folder"])).stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (state first, then the parent's pid); [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def proc_state(pid: int) -> str:
    """`R`, `S`, `T` (stopped), `Z` (a zombie no parent of ours will reap) ...; `gone` once the process has ended."""
    return (proc_stat(pid) or ["gone"])[0]


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

    def __init__(self, port: int | None = None, folder: Path | None = None) -> None:
        """A new cluster's place, or (`port`, `folder`) those of one another process started."""
        self.port = port or free_port()
        self.folder = folder or Path(tempfile.mkdtemp(prefix="trainflow-pg-"))
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


SLURM_DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")


def slurm_bindir() -> dict[str, str]:
    """Where munge's and SLURM's daemons are (Debian puts them in /usr/sbin, often not on a user's PATH)."""
    found = {}
    for name in SLURM_DAEMONS:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
        if path is None:
            raise RuntimeError(f"no {name}: apt-get install --no-install-recommends slurmctld slurmd "
                               "slurm-client munge")
        found[name] = path
    return found


class SlurmCluster:
    """A one-node SLURM cluster on 127.0.0.1: munged, slurmctld and slurmd, everything in a temporary folder.

    No systemd: each daemon runs in the foreground (`-F`/`-D`) in a session
    of its own, so a test's timeout that kills its process group leaves them
    alone, and `stop` ends them by pid. Clients (`sbatch`, `srun`, `scancel`,
    `sinfo`) find the cluster through `SLURM_CONF`, which `env` gives.
    The node claims 4 CPUs on a 2-core box (`SlurmdParameters=config_overrides`)
    so that a 2-rank job and a 2-task array can run side by side; the partition
    over-subscribes for the same reason. The scheduler starts a batch job at
    once (`batch_sched_delay=0`): its default waits seconds. A requeued job
    waits 5 s for its old credential to expire (`cred_expire`; 120 by default)
    and is looked at every second (`sched_interval`; 60 by default).
    """

    PARTITION = "debug"

    def __init__(self, cpus: int = 4) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="trainflow-slurm-"))
        self.conf = self.folder / "slurm.conf"
        self.cpus = cpus
        self.ctld_port, self.slurmd_port = free_port(), free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.bin = slurm_bindir()

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs beside the usual environment."""
        return {"SLURM_CONF": str(self.conf)}

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        # a test run inside a SLURM job must not hand its own job's variables to the jobs it submits
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
            env.pop(key)
        return env

    def _write_conf(self) -> None:
        user = pwd.getpwuid(os.geteuid()).pw_name
        f = self.folder
        for sub in ("state", "spool", "log", "run"):
            (f / sub).mkdir(exist_ok=True)
        for folder in (f, f / "run"):  # munged refuses a socket whose folders others cannot search
            folder.chmod(0o755)
        lines = [
            "ClusterName=trainflow-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={f / 'run' / 'munge.socket.2'},cred_expire=5",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MailProg=/bin/true",
            "KillWait=5",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} Sockets=1 CoresPerSocket={self.cpus} "
            "ThreadsPerCore=1 RealMemory=20000 State=UNKNOWN",
            f"PartitionName={self.PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 60) -> None:
        f = self.folder
        self._write_conf()
        key_dir = f / "munge"
        key_dir.mkdir(mode=0o700, exist_ok=True)
        key = key_dir / "munge.key"
        subprocess.run([self.bin["mungekey"], "-c", "-k", str(key)], check=True, capture_output=True)
        self._spawn("munged", [self.bin["munged"], "-F", f"--key-file={key}",
                               f"--socket={f / 'run' / 'munge.socket.2'}", f"--pid-file={f / 'run' / 'munged.pid'}",
                               f"--log-file={f / 'log' / 'munged.log'}", f"--seed-file={key_dir / 'munged.seed'}"])
        self._wait_for(lambda: (f / "run" / "munge.socket.2").exists(), "munged's socket", timeout_s)
        self._spawn("slurmctld", [self.bin["slurmctld"], "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [self.bin["slurmd"], "-D", "-f", str(self.conf)])
        self._wait_for(self.idle, "sinfo to show the node idle", timeout_s)

    def idle(self) -> bool:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.client_env(), capture_output=True, text=True,
                              timeout=30)
        return done.returncode == 0 and done.stdout.strip() == "idle"

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "ab")  # noqa: SIM115 - lives as long as the daemon
        self.procs[name] = subprocess.Popen(cmd, cwd=self.folder, env=self.client_env(), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def _wait_for(self, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} before {what}: {self.logs(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout_s}s: {self.logs()}")
            time.sleep(0.1)

    def logs(self, *names: str) -> str:
        """The daemons' own logs' tails, for a failure message."""
        text = []
        for name in names or tuple(self.procs):
            for path in (self.folder / "log").glob(f"{name}*"):
                text.append(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}")
        return "\n".join(text)

    def stop(self) -> None:
        """End the daemons by pid, last started first; then the folder."""
        if "slurmctld" in self.procs:  # jobs still running are the tests' own: end them with the cluster
            subprocess.run(["scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name],
                           env=self.client_env(), capture_output=True, timeout=30, check=False)
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        shutil.rmtree(self.folder, ignore_errors=True)

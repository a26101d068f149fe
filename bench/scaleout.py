"""Scale-out figures on one box: tracking requests per train step and epoch, sweep throughput per machine count.

    uv run python -m bench.scaleout [--trials 9] [--machines 1,2,3]

Starts a real PostgreSQL (tests/servers.py) and an `mlflow server` whose
backend store is a database in it, with served artifacts, then:

1. **Requests**: three train runs of different sizes against that server,
   counting the server's own access-log lines per run (every REST call and
   artifact transfer a step makes is one line). Fitting requests =
   fixed + per_epoch * epochs + per_step * steps over the three gives the
   figures to size a server by.
2. **Throughput**: for 1, 2, 3 "machines" (independent `steps/sweep.py`
   processes, each its own folder and seed, started together on one study in
   PostgreSQL), the trial runs finished per minute, from the first machine's
   start to the last one's exit, and in the trials phase alone (first trial
   start to last trial end, imports excluded).

Last line: `scaleout_trials_per_min <1> <2> <3>`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.servers import MlflowServer, PostgresServer

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
         "callbacks.model_summary=null"]
REQUEST = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP')


def env_for(uri: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1")
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    return env


def requests_since(log: Path, offset: int) -> tuple[list[str], int]:
    text = log.read_bytes()[offset:].decode(errors="replace")
    paths = [m.group(2).split("?")[0] for m in REQUEST.finditer(text) if "/health" not in m.group(2)]
    return paths, log.stat().st_size


def count_train(server: MlflowServer, workdir: Path, epochs: int, batches: int) -> tuple[int, dict[str, int]]:
    _, offset = requests_since(server.log_path, 0)
    cmd = [sys.executable, "steps/train.py", "experiment=example", f"trainer.max_epochs={epochs}",
           f"trainer.min_epochs={epochs}", f"trainer.limit_train_batches={batches}", "callbacks.early_stopping=null",
           "registry.log_model=false", "tracking.experiment_name=requests", *QUIET,
           f"hydra.run.dir={workdir / f'train-{epochs}-{batches}'}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env_for(server.uri), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"train failed:\n{done.stderr[-3000:]}")
    time.sleep(1.0)  # the access log is written after the response
    paths, _ = requests_since(server.log_path, offset)
    by_endpoint: dict[str, int] = {}
    for path in paths:
        key = re.sub(r"/artifacts/.*", "/artifacts/…", path)
        by_endpoint[key] = by_endpoint.get(key, 0) + 1
    return len(paths), by_endpoint


def connections(postgres: PostgresServer) -> dict[str, int]:
    """Open PostgreSQL connections per database right now (pg_stat_activity), this probe's own left out."""
    import psycopg

    with psycopg.connect(postgres.url(), autocommit=True) as con:
        rows = con.execute("SELECT datname, count(*) FROM pg_stat_activity WHERE datname IS NOT NULL "
                           "AND pid <> pg_backend_pid() GROUP BY datname").fetchall()
    return {str(name): int(n) for name, n in rows}


def sweep(server: MlflowServer, postgres: PostgresServer, storage: str, workdir: Path, machines: int,
          trials: int) -> tuple[float, float, dict[str, int]]:
    """Wall seconds for `machines` processes to finish one `trials`-trial study, its trials phase, and the
    peak PostgreSQL connections per database meanwhile."""
    study = f"bench-{machines}"
    procs = []
    start = time.perf_counter()
    for index in range(machines):
        folder = workdir / f"{study}-machine-{index}"
        folder.mkdir(parents=True)
        cmd = [sys.executable, str(ROOT / "steps/sweep.py"), "hparams_search=digits_optuna", "experiment=example",
               "trainer.max_epochs=5", "trainer.min_epochs=5", "sweep.pruner=null", f"sweep.n_trials={trials}",
               f"sweep.storage={storage}", f"sweep.study_name={study}", f"seed={index}", "registry.log_model=false",
               f"tracking.experiment_name={study}", f"hydra.run.dir={folder / 'out'}", *QUIET]
        procs.append(subprocess.Popen(cmd, cwd=folder, env=env_for(server.uri), stdout=subprocess.DEVNULL,
                                      stderr=open(folder / "err", "w")))  # noqa: SIM115
    peak: dict[str, int] = {}
    while any(proc.poll() is None for proc in procs):
        for name, n in connections(postgres).items():
            peak[name] = max(peak.get(name, 0), n)
        time.sleep(0.5)
    codes = [proc.wait() for proc in procs]
    wall = time.perf_counter() - start
    if any(codes):
        sys.exit(f"sweep with {machines} machines failed: {codes}")
    import optuna

    done = optuna.load_study(study_name=study, storage=storage).trials
    assert len(done) == trials, len(done)
    first = min(t.datetime_start for t in done if t.datetime_start)
    last = max(t.datetime_complete for t in done if t.datetime_complete)
    return wall, (last - first).total_seconds(), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--machines", default="1,2,3")
    args = parser.parse_args()
    postgres = PostgresServer()
    postgres.start()
    with tempfile.TemporaryDirectory(prefix="trainflow-bench-scaleout-") as tmp:
        workdir = Path(tmp)
        server = MlflowServer(workdir, backend_uri=postgres.create_database("mlflow"))
        server.start(timeout_s=180)
        try:
            sizes = [(2, 10), (4, 10), (2, 20)]
            counts = {size: count_train(server, workdir, *size) for size in sizes}
            (r1, by1), (r2, _), (r3, _) = (counts[s] for s in sizes)
            per_epoch = (r2 - r1) / 2
            per_step = (r3 - r1) / (2 * 10)
            fixed = r1 - 2 * per_epoch - 20 * per_step
            print(f"{'epochs':>7}{'steps':>7}{'requests':>10}")
            for (epochs, batches), (total, _) in counts.items():
                print(f"{epochs:>7}{epochs * batches:>7}{total:>10}")
            print(f"requests per train run: {fixed:.1f} fixed + {per_epoch:.2f} per epoch + {per_step:.3f} per step")
            print("by endpoint (2 epochs x 10 steps): " + ", ".join(
                f"{k} {v}" for k, v in sorted(by1.items(), key=lambda kv: -kv[1])))

            rates = []
            print(f"{'machines':>9}{'wall s':>9}{'trials/min':>12}{'phase s':>9}{'trials/min (phase)':>20}"
                  f"{'peak conns optuna':>19}{'peak conns mlflow':>19}")
            for machines in (int(m) for m in args.machines.split(",")):
                name = f"optuna_{machines}"
                storage = postgres.create_database(name)
                wall, phase, peak = sweep(server, postgres, storage, workdir, machines, args.trials)
                rates.append(args.trials / wall * 60)
                print(f"{machines:>9}{wall:>9.1f}{rates[-1]:>12.2f}{phase:>9.1f}{args.trials / phase * 60:>20.2f}"
                      f"{peak.get(name, 0):>19}{peak.get('mlflow', 0):>19}", flush=True)
            print("scaleout_trials_per_min " + " ".join(f"{r:.2f}" for r in rates))
        finally:
            server.stop()
            postgres.stop()


if __name__ == "__main__":
    main()

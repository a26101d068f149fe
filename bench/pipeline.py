"""End-to-end pipeline wall time against a local `mlflow server` (digits, 3 epochs).

    uv run python bench/pipeline.py [--epochs 3]

Starts a server on 127.0.0.1 in a temporary folder, runs
`mlflow run . --env-manager local` twice (the second fully cached), and prints
where the time went: each step run's duration with its phase metrics
(`time/startup_s` = process start to run attach, i.e. imports; `time/fit_s`,
`time/log_model_s`, ...), plus the pipeline's own overhead.
Targets (issue 3): first run <= 45 s, cached re-run <= 10 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from trainflow.tracking import tags as tag

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{workdir / 'server.db'}", "--artifacts-destination",
         str(workdir / "artifacts")],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            return proc, uri
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("mlflow server did not start")


def run_pipeline(uri: str, epochs: int, experiment: str) -> float:
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PATH=f"{BIN}:{os.environ['PATH']}")
    cmd = [str(BIN / "mlflow"), "run", str(ROOT), "--env-manager", "local", "--experiment-name", experiment,
           "-P", "experiment=example", "-P", f"trainer.max_epochs={epochs}", "-P", "extras.print_config=false",
           "-P", "callbacks.rich_progress_bar=null", "-P", "trainer.enable_progress_bar=false"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"pipeline failed:\n{done.stderr[-3000:]}")
    return elapsed


def report(uri: str, experiment: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment).experiment_id
    runs = sorted(client.search_runs([exp]), key=lambda r: r.info.start_time)
    print(f"{'run':<14}{'wall s':>8}  phases (s)")
    for run in runs:
        step = run.data.tags.get(tag.STEP, "?")
        wall = (run.info.end_time - run.info.start_time) / 1000
        phases = {k.removeprefix("time/").removesuffix("_s"): v for k, v in run.data.metrics.items()
                  if k.startswith("time/")}
        text = "  ".join(f"{k}={v:.1f}" for k, v in sorted(phases.items()))
        print(f"{step:<14}{wall:>8.1f}  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainflow-bench-") as tmp:
        t0 = time.perf_counter()
        server, uri = start_server(Path(tmp))
        print(f"server start: {time.perf_counter() - t0:.1f}s ({uri})")
        try:
            first = run_pipeline(uri, args.epochs, "bench")
            cached = run_pipeline(uri, args.epochs, "bench")
            report(uri, "bench")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    print(f"pipeline_first_s {first:.1f}")
    print(f"pipeline_cached_s {cached:.1f}")


if __name__ == "__main__":
    main()

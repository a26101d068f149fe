"""End-to-end pipeline wall time against a local `mlflow server` (digits, 3 epochs), next to its floors.

    uv run python bench/pipeline.py [--epochs 3] [--in-process false] [--floor-repeats 3]

Starts a server on 127.0.0.1 in a temporary folder, runs
`mlflow run . --env-manager local` twice (the second fully cached), and prints
where the time went: each step run's duration with its phase metrics
(`time/startup_s` = process start, or for a step main runs in its own
process the step's start, to run attach; `time/fit_s`, `time/log_model_s`, ...).

Floors, timed in the same run (median of `--floor-repeats`, half before the
pipelines and half after, so drift in the machine's speed hits both):
T_import = `python -c "import torch, lightning, mlflow"` (what one process
training with MLflow must import) and T_cli = `mlflow --version` (the
`mlflow run` CLI alone). Goals (issue 15): first run <= 2.0 x T_import,
cached re-run <= 1.5 x T_cli. Next to each ratio, the least any pipeline
under `mlflow run` can take, in the same unit: the CLI's own process (T_cli)
plus one process that imports what the run needs, T_import for a first run
and T_lookup = `python -c "import mlflow, hydra"` for a cached one (main
must ask the tracking store for its cached runs). `--in-process false` gives every step its own
process (the pipeline before issue 15) for a before/after in one sitting.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
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


def run_pipeline(uri: str, epochs: int, experiment: str, in_process: str | None) -> float:
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PATH=f"{BIN}:{os.environ['PATH']}")
    cmd = [str(BIN / "mlflow"), "run", str(ROOT), "--env-manager", "local", "--experiment-name", experiment,
           "-P", "experiment=example", "-P", f"trainer.max_epochs={epochs}", "-P", "extras.print_config=false",
           "-P", "callbacks.rich_progress_bar=null", "-P", "trainer.enable_progress_bar=false"]
    if in_process is not None:  # not passed by default: the bench also runs in checkouts older than the switch
        cmd += ["-P", f"in_process={in_process}"]
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


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def floors(repeats: int) -> dict[str, list[float]]:
    if repeats:  # untimed: the first import after a while reads from disk, the pipelines' from the page cache
        timed([sys.executable, "-c", "import torch, lightning, mlflow, hydra"])
    return {
        "T_import": [timed([sys.executable, "-c", "import torch, lightning, mlflow"]) for _ in range(repeats)],
        "T_cli": [timed([str(BIN / "mlflow"), "--version"]) for _ in range(repeats)],
        "T_lookup": [timed([sys.executable, "-c", "import mlflow, hydra"]) for _ in range(repeats)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--in-process", choices=("true", "false"), default=None)
    parser.add_argument("--floor-repeats", type=int, default=3)
    args = parser.parse_args()
    before = floors((args.floor_repeats + 1) // 2)
    with tempfile.TemporaryDirectory(prefix="trainflow-bench-") as tmp:
        t0 = time.perf_counter()
        server, uri = start_server(Path(tmp))
        print(f"server start: {time.perf_counter() - t0:.1f}s ({uri})")
        try:
            first = run_pipeline(uri, args.epochs, "bench", args.in_process)
            cached = run_pipeline(uri, args.epochs, "bench", args.in_process)
            report(uri, "bench")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    after = floors(args.floor_repeats // 2)
    floor = {k: statistics.median(before[k] + after[k]) for k in before}
    for name, cmd in (("T_import", 'python -c "import torch, lightning, mlflow"'), ("T_cli", "mlflow --version"),
                      ("T_lookup", 'python -c "import mlflow, hydra"')):
        runs = " ".join(f"{t:.1f}" for t in before[name] + after[name])
        print(f"{name:<9}{floor[name]:6.1f} s  median of [{runs}]  ({cmd})")
    least_first = (floor["T_cli"] + floor["T_import"]) / floor["T_import"]
    least_cached = (floor["T_cli"] + floor["T_lookup"]) / floor["T_cli"]
    print(f"first    {first:6.1f} s  = {first / floor['T_import']:.2f} x T_import  (goal <= 2.0; "
          f"T_cli + T_import = {least_first:.2f} x)")
    print(f"cached   {cached:6.1f} s  = {cached / floor['T_cli']:.2f} x T_cli     (goal <= 1.5; "
          f"T_cli + T_lookup = {least_cached:.2f} x)")
    print(f"pipeline_first_s {first:.1f}")
    print(f"pipeline_cached_s {cached:.1f}")
    print(f"pipeline_first_ratio {first / floor['T_import']:.2f}")
    print(f"pipeline_cached_ratio {cached / floor['T_cli']:.2f}")
    print(f"pipeline_first_least_ratio {least_first:.2f}")
    print(f"pipeline_cached_least_ratio {least_cached:.2f}")


if __name__ == "__main__":
    main()

"""Sweep wall time: the same 8-trial study with 2 worker processes against 1.

    uv run python bench/sweep.py [--trials 8] [--epochs 40] [--rounds 2] [--default-threads] [--baseline DIR]

Each round runs `python steps/sweep.py hparams_search=digits_optuna
experiment=example` once per variant (order rotating per round, so all see
the same machine), each against its own temporary sqlite tracking store:

- `1`: `sweep.n_workers=1` at one torch thread (OMP_NUM_THREADS=1);
- `2`: `sweep.n_workers=2`: the sweep's process + one worker process, one
  torch thread each (the sweep sets that itself); steps/sweep.py starts the
  worker right after composing its config, so the worker's imports overlap
  the sweep opening its run and study (trainflow.sweep.worker.prewarm_workers);
- `1dt` (with `--default-threads`): `sweep.n_workers=1` at torch's default
  thread count (2 here). For this tiny MLP two threads are slower than one,
  and on a loaded machine far slower, so comparing `2` against it would
  credit the thread setting to the workers: `1` is the like-for-like baseline.
- `2base` (with `--baseline DIR`): `2` run from another checkout of trainflow
  (`git archive <commit> | tar -x -C DIR`; its `steps/` and `src/`, this venv), in
  the same rounds: a change's before and after on the same machine and hour.

Trials train `--epochs` full epochs of digits (min_epochs = max_epochs and
`sweep.pruner=null`, so every variant does the same work; early stopping
cannot cut a trial short) and skip the rich progress bar and config tree.

Timed: the whole command (process start to exit: imports, study creation,
worker start-up, trials, summary), its CPU time with the worker processes'
(`cores used` = CPU / wall: ~1 for one worker, up to 2 with two when both
cores are free) and, from the parent run, the trials phase (`time/trials_s`)
and each trial run's duration. The machine's 1-minute load
average before each run is printed: the machine is shared, and with other
jobs on its two cores a second worker has no free core to use. The ratio is
the median `2` wall time over the median `1` wall time; on 2 idle cores the
target is <= 0.65. After the rounds, two bare single-thread torch loops are
timed at once and alone: how much two processes slow each other on this
machine with no trainflow code at all. The last line is
`sweep_parallel_ratio <ratio>`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainflow.tracking import tags as tag

ROOT = Path(__file__).resolve().parents[1]


# variant -> (sweep.n_workers, extra environment)
VARIANTS: dict[str, tuple[int, dict[str, str]]] = {
    "1": (1, {"OMP_NUM_THREADS": "1"}),
    "2": (2, {}),
    "1dt": (1, {}),
    "2base": (2, {}),
}


def run_sweep(workdir: Path, variant: str, trials: int, epochs: int,
              root: Path = ROOT) -> tuple[float, float, str]:
    """Wall and CPU seconds of one sweep command (worker processes included), and its tracking URI.

    `root`: the checkout whose steps/ and src/ run (`2base`: the baseline's).
    """
    workers, extra = VARIANTS[variant]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true", **extra)
    if root != ROOT:
        env["PYTHONPATH"] = str(root / "src")
    env.pop("MLFLOW_RUN_ID", None)
    if "OMP_NUM_THREADS" not in extra:
        env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, "steps/sweep.py", "hparams_search=digits_optuna", "experiment=example",
           f"trainer.max_epochs={epochs}", f"trainer.min_epochs={epochs}", "sweep.pruner=null",
           f"sweep.n_trials={trials}", f"sweep.n_workers={workers}", "extras.print_config=false",
           "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={workdir / 'out'}", f"paths.cache_dir={workdir / 'cache'}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        sys.exit(f"sweep {variant} failed:\n{done.stderr[-3000:]}")
    return wall, cpu, uri


LOOP = """
import time, torch
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
opt = torch.optim.Adam(net.parameters())
x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
start = time.perf_counter()
for _ in range(4000):
    loss = torch.nn.functional.cross_entropy(net(x), y); opt.zero_grad(); loss.backward(); opt.step()
print(time.perf_counter() - start)
"""


def machine_floor() -> float:
    """Two single-thread torch loops at once over one alone: what 2 cores give two trials, no trainflow involved.

    On a virtual machine two vCPUs may share a physical core or its caches, so
    this is often well above 1; the trials phase cannot beat half of it.
    """
    def loops(n: int) -> list[float]:
        procs = [subprocess.Popen([sys.executable, "-c", LOOP], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return [float(proc.communicate()[0]) for proc in procs]

    alone = statistics.median(loops(1)[0] for _ in range(3))
    together = statistics.median(t for _ in range(3) for t in loops(2))
    return together / alone


def phases(uri: str) -> dict[str, float]:
    """The parent's trials phase and the mean trial run duration."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get(tag.STEP) == "sweep")
    trial_runs = [r for r in runs if r is not parent]
    trials = [(r.info.end_time - r.info.start_time) / 1000 for r in trial_runs]
    # a worker process's start-up: how long after the sweep's run its first trial run opens
    helpers = [r.info.start_time for r in trial_runs if r.data.tags.get(tag.TRIAL_WORKER, "0") != "0"]
    lag = (min(helpers) - parent.info.start_time) / 1000 if helpers else float("nan")
    return {"trials_phase_s": parent.data.metrics.get("time/trials_s", float("nan")),
            "trial_mean_s": statistics.mean(trials), "trials": float(len(trials)), "worker_lag_s": lag}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--default-threads", action="store_true", help="add the 1dt variant")
    parser.add_argument("--baseline", type=Path, help="another checkout: add the 2base variant run from it")
    args = parser.parse_args()
    names = ["1", "2", "1dt"] if args.default_threads else ["1", "2"]
    if args.baseline:
        names.append("2base")
    walls: dict[str, list[float]] = {v: [] for v in names}
    trial_phases: dict[str, list[float]] = {v: [] for v in names}
    lags: dict[str, list[float]] = {v: [] for v in names}
    print(f"{'round':<7}{'variant':>8}{'load':>6}{'wall s':>9}{'cores used':>12}{'trials phase s':>16}"
          f"{'mean trial s':>14}{'worker lag s':>14}")
    for index in range(args.rounds):
        shift = index % len(names)
        for variant in names[shift:] + names[:shift]:
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory(prefix="trainflow-bench-sweep-") as tmp:
                root = args.baseline.resolve() if variant == "2base" else ROOT
                wall, cpu, uri = run_sweep(Path(tmp), variant, args.trials, args.epochs, root)
                figures = phases(uri)
            assert figures["trials"] == args.trials, figures
            walls[variant].append(wall)
            trial_phases[variant].append(figures["trials_phase_s"])
            lags[variant].append(figures["worker_lag_s"])
            print(f"{index:<7}{variant:>8}{load:>6.1f}{wall:>9.1f}{cpu / wall:>12.2f}{figures['trials_phase_s']:>16.1f}"
                  f"{figures['trial_mean_s']:>14.2f}{figures['worker_lag_s']:>14.1f}", flush=True)
    median = {v: statistics.median(w) for v, w in walls.items()}
    print(f"median wall ({args.trials} trials, {args.epochs} epochs each): "
          + ", ".join(f"{v} {s:.1f}s" for v, s in median.items()))
    phase = {v: statistics.median(w) for v, w in trial_phases.items()}
    print(f"trials phase only (no imports, start-up or exit), 2 / 1: {phase['2'] / phase['1']:.3f}")
    if "2base" in median:
        print(f"baseline ({args.baseline}) 2 workers / 1 worker: {median['2base'] / median['1']:.3f}; "
              f"this checkout's 2 workers / the baseline's: {median['2'] / median['2base']:.3f}")
    print("worker 1's first trial, seconds after the sweep's run opened (median): "
          + ", ".join(f"{v} {statistics.median(w):.1f}s" for v, w in lags.items() if v.startswith("2")))
    if "1dt" in median:
        print(f"2 workers / 1 worker at torch's default threads (breakdown): {median['2'] / median['1dt']:.3f}")
    floor = machine_floor()
    print(f"machine: two single-thread torch loops at once run {floor:.2f}x slower each than one alone "
          f"(best trials-phase ratio on this machine: {floor / 2:.2f})")
    print(f"sweep_parallel_ratio {median['2'] / median['1']:.3f}")


if __name__ == "__main__":
    main()

"""What reproducing a train run costs over running its step: `steps/reproduce.py` against `steps/train.py`.

    uv run python bench/reproduce.py [--rounds 3] [--baseline DIR]

One deterministic digits train run (`experiment=example`, 2 epochs of 8
batches) is made in a temporary sqlite store. Each round then times, in a
rotating order so that all see the same machine:

- `step`: `python steps/train.py` with the run's own overrides, attached to a
  new run (`MLFLOW_RUN_ID`) as `reproduce` attaches it: the floor;
- `reproduce`: `python steps/reproduce.py run_id=<the run> allow_drift=true`: reading the run,
  the drift check (which composes today's config), the step, the comparison;
- `reproduce-base` (with `--baseline DIR`): the same from another checkout
  (`git archive <commit> | tar -x -C DIR`; its `steps/` and `src/`, this
  venv): a change's before and after in the same rounds.

Timed: the whole command (process start to exit) and its CPU time with its
children's. The last line is `reproduce_ratio <median reproduce / median step>`.
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

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["experiment=example", "trainer.max_epochs=2", "trainer.limit_train_batches=8",
             "trainer.deterministic=true", "extras.print_config=false", "callbacks.rich_progress_bar=null",
             "trainer.enable_progress_bar=false", "registry.log_model=false"]


def timed(cmd: list[str], env: dict[str, str], root: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one command, its children included; exits on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[1:3])} failed:\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout: add reproduce-base, run from it")
    args = parser.parse_args()
    from mlflow import MlflowClient

    names = ["step", "reproduce", *(["reproduce-base"] if args.baseline else [])]
    walls: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="trainflow-bench-reproduce-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true",
                   TRAINFLOW_LOG_DIR=str(Path(tmp) / "logs"), TRAINFLOW_CACHE_DIR=str(Path(tmp) / "cache"))
        env.pop("MLFLOW_RUN_ID", None)
        timed([sys.executable, "steps/train.py", *OVERRIDES], env, ROOT)
        client = MlflowClient(uri)
        [original] = client.search_runs([e.experiment_id for e in client.search_experiments()])
        print(f"{'round':<7}{'variant':>16}{'load':>6}{'wall s':>9}{'cpu s':>8}")
        for index in range(args.rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                load = os.getloadavg()[0]
                root, run_env = ROOT, dict(env)
                if name == "step":
                    run_env["MLFLOW_RUN_ID"] = client.create_run(original.info.experiment_id).info.run_id
                    cmd = [sys.executable, "steps/train.py", *OVERRIDES]
                else:
                    # a baseline's copy is not the commit the run was made from: drift, run anyway
                    cmd = [sys.executable, "steps/reproduce.py", f"run_id={original.info.run_id}", "allow_drift=true"]
                if name == "reproduce-base":
                    root = args.baseline.resolve()
                    run_env["PYTHONPATH"] = str(root / "src")
                wall, cpu = timed(cmd, run_env, root)
                walls[name].append(wall)
                print(f"{index:<7}{name:>16}{load:>6.1f}{wall:>9.2f}{cpu:>8.2f}", flush=True)
    medians = {name: statistics.median(values) for name, values in walls.items()}
    print("medians: " + ", ".join(f"{name} {value:.2f} s" for name, value in medians.items()))
    print(f"reproduce_ratio {medians['reproduce'] / medians['step']:.2f}")


if __name__ == "__main__":
    main()

"""Startup: process start to the first optimizer step of `steps/train.py experiment=example`.

    uv run python bench/startup.py                # 3 repeats
    uv run python bench/startup.py --repeats 5 --importtime

Each repeat runs, one after the other (interleaved, so both see the same
machine state):

1. `python -c "import torch, lightning, mlflow"`: the floor any train step
   pays before it can do anything;
2. `python steps/train.py experiment=example <overrides>` with one callback
   added from this file (`+callbacks.bench_first_step._target_=startup.first_step_probe`,
   found through PYTHONPATH=bench). The probe prints wall-clock timestamps at
   its creation (config composed, run opened, data and model built), at
   `on_fit_start`, at `on_train_start` (after the sanity validation) and at the
   end of the first training batch (after the first optimizer step), plus
   which heavy modules are loaded at that moment.

Times are from just before the parent starts the child (so they include
interpreter start-up) to those timestamps; medians over the repeats. Both run
with this interpreter (`sys.executable`, the project venv's python), not
through `uv run`.

The overrides only change what happens after the first step
(`trainer.max_epochs=1 trainer.min_epochs=1 trainer.limit_train_batches=2
trainer.limit_val_batches=2 test=false registry.log_model=false`), plus
`hydra.run.dir` and `paths.cache_dir` in a temporary folder. The tracking
store is a temporary sqlite file whose tables and `trainflow` experiment are
created beforehand (the one-off table creation of a new store is timed
separately), and one untimed warm-up run fills the dataset cache and the page
cache: repeated runs on a checkout are what a user waits for.

The last line is `startup_first_step_s <median seconds>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
TAG = "BENCH_STARTUP"

# Modules worth knowing about: what a digits train step needs, and heavy ones it must not pull in.
WATCH = (
    "torch", "lightning", "torchmetrics", "mlflow", "sklearn", "scipy", "numpy", "pandas", "pyarrow",
    "sqlalchemy", "alembic", "rich", "hydra", "torch._dynamo", "torchvision",
)
MUST_NOT = ("timm", "albumentations", "mlflow.pytorch", "pytorch_lightning", "optuna", "transformers",
            "conllu", "flask", "cv2")


# -- the probe, imported by the child --------------------------------------
def _emit(event: str, **extra: Any) -> None:
    print(f"{TAG} {json.dumps({'event': event, 't': time.time(), **extra})}", flush=True)


def first_step_probe() -> Any:
    """Hydra target: a callback that reports when training starts."""
    _emit("probe_created")
    from lightning.pytorch import Callback

    class FirstStepProbe(Callback):
        def __init__(self) -> None:
            self.done = False

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            _emit("fit_start")

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            _emit("train_start")

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            if self.done:
                return
            self.done = True
            _emit("first_step", loaded=[m for m in WATCH + MUST_NOT if m in sys.modules],
                  n_modules=len(sys.modules))

    return FirstStepProbe()


# -- the parent ---------------------------------------------------------------
def _env(uri: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    env["MLFLOW_TRACKING_URI"] = uri
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH", "")) if p)
    return env


def time_imports(env: dict[str, str]) -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "import torch, lightning, mlflow"], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - t0


def train_command(run_dir: Path, cache: Path, extra: list[str] | None = None) -> list[str]:
    return [
        *(extra or []), "steps/train.py", "experiment=example",
        "trainer.max_epochs=1", "trainer.min_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "test=false",
        "registry.log_model=false", f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}",
        "+callbacks.bench_first_step._target_=startup.first_step_probe",
    ]


def time_train(env: dict[str, str], run_dir: Path, cache: Path) -> dict[str, Any]:
    t0 = time.time()
    proc = subprocess.run([sys.executable, *train_command(run_dir, cache)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    total = time.time() - t0
    events: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith(TAG + " "):
            event = json.loads(line[len(TAG) + 1:])
            events[event["event"]] = event
    if proc.returncode != 0 or "first_step" not in events:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"train step failed (exit {proc.returncode}) or never reached its first step")
    out = {name: events[name]["t"] - t0 for name in ("probe_created", "fit_start", "train_start", "first_step")}
    out["total"] = total
    out["loaded"] = events["first_step"]["loaded"]
    out["n_modules"] = events["first_step"]["n_modules"]
    return out


def import_profile(env: dict[str, str], run_dir: Path, cache: Path) -> list[tuple[str, int, int]]:
    """`python -X importtime` of the same command: (module, depth, self us), in import order's
    post-order (a module's line follows the lines of what it imported)."""
    proc = subprocess.run([sys.executable, *train_command(run_dir, cache, ["-X", "importtime"])], env=env,
                          cwd=ROOT, capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cum, raw = line[len("import time:"):].split("|", 2)
        name = raw.strip()
        # clamped: a module imported while another thread imports too can read negative
        rows.append((name, (len(raw) - len(raw.lstrip()) - 1) // 2, max(int(self_us), 0)))
    return rows


def summarize_imports(rows: list[tuple[str, int, int]], top: int) -> None:
    """Self time per top-level package, and which package first pulled each one in."""
    per_pkg: dict[str, int] = {}
    first_by: dict[str, str] = {}
    for i, (name, depth, self_us) in enumerate(rows):
        pkg = name.split(".")[0]
        per_pkg[pkg] = per_pkg.get(pkg, 0) + self_us
        if pkg not in first_by:
            # walk up the import chain to the first module of another package
            j, d, parent = i, depth, "(run time: a function, not a module body)"
            while d > 0:
                j = next((k for k in range(j + 1, len(rows)) if rows[k][1] < d), len(rows))
                if j == len(rows):
                    break
                d = rows[j][1]
                if rows[j][0].split(".")[0] != pkg:
                    parent = rows[j][0]
                    break
            first_by[pkg] = parent
    total = sum(per_pkg.values())
    print(f"\nimport time by package (python -X importtime, one run; self time of the package's own "
          f"modules, total {total / 1e6:.2f}s), and the module that first imported it:")
    for pkg, us in sorted(per_pkg.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {us / 1e6:6.2f}s  {pkg:<22} first imported by {first_by[pkg]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--importtime", action="store_true",
                        help="also run once under `python -X importtime` and list the costliest imports")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="trainflow-startup-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = _env(uri)
    t0 = time.time()
    subprocess.run([sys.executable, "-c",
                    "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).create_experiment("
                    "'trainflow', artifact_location=sys.argv[2])", uri, (tmp / "mlruns").as_uri()],
                   env=env, cwd=ROOT, check=True, capture_output=True)
    store_s = time.time() - t0

    # Warm-up (untimed in the medians): fills the page cache and the dataset
    # cache, as any earlier run on this checkout would have.
    cache = tmp / "cache"
    warm = time_train(env, tmp / "warmup", cache)
    print(f"warm-up: first step {warm['first_step']:.2f}s", file=sys.stderr, flush=True)

    imports, trains = [], []
    for i in range(args.repeats):
        imports.append(time_imports(env))
        trains.append(time_train(env, tmp / f"run{i}", cache))
        print(f"repeat {i + 1}/{args.repeats}: imports {imports[-1]:.2f}s, first step "
              f"{trains[-1]['first_step']:.2f}s", file=sys.stderr, flush=True)

    def med(key: str) -> float:
        return statistics.median(t[key] for t in trains)

    first = med("first_step")
    print()
    print(f"startup of `python steps/train.py experiment=example`, median of {args.repeats} "
          f"(seconds from starting the process)")
    label = 'python -c "import torch, lightning, mlflow"'
    runs = ", ".join(f"{x:.2f}" for x in imports)
    print(f"{label:<46} {statistics.median(imports):6.2f}  (runs: {runs})")
    print(f"{'train: callbacks built (run open, data+model)':<46} {med('probe_created'):6.2f}")
    print(f"{'train: on_fit_start':<46} {med('fit_start'):6.2f}")
    print(f"{'train: on_train_start (after sanity val)':<46} {med('train_start'):6.2f}")
    runs = ", ".join(f"{t['first_step']:.2f}" for t in trains)
    print(f"{'train: first optimizer step done':<46} {first:6.2f}  (runs: {runs})")
    print(f"{'train: process exit (2 steps, val, checkpoint)':<46} {med('total'):6.2f}")
    print(f"{'one-off: new sqlite store + experiment':<46} {store_s:6.2f}  (not in the figures above)")
    print(f"{'warm-up run (first after store creation)':<46} {warm['first_step']:6.2f}  (not in the medians)")
    loaded = trains[-1]["loaded"]
    print(f"modules at the first step: {trains[-1]['n_modules']}; watched and loaded: "
          f"{', '.join(m for m in WATCH if m in loaded) or '-'}")
    bad = [m for m in MUST_NOT if m in loaded]
    print("must not be loaded for digits: " + ", ".join(f"{m}={'LOADED' if m in loaded else 'no'}"
                                                        for m in MUST_NOT))
    if args.importtime:
        summarize_imports(import_profile(env, tmp / "importtime", cache), top=20)
    if bad:
        print(f"WARNING: heavy modules loaded for the digits config: {', '.join(bad)}")
    print(f"startup_first_step_s {first:.2f}")


if __name__ == "__main__":
    main()

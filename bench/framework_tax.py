"""Framework tax: trainflow's train step vs a bare PyTorch loop, steps per second.

    uv run python bench/framework_tax.py                 # defaults: --epochs 10 --rounds 5
    uv run python bench/framework_tax.py --epochs 6 --rounds 3

Both sides do the same optimizer steps: SimpleDenseNet with the sizes of
`experiment=example`, the digits train split from trainflow's DigitsDataModule
(its own DataLoader: batch 64, shuffle, num_workers 0), CrossEntropyLoss, Adam
(lr and weight decay from the config), gradient-norm clipping at
`trainer.gradient_clip_val`, CPU, `torch.set_num_threads(1)`.

- bare:  a hand-written `for x, y in loader:` loop.
- ours:  `trainflow.training.train.train(cfg, run)` itself, inside
         `trainflow.tracking.run.step_run("train", cfg)`, cfg composed from the
         real configs with `experiment=example`: DataModule, ClassificationModule
         (torchmetrics per step), every configured callback (checkpoint +
         upload, early stopping, model summary, RichProgressBar), RunLogger
         into a real MLflow run in a temporary sqlite store. Only
         `trainer.max_epochs/min_epochs`, `test=false`,
         `extras.print_config=false` and the paths are overridden, plus one
         timing callback.
- ours_nopbar: the same without the progress bar.

What is timed: the interval between the ends of consecutive optimizer steps
within one training epoch (bare: right after `optimizer.step()`; ours: a
callback's `on_train_batch_end`, which Lightning calls after the optimizer
step). So a step's time includes fetching its batch and every hook, metric
update, logger call and progress-bar update between two steps, and nothing
that happens once per epoch (DataLoader iterator creation, validation,
checkpointing, epoch-end logging): each epoch of N batches gives N-1
intervals. Epoch 0 is warm-up and is not counted. Per round and variant the
figure is the mean step time (sum of intervals / count); the table shows the
median over rounds, which run interleaved (bare, ours, ours_nopbar, rotated
each round). Per-epoch costs of ours are shown separately (`epoch tail`:
last step end of an epoch to the next epoch's start: epoch-end hooks,
validation, checkpoint save + staging).

The last line is `framework_tax <ratio>`: ours (as configured, progress bar
on) time per step / bare time per step.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Timing records of the `ours` variants, filled by StepTimer (found by Hydra
# through its module name, `__main__` when run as a script).
_RECORDS: list[dict[str, Any]] = []


def _step_timer_class() -> type:
    from lightning.pytorch import Callback

    class StepTimer(Callback):
        """Timestamps of epoch starts and of every optimizer step's end."""

        def __init__(self) -> None:
            self.epochs: list[dict[str, Any]] = []
            self.threads = None
            _RECORDS.append({"epochs": self.epochs, "timer": self})

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            import torch

            self.threads = torch.get_num_threads()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.epochs.append({"start": time.perf_counter_ns(), "ends": []})

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            self.epochs[-1]["ends"].append(time.perf_counter_ns())

    return StepTimer


def step_timer() -> Any:
    """Hydra target of the timing callback."""
    return _step_timer_class()()


# -- configuration ----------------------------------------------------------
def compose_train(overrides: list[str], output_dir: Path) -> Any:
    """The real train config, composed as `steps/train.py` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from trainflow.config.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def ours_overrides(epochs: int, uri: str, progress_bar: bool) -> list[str]:
    over = [
        "experiment=example",
        f"trainer.max_epochs={epochs}",
        f"trainer.min_epochs={epochs}",
        "test=false",
        "extras.print_config=false",
        f"tracking.uri={uri}",
        f"+callbacks.bench_step_timer._target_={__name__}.step_timer",
    ]
    if not progress_bar:
        over += ["~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false"]
    return over


# -- the two sides ------------------------------------------------------------
def run_bare(cfg: Any, epochs: int) -> list[dict[str, Any]]:
    import torch
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    net = instantiate(cfg.model.net)
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    criterion = torch.nn.CrossEntropyLoss()
    clip = cfg.trainer.get("gradient_clip_val")
    net.train()
    epochs_out = []
    for _ in range(epochs):
        ends: list[int] = []
        epochs_out.append({"start": time.perf_counter_ns(), "ends": ends})
        for x, y in loader:
            loss = criterion(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            optimizer.step()
            ends.append(time.perf_counter_ns())
    return epochs_out


def run_ours(cfg: Any) -> tuple[list[dict[str, Any]], Any]:
    from trainflow.tracking.run import step_run
    from trainflow.training.train import train

    before = len(_RECORDS)
    with step_run("train", cfg) as run:
        train(cfg, run)
    record = _RECORDS[before]
    return record["epochs"], record["timer"]


# -- statistics -------------------------------------------------------------
def step_stats(epochs: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    intervals = []
    for epoch in epochs[warmup:]:
        ends = epoch["ends"]
        intervals += [(b - a) / 1e3 for a, b in zip(ends, ends[1:], strict=False)]
    tails = [nxt["start"] - cur["ends"][-1] for cur, nxt in zip(epochs[warmup:], epochs[warmup + 1:],
                                                                 strict=False) if cur["ends"]]
    return {
        "mean_us": sum(intervals) / len(intervals),
        "median_us": statistics.median(intervals),
        "n": len(intervals),
        "steps_per_epoch": len(epochs[-1]["ends"]),
        "tail_ms": statistics.median(tails) / 1e6 if tails else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per round, the first is warm-up")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every variant")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--variants", default="bare,ours,ours_nopbar",
                        help="comma list of bare, ours, ours_nopbar")
    args = parser.parse_args()
    if args.epochs <= args.warmup_epochs:
        parser.error("--epochs must exceed --warmup-epochs")

    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "trainflow"):
        logging.getLogger(name).setLevel(logging.WARNING)

    import mlflow
    import torch

    torch.set_num_threads(1)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - {"bare", "ours", "ours_nopbar"}
    if unknown or "bare" not in variants:
        parser.error(f"--variants needs bare and known names, got {args.variants}")

    tmp = Path(tempfile.mkdtemp(prefix="trainflow-bench-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # Experiment created up front: the store's migrations stay out of the
    # rounds and the artifacts land in tmp, not in the project's mlruns/.
    mlflow.MlflowClient(uri).create_experiment("trainflow", artifact_location=(tmp / "mlruns").as_uri())

    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    threads: dict[str, int | None] = {}
    t_start = time.monotonic()
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for variant in order:
            out = tmp / f"round{r}-{variant}"
            cfg = compose_train(ours_overrides(args.epochs, uri, variant == "ours"), out)
            if variant == "bare":
                epochs = run_bare(cfg, args.epochs)
                threads[variant] = torch.get_num_threads()
            else:
                epochs, timer = run_ours(cfg)
                threads[variant] = timer.threads
            results[variant].append(step_stats(epochs, args.warmup_epochs))
        line = "  ".join(f"{v} {results[v][-1]['mean_us']:.0f}us" for v in variants)
        print(f"round {r + 1}/{args.rounds}: {line}", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - t_start

    bare = statistics.median(s["mean_us"] for s in results["bare"])
    print()
    print(f"steady-state step time, median of {args.rounds} interleaved rounds "
          f"({args.epochs} epochs each, first {args.warmup_epochs} excluded; "
          f"{results['bare'][0]['steps_per_epoch']} steps/epoch; {elapsed:.0f}s total)")
    print(f"stdout is a terminal: {sys.stdout.isatty()} (RichProgressBar only draws on one)")
    header = (f"{'variant':<12} {'us/step':>8} {'steps/s':>8} {'ratio':>6} {'min..max us/step':>17} "
              f"{'median step':>11} {'epoch tail':>10} {'threads':>7}")
    print(header)
    print("-" * len(header))
    for v in variants:
        means = [s["mean_us"] for s in results[v]]
        med = statistics.median(means)
        med_step = statistics.median(s["median_us"] for s in results[v])
        tail = statistics.median(s["tail_ms"] for s in results[v])
        tail_s = "-" if v == "bare" else f"{tail:.1f}ms"
        print(f"{v:<12} {med:>8.0f} {1e6 / med:>8.0f} {med / bare:>6.3f} "
              f"{min(means):>8.0f}..{max(means):<8.0f} {med_step:>9.0f}us {tail_s:>10} "
              f"{threads.get(v)!s:>7}")
    print("(ratio: us/step over bare's; median step: median single interval; epoch tail: last step "
          "end to next epoch start = epoch-end hooks + validation + checkpointing)")
    ours_key = "ours" if "ours" in variants else variants[-1]
    ours = statistics.median(s["mean_us"] for s in results[ours_key])
    print(f"framework_tax {ours / bare:.3f}")


if __name__ == "__main__":
    main()

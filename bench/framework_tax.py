"""Framework tax: trainflow's train step vs a bare PyTorch loop, in time per optimizer step.

    uv run python bench/framework_tax.py                  # --epochs 8 --rounds 6
    uv run python bench/framework_tax.py --variants ours,ours_nopbar,lightning,lightning_runlogger
    uv run python bench/framework_tax.py --calls --workloads digits --epochs 3 --rounds 2   # calls per step

Same optimizer steps on both sides: SimpleDenseNet with the sizes of
`experiment=example`, the digits train split and DataLoader of trainflow's
DigitsDataModule (batch 64, shuffle, num_workers 0), CrossEntropyLoss, Adam
(lr, weight decay from the config), gradient-norm clipping at
`trainer.gradient_clip_val` (0.5), CPU, `torch.set_num_threads(1)`.

bare          a hand-written `for x, y in loader:` loop (forward, loss, zero_grad,
              backward, clip_grad_norm_, step); nothing else. Its DataLoader is
              `train_dataloader()` of the datamodule trainflow built in a
              warm-up train step (same rows, same loader settings). It runs
              without PYTORCH_NVML_BASED_CUDA_CHECK, which `import lightning`
              sets for the whole process and a bare PyTorch process does not
              have (with it, each `torch.cuda.is_available()`, asked once per
              Adam.step, tries to dlopen NVML: ~380 us in a process with
              Lightning and MLflow loaded, ~14 us without).
ours          `trainflow.training.train.train(cfg, run)` itself inside
              `trainflow.tracking.run.step_run("train", cfg)`; cfg composed from
              the real configs with `experiment=example`: DigitsDataModule,
              ClassificationModule (torchmetrics updated every step), every
              configured callback (ModelCheckpoint + upload, EarlyStopping,
              RichModelSummary, RichProgressBar), RunLogger into a real MLflow
              run in a temporary sqlite store. Overridden: trainer.max_epochs /
              min_epochs, test=false, registry.log_model=false (both after fit),
              extras.print_config=false, paths.cache_dir (temporary), and one
              added callback (the timer).
ours_nopbar   the same with `~callbacks.rich_progress_bar trainer.enable_progress_bar=false`.
lightning     (breakdown) a plain `L.Trainer(logger=False, callbacks=[timer],
              no progress bar / summary / checkpointing, same clipping)` fitting
              the same ClassificationModule: Lightning's loop + our module only.
lightning_runlogger  (breakdown) `lightning` plus RunLogger on a real run.

What is timed: the interval between the ends of consecutive optimizer steps in
one training epoch (bare: right after `optimizer.step()`; Lightning: a
callback's `on_train_batch_end`, which runs after the optimizer step). A step
therefore includes fetching its batch and every hook, metric update, logger
call and progress-bar update between two steps; once-per-epoch work
(DataLoader iterator creation, validation, checkpointing, epoch-end logging)
is outside: an epoch of N batches gives N-1 intervals. The figure per epoch is
the mean of its intervals (so slow steps count in full). The timer hides its
unused per-batch hooks from Lightning's dispatch in every variant (the train
step does so for all its callbacks: training/idle_hooks.py), so it costs the
same everywhere.

Interleaving: the machine is shared and its speed drifts by +-30% within
seconds, so bare and ours alternate epoch by epoch inside one process: during
every Lightning fit, the timer callback runs one bare epoch right after the
last training step of each epoch (before validation and checkpointing, so the
checkpoint upload thread never overlaps a bare epoch, while it may overlap
ours). Each Lightning epoch is paired with the bare epoch that follows it;
the first epoch of each fit (and the first bare epoch) is warm-up and dropped.
Each round fits every variant once (order rotated per round). Reported:
medians over all pairs of the variant. CPU column: the same with process CPU
time (all threads, so the tracking thread counts), less sensitive to other
load on the machine.

The last line is `framework_tax <ratio>`: median over pairs of
(ours time per step / bare time per step), ours = as configured (progress bar
on). Per-epoch costs of ours are shown separately as `epoch tail`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = ("ours", "ours_nopbar", "lightning", "lightning_manual", "lightning_runlogger")

# The workloads: the overrides that pick each one's real config, and its variants by default.
WORKLOADS: dict[str, tuple[list[str], str]] = {
    "digits": (["experiment=example"], "ours,ours_nopbar,lightning,lightning_manual"),
    "images": (["experiment=digits_images"], "ours,lightning"),
}

# The bare loop every Lightning fit interleaves with, and the timers of the
# fits (appended by StepTimer; Hydra finds `step_timer` through this module's
# name, `__main__` when run as a script).
_BARE: BareLoop | None = None
_TIMERS: list[Any] = []


# --calls: Python and C function calls per step (sys.setprofile events), a
# figure the machine's load does not change; the timings are then meaningless.
_COUNT_CALLS = False
_CALLS = [0]


def _count_call(frame: Any, event: str, arg: Any) -> None:
    if event in ("call", "c_call"):
        _CALLS[0] += 1


def _cpu() -> int:
    return time.process_time_ns()


# `import lightning` sets this for the whole process: every
# torch.cuda.is_available() (Adam.step asks once per step) then tries to dlopen
# NVML, ~380 us in this process vs ~14 us without. A bare PyTorch process does
# not have it; the bare epochs run without it, the Lightning epochs with it, as
# they would in their own processes.
_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


class BareLoop:
    """The plain PyTorch side: its own model, optimizer and DataLoader.

    The DataLoader comes from `train_dataloader()` of the datamodule trainflow
    built and set up in the warm-up fit: same rows, same loader settings,
    however trainflow loads its data.
    """

    def __init__(self, cfg: Any, datamodule: Any) -> None:
        import torch
        from hydra.utils import instantiate

        self.loader = datamodule.train_dataloader()
        self.net = instantiate(cfg.model.net)
        self.optimizer = instantiate(cfg.model.optimizer)(params=self.net.parameters())
        self.criterion = torch.nn.CrossEntropyLoss()
        self.clip = cfg.trainer.get("gradient_clip_val")

    def epoch(self) -> dict[str, Any]:
        import torch

        net, optimizer, criterion, clip = self.net, self.optimizer, self.criterion, self.clip
        ends: list[int] = []
        record: dict[str, Any] = {"start": time.perf_counter_ns(), "ends": ends}
        nvml = os.environ.pop(_NVML_CHECK, None)
        try:
            with torch.enable_grad():
                net.train()
                last = len(self.loader) - 1
                for i, (x, y) in enumerate(self.loader):
                    loss = criterion(net(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                    optimizer.step()
                    ends.append(time.perf_counter_ns())
                    if i == 0:
                        record["cpu_first"] = _cpu()
                        if _COUNT_CALLS:
                            _CALLS[0] = 0
                            sys.setprofile(_count_call)
                    elif i == last:
                        sys.setprofile(None)
                        record["calls"] = _CALLS[0] / i
                        record["cpu_last"] = _cpu()
        finally:
            sys.setprofile(None)
            if nvml is not None:
                os.environ[_NVML_CHECK] = nvml
        return record


def _step_timer_class() -> type:
    from lightning.pytorch import Callback

    class StepTimer(Callback):
        """Clock at epoch starts and at every optimizer step's end; runs a
        bare epoch after the last training step of every epoch."""

        def __init__(self) -> None:
            self.epochs: list[dict[str, Any]] = []
            self.bare: list[dict[str, Any] | None] = []
            self.threads: int | None = None
            self.datamodule: Any = None
            _TIMERS.append(self)
            # The train step hides every callback's unused per-batch hooks;
            # the timer hides its own in every variant, so it costs the same
            # in each and the difference stays the framework's.
            from trainflow.training.idle_hooks import hide_idle_batch_hooks

            hide_idle_batch_hooks([self])

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            import torch

            self.threads = torch.get_num_threads()
            self.datamodule = trainer.datamodule

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.epochs.append({"start": time.perf_counter_ns(), "ends": []})
            self.bare.append(None)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            epoch = self.epochs[-1]
            epoch["ends"].append(time.perf_counter_ns())
            # CPU time (a slow syscall here, ~10 us) only at the epoch's edges
            if batch_idx == 0:
                epoch["cpu_first"] = _cpu()
                if _COUNT_CALLS:
                    _CALLS[0] = 0
                    sys.setprofile(_count_call)
            elif batch_idx == trainer.num_training_batches - 1:
                sys.setprofile(None)
                epoch["calls"] = _CALLS[0] / batch_idx
                epoch["cpu_last"] = _cpu()
                if _BARE is not None:
                    self.bare[-1] = _BARE.epoch()

    return StepTimer


def step_timer() -> Any:
    """Hydra target of the timing callback."""
    return _step_timer_class()()


# -- configuration ----------------------------------------------------------
def compose_train(overrides: list[str], output_dir: Path) -> Any:
    """The real train config, composed as `steps/train.py` composes it."""
    from trainflow.config.compose import compose_step_config

    return compose_step_config("train", overrides, output_dir, config_dir=ROOT / "configs")


def train_overrides(epochs: int, uri: str, tmp: Path, progress_bar: bool = True,
                    workload: list[str] = WORKLOADS["digits"][0]) -> list[str]:
    over = [
        *workload,
        f"trainer.max_epochs={epochs}",
        f"trainer.min_epochs={epochs}",
        "test=false",
        "registry.log_model=false",
        "extras.print_config=false",
        f"tracking.uri={uri}",
        f"paths.cache_dir={tmp / 'cache'}",
        f"+callbacks.bench_step_timer._target_={__name__}.step_timer",
    ]
    if not progress_bar:
        over += ["~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false"]
    return over


# -- the Lightning sides ------------------------------------------------------
def run_ours(cfg: Any) -> Any:
    """The train step exactly as `steps/train.py` runs it (minus Hydra's main)."""
    from trainflow.tracking.run import step_run
    from trainflow.training.train import train

    before = len(_TIMERS)
    with step_run("train", cfg) as run:
        train(cfg, run)
    return _TIMERS[before]


def run_plain_lightning(cfg: Any, datamodule: Any, uri: str | None, tmp: Path, manual: bool = False) -> Any:
    """Breakdown: Lightning + our module (+ RunLogger); nothing else. The
    datamodule is the one trainflow built in the warm-up fit."""
    import lightning as L
    from hydra.utils import instantiate
    from mlflow import MlflowClient

    from trainflow.tracking.lightning import RunLogger
    from trainflow.training.train import set_data_model_kwargs

    set_data_model_kwargs(cfg, datamodule)  # what only the dataset knows (the images' class count)
    model = instantiate(cfg.model, _convert_="all")
    clip = cfg.trainer.get("gradient_clip_val")
    if manual:
        model, clip = manual_optimization(model, clip), None
    timer = step_timer()
    logger: Any = False
    if uri is not None:
        client = MlflowClient(uri)
        run = client.create_run(client.get_experiment_by_name("trainflow").experiment_id)
        logger = RunLogger(client, run.info.run_id, cfg.tracking.flush_every_s, cfg.tracking.log_checkpoints)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=cfg.trainer.max_epochs, min_epochs=cfg.trainer.max_epochs,
        gradient_clip_val=clip, logger=logger, callbacks=[timer],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(tmp),
    )
    try:
        trainer.fit(model=model, datamodule=datamodule)
    finally:
        if logger:
            logger.close()
            client.set_terminated(run.info.run_id)
    return timer


def manual_optimization(model: Any, clip: float | None) -> Any:
    """The floor: Lightning's loop with `automatic_optimization=False`, the same steps written by hand.

    No closure, no optimizer-step hooks through the loop, no automatic
    clipping: what Lightning costs at the least for the same module, metrics
    included (the module's own training_step still runs).
    """
    automatic_step = model.training_step

    def training_step(batch: Any, batch_idx: int) -> Any:
        optimizer = model.optimizers()
        loss = automatic_step(batch, batch_idx)
        optimizer.zero_grad(set_to_none=True)
        model.manual_backward(loss)
        if clip:
            model.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()
        return loss

    model.automatic_optimization = False
    model.training_step = training_step
    return model


# -- statistics -------------------------------------------------------------
def epoch_step_time(epoch: dict[str, Any]) -> tuple[float, float] | None:
    """Mean (wall, cpu) microseconds per interval between step ends."""
    ends = epoch["ends"]
    if len(ends) < 2 or "cpu_last" not in epoch:
        return None
    n = len(ends) - 1
    return (ends[-1] - ends[0]) / n / 1e3, (epoch["cpu_last"] - epoch["cpu_first"]) / n / 1e3


def pairs_of(timer: Any, warmup: int) -> list[dict[str, float]]:
    out = []
    epochs = timer.epochs
    for k in range(warmup, len(epochs)):
        ours, bare = epoch_step_time(epochs[k]), timer.bare[k] and epoch_step_time(timer.bare[k])
        if ours is None or not bare:
            continue
        tail = (epochs[k + 1]["start"] - epochs[k]["ends"][-1]) / 1e6 if k + 1 < len(epochs) else None
        bare_ms = (timer.bare[k]["ends"][-1] - timer.bare[k]["start"]) / 1e6
        out.append({"ours": ours[0], "bare": bare[0], "ours_cpu": ours[1], "bare_cpu": bare[1],
                    "tail_ms": None if tail is None else tail - bare_ms, "calls": epochs[k].get("calls"),
                    "bare_calls": timer.bare[k].get("calls")})
    return out


@dataclass
class Measured:
    """One workload's pairs per variant, and what the table's header reports."""

    pairs: dict[str, list[dict[str, float]]]
    threads: dict[str, Any]
    steps: int
    elapsed_s: float
    rounds: int
    epochs: int


def measure(workload: str, variants: list[str], epochs: int, rounds: int, uri: str, tmp: Path) -> Measured:
    """Warm up (one untimed train step), then `rounds` fits of every variant, order rotated per round."""
    global _BARE
    overrides = WORKLOADS[workload][0]
    if workload == "images":
        overrides = [*overrides, f"data.root={digit_images(tmp)}"]
    # Warm-up: imports, first checkpoint, first upload; its datamodule feeds
    # the bare loop and the breakdown variants.
    cfg = compose_train(train_overrides(2, uri, tmp, workload=overrides), tmp / f"{workload}-warmup")
    datamodule = run_ours(cfg).datamodule
    _BARE = BareLoop(cfg, datamodule)
    _BARE.epoch()

    pairs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    threads: dict[str, Any] = {}
    t_start = time.monotonic()
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for variant in order:
            out = tmp / f"{workload}-round{r}-{variant}"
            cfg = compose_train(train_overrides(epochs, uri, tmp, variant != "ours_nopbar", overrides), out)
            if variant.startswith("ours"):
                timer = run_ours(cfg)
            else:
                logged = uri if variant == "lightning_runlogger" else None
                timer = run_plain_lightning(cfg, datamodule, logged, out, manual=variant == "lightning_manual")
            threads[variant] = timer.threads
            pairs[variant] += pairs_of(timer, warmup=1)
        summary = "  ".join(f"{v} {statistics.median(p['ours'] / p['bare'] for p in pairs[v]):.3f}"
                            for v in variants)
        print(f"{workload} round {r + 1}/{rounds}: median ratio so far: {summary}", file=sys.stderr, flush=True)
    return Measured(pairs, threads, len(_TIMERS[-1].epochs[-1]["ends"]), time.monotonic() - t_start, rounds, epochs)


def digit_images(tmp: Path) -> Path:
    """experiment=digits_images' image folder (1797 PNGs, 32x32), made once per bench run."""
    from trainflow.data.make_digit_images import main as make_digit_images

    folder = tmp / "digits_images"
    if not folder.exists():
        make_digit_images([str(folder)])
    return folder


def report(workload: str, m: Measured) -> dict[str, float]:
    """Print the workload's table; return each variant's median ratio to bare."""
    import torch

    def med(rows: list[dict[str, float]], key: str) -> float:
        values = [row[key] for row in rows if row.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    variants = list(m.pairs)
    all_pairs = [p for v in variants for p in m.pairs[v]]
    print()
    print(f"[{workload}] steady-state time per optimizer step: {m.rounds} rounds x {m.epochs} epochs per variant "
          f"(first epoch of each fit dropped), {m.steps} steps/epoch, bare and Lightning epochs alternating; "
          f"{m.elapsed_s:.0f}s")
    print(f"torch threads: bare {torch.get_num_threads()}, "
          + ", ".join(f"{v} {m.threads[v]}" for v in variants)
          + f"; stdout is a terminal: {sys.stdout.isatty()} (RichProgressBar only draws on one)")
    header = (f"{'variant':<20} {'pairs':>5} {'us/step':>8} {'steps/s':>8} {'ratio':>6} {'ratio q1..q3':>12} "
              f"{'cpu ratio':>9} {'vs lightning':>12} {'epoch tail':>10}")
    print(header)
    print("-" * len(header))
    bare = med(all_pairs, "bare")
    print(f"{'bare':<20} {len(all_pairs):>5} {bare:>8.0f} {1e6 / bare:>8.0f} {1.0:>6.3f} {'':>12} {1.0:>9.3f} "
          f"{'':>12} {'-':>10}")
    ratios = {v: statistics.median(p["ours"] / p["bare"] for p in m.pairs[v]) for v in variants}
    for v in variants:
        rows = m.pairs[v]
        r = sorted(p["ours"] / p["bare"] for p in rows)
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        cpu = statistics.median(p["ours_cpu"] / p["bare_cpu"] for p in rows)
        ours = med(rows, "ours")
        vs = f"{ratios[v] / ratios['lightning']:.3f}" if "lightning" in ratios else "-"
        print(f"{v:<20} {len(rows):>5} {ours:>8.0f} {1e6 / ours:>8.0f} {ratios[v]:>6.3f} "
              f"{q[0]:>5.2f}..{q[2]:<5.2f} {cpu:>9.3f} {vs:>12} {med(rows, 'tail_ms'):>8.1f}ms")
    return ratios


def report_calls(workload: str, m: Measured) -> dict[str, float]:
    """Print the workload's function calls per step; return each variant's ratio to bare in calls."""
    calls = {v: statistics.median(p["calls"] for p in rows) for v, rows in m.pairs.items()}
    bare = statistics.median(p["bare_calls"] for rows in m.pairs.values() for p in rows)
    print()
    print(f"[{workload}] function calls per optimizer step (sys.setprofile call + c_call events between step "
          f"ends), median over {m.rounds} rounds x {m.epochs - 1} epochs per variant; timings meaningless")
    header = f"{'variant':<20} {'pairs':>5} {'calls/step':>10} {'ratio':>6} {'vs lightning':>12}"
    print(header)
    print("-" * len(header))
    print(f"{'bare':<20} {sum(len(rows) for rows in m.pairs.values()):>5} {bare:>10.0f} {1.0:>6.3f}")
    for v, rows in m.pairs.items():
        vs = f"{calls[v] / calls['lightning']:.3f}" if "lightning" in calls else "-"
        print(f"{v:<20} {len(rows):>5} {calls[v]:>10.0f} {calls[v] / bare:>6.3f} {vs:>12}")
    return {v: n / bare for v, n in calls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="digits: epochs per fit; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=6, help="digits: rounds; each fits every variant once")
    parser.add_argument("--variants", default=WORKLOADS["digits"][1],
                        help=f"digits: comma list of {', '.join(VARIANTS)}; the first 'ours*' gives the last line")
    parser.add_argument("--image-epochs", type=int, default=3, help="images: epochs per fit; the first is warm-up")
    parser.add_argument("--image-rounds", type=int, default=3, help="images: rounds (variants: ours, lightning)")
    parser.add_argument("--workloads", default="digits,images", help="comma list of digits, images")
    parser.add_argument("--calls", action="store_true",
                        help="count function calls per step instead (load-independent; timings then meaningless)")
    args = parser.parse_args()
    global _COUNT_CALLS
    _COUNT_CALLS = args.calls
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if not workloads or set(workloads) - set(WORKLOADS):
        parser.error(f"--workloads: choose from {', '.join(WORKLOADS)}")
    if min(args.epochs, args.image_epochs) < 2:
        parser.error("--epochs and --image-epochs must be at least 2 (the first is warm-up)")

    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # resnet10t trains from scratch; nothing is downloaded
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "trainflow"):
        logging.getLogger(name).setLevel(logging.WARNING)

    import mlflow
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="trainflow-bench-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # Experiment made up front: the store's migrations stay out of the rounds
    # and artifacts land in tmp, not in the project's mlruns/.
    mlflow.MlflowClient(uri).create_experiment("trainflow", artifact_location=(tmp / "mlruns").as_uri())

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    ratios: dict[str, dict[str, float]] = {}
    for workload in workloads:
        if workload == "digits":
            measured = measure("digits", variants, args.epochs, args.rounds, uri, tmp)
        else:
            measured = measure(workload, WORKLOADS[workload][1].split(","), args.image_epochs, args.image_rounds,
                               uri, tmp)
        ratios[workload] = (report_calls if args.calls else report)(workload, measured)
    if args.calls:
        print("ratio: a variant's calls per step / the bare loop's; vs lightning: calls per step / lightning's")
    else:
        print("ratio: median over pairs of (variant / adjacent bare epoch) time per step; cpu ratio: the same in "
              "process CPU time; vs lightning: ratio / lightning's ratio (both measured against the same bare "
              "loop); epoch tail: last step of an epoch to the next epoch's start, minus the bare epoch run "
              "there (= epoch-end hooks, validation, checkpoint save + staging)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for line in summary(ratios, "calls" if args.calls else "time"):
        print(line)


def summary(ratios: dict[str, dict[str, float]], unit: str = "time") -> list[str]:
    """The targets, each next to the floor it is divided by; `framework_tax <ratio>` last.

    `unit` "calls": the ratios are function calls per step, and the last lines
    are `framework_tax_images_calls` and `framework_tax_calls`, so that a
    script reading `framework_tax` never takes a call count for a time.
    """
    lines = []
    suffix = "" if unit == "time" else f"_{unit}"
    digits = ratios.get("digits", {})
    if "lightning" in digits:
        floors = f"lightning / bare {digits['lightning']:.3f}"
        if "lightning_manual" in digits:
            floors += f", manual-optimization floor lightning_manual / bare {digits['lightning_manual']:.3f}"
        for v in (v for v in digits if v.startswith("ours")):
            lines.append(f"digits {unit}: {v} / lightning {digits[v] / digits['lightning']:.3f} "
                         f"(target <= 1.02; {v} / bare {digits[v]:.3f}, {floors})")
    images = ratios.get("images", {})
    if "ours" in images:
        floor = f"; lightning / bare {images['lightning']:.3f}" if "lightning" in images else ""
        lines.append(f"images {unit}: ours / bare {images['ours']:.3f} (target <= 1.03{floor})")
        lines.append(f"framework_tax_images{suffix} {images['ours']:.3f}")
    headline = next((v for v in digits if v.startswith("ours")), None)
    if headline is not None:
        lines.append(f"framework_tax{suffix} {digits[headline]:.3f}")
    return lines


if __name__ == "__main__":
    main()

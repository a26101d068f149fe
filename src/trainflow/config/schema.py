"""Typed schemas that the primary configs start from.

Hydra merges every YAML of a composition into the first node of the defaults
list. Making that node a structured config turns a misspelt key or a value of
the wrong type into a compose-time error that names the key, instead of a
`TypeError` deep inside `Trainer(...)` minutes later. Groups whose content is
an arbitrary `_target_` call (data, model, callbacks) are typed `Any` here and
checked against the target's signature by `trainflow.config.validate`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from trainflow.project import project_root

# `${trainflow.project_root:}` in configs/paths: the checkout, wherever Hydra's run dir is
ROOT_RESOLVER = __name__.split(".")[0] + ".project_root"


@dataclass
class PathsSchema:
    root_dir: str = MISSING
    data_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING
    work_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class ExtrasSchema:
    ignore_warnings: bool = True
    enforce_tags: bool = True
    print_config: bool = True


@dataclass
class TrackingSchema:
    uri: str | None = None
    experiment_name: str = "trainflow"
    run_name: str | None = None
    connect_timeout_s: float = 10.0
    http_max_retries: int = 2
    flush_every_s: float = 5.0
    outage_grace_s: float = 60.0
    log_checkpoints: bool = True
    log_params: bool = True
    leader_timeout_s: float = 120.0
    system_metrics: bool = True
    system_metrics_interval_s: float = 5.0


@dataclass
class RegistrySchema:
    model_name: str | None = None
    # false keeps debug runs and sweep trials from creating versions; the model is still logged
    register: bool = True
    # false: no pyfunc is logged (smoke tests, sweep trials); train hands on its best checkpoint
    log_model: bool = True


@dataclass
class TrainerSchema:
    # Only keys that trainflow's configs set are declared; an unknown key is a
    # typo until someone adds it here (and that is one line).
    _target_: str = "lightning.pytorch.trainer.Trainer"
    default_root_dir: str | None = None
    min_epochs: int | None = None
    max_epochs: int | None = None
    max_steps: int = -1
    max_time: str | None = None
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = None
    check_val_every_n_epoch: int | None = 1
    val_check_interval: Any = None
    log_every_n_steps: int | None = None
    deterministic: Any = None
    benchmark: bool | None = None
    fast_dev_run: Any = False
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    num_sanity_val_steps: int | None = None
    detect_anomaly: bool = False
    profiler: Any = None
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    sync_batchnorm: bool = False
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    enable_checkpointing: bool | None = None
    use_distributed_sampler: bool = True
    inference_mode: bool = True


@dataclass
class StepSchema:
    task_name: str = MISSING
    tags: list[str] = field(default_factory=list)
    seed: int | None = None
    ckpt_path: str | None = None
    optimized_metric: str | None = None
    data: Any = MISSING
    model: Any = MISSING
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    callbacks: dict[str, Any] | None = None
    paths: PathsSchema = field(default_factory=PathsSchema)
    extras: ExtrasSchema = field(default_factory=ExtrasSchema)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)
    registry: RegistrySchema = field(default_factory=RegistrySchema)


@dataclass
class SearchParamSchema:
    """One dimension of a search space (`sweep.params.<config key>`)."""

    type: str = MISSING  # float | int | categorical
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: list[Any] | None = None


@dataclass
class SweepSchema:
    """An Optuna study (configs/hparams_search/*.yaml); read by trainflow.sweep."""

    direction: str = "maximize"
    n_trials: int = 20
    n_workers: int = 1
    storage: str | None = None
    study_name: str | None = None
    sampler: Any = None
    pruner: Any = None
    params: dict[str, SearchParamSchema] = field(default_factory=dict)
    enqueue_trials: list[Any] = field(default_factory=list)
    register_best: bool = False
    # liveness in a database storage: a trial silent for grace_s is stale (its machine is lost)
    heartbeat_s: int = 10
    grace_s: int = 60
    # how often a trial whose machine was lost or stopped (SIGTERM, Ctrl-C) is queued again before it stays FAIL
    max_retry: int = 1


@dataclass
class TrainSchema(StepSchema):
    train: bool = True
    test: bool = True
    # run id of an interrupted train run to continue in place
    resume: str | None = None
    # the study of `hparams_search=...` (null: not a sweep)
    sweep: SweepSchema | None = None
    # with ckpt_path: load only its weights (fresh optimizer, schedule, epoch 0); training/restore.py
    only_weights_load: bool = False


@dataclass
class EvaluateSchema(StepSchema):
    model_uri: str | None = None
    promote: bool = False


@dataclass
class PrepareDataSchema(StepSchema):
    pass


@dataclass
class PredictSchema:
    """The predict step: a model's predictions for a folder of images or a parquet file."""

    task_name: str = MISSING
    tags: list[str] = field(default_factory=list)
    model_uri: str | None = None
    input: str | None = None
    batch_size: int = 256
    on_bad_image: str = "raise"
    paths: PathsSchema = field(default_factory=PathsSchema)
    extras: ExtrasSchema = field(default_factory=ExtrasSchema)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)


@dataclass
class MainSchema(StepSchema):
    # reuse FINISHED step runs whose config, code and inputs match
    cache: bool = True
    # let evaluate move the `champion` alias when the new version is better
    promote: bool = True
    # run the steps inside main's process (one set of imports); false: one process per step
    in_process: bool = True
    # per-step overrides (`-P train.trainer.max_epochs=5`); filled from the command line
    prepare_data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)


@functools.cache
def register_configs() -> None:
    """Register the schemas and the `trainflow.*` resolvers before Hydra composes; once per process.

    Called by every step script (and the tests' compose fixture) so the
    defaults lists can name `train_schema` / `evaluate_schema`. The store is
    the process's and Hydra copies what it loads from it, so a second call
    would only convert each dataclass again, before every sweep trial's
    compose and every override check.
    """
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    store.store(name="evaluate_schema", node=EvaluateSchema)
    store.store(name="prepare_data_schema", node=PrepareDataSchema)
    store.store(name="predict_schema", node=PredictSchema)
    store.store(name="main_schema", node=MainSchema)
    if not OmegaConf.has_resolver(ROOT_RESOLVER):
        OmegaConf.register_new_resolver(ROOT_RESOLVER, lambda: str(project_root()))

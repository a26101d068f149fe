"""The `main` entry point: prepare_data -> train -> evaluate(promote), by URI.

Each step runs as a child run of the pipeline run, or is reused from the
step cache. A step runs inside main's process (pipeline.in_process: one set
of imports for the whole pipeline) unless it needs a process of its own or
`in_process=false`; then through MLflow's project runner (env manager local)
as a subprocess. Either way its run has the same tags, params and artifacts. Overrides reach
the steps as typed: `-P key=value` goes to every step, `-P train.key=value`
only to train (likewise `prepare_data.` and `evaluate.`); `-P add.key=value`
and `-P add.train.key=value` add a key the config lacks (Hydra's `+`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import OmegaConf

from trainflow.config.compose import compose_error
from trainflow.config.extras import TREE_SHOWN_ENV
from trainflow.config.param_names import param_name
from trainflow.errors import ConfigError, TrainflowError
from trainflow.pipeline.cache import cache_key, find_finished_run, source_inputs, step_code_digest
from trainflow.pipeline.in_process import run_step_here, subprocess_reason
from trainflow.tracking import tags as tag
from trainflow.tracking.headline import log_headline
from trainflow.tracking.run import StepRun, hydra_overrides

log = logging.getLogger(__name__)

STEPS = tag.PIPELINE_STEPS
# Keys of main's own config: they steer the pipeline and are not passed on.
MAIN_KEYS = frozenset({"cache", "promote", "in_process"})
# `paths.*` that only a running Hydra app can resolve.
RUNTIME_PATHS = ("output_dir", "work_dir")


@dataclass
class StepOutcome:
    step: str
    run_id: str
    reused: bool
    output: str
    cache_key: str
    tags: dict[str, str] = field(default_factory=dict, repr=False)
    metrics: dict[str, float] = field(default_factory=dict, repr=False)


@dataclass
class PipelineResult:
    steps: dict[str, StepOutcome]

    @property
    def reused(self) -> list[str]:
        return [s for s, o in self.steps.items() if o.reused]


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Shared overrides, and per-step ones with their `<step>.` prefix removed."""
    shared: list[str] = []
    per_step: dict[str, list[str]] = {s: [] for s in STEPS}
    for item in overrides:
        bare = item.lstrip("+~")
        prefix = item[: len(item) - len(bare)]
        head, _, rest = bare.partition(".")
        if head in per_step and rest:
            per_step[head].append(prefix.replace("++", "") + rest)
        elif bare.split("=", 1)[0] not in MAIN_KEYS:
            shared.append(item)
    return shared, per_step


def config_source_overrides() -> list[str]:
    """`hydra.searchpath=[...]` as main was given it: every step must find the same config groups.

    Hydra keeps `hydra.*` overrides apart from the task's; of those, only the
    search path describes the configs (a task's groups outside `configs/`),
    the rest (run dirs, job names) belong to each step's own process.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [item for item in HydraConfig.get().overrides.hydra if item.lstrip("+~").startswith("hydra.searchpath=")]


def run_pipeline(cfg: Any, run: StepRun) -> PipelineResult:
    shared, per_step = split_overrides([*config_source_overrides(), *hydra_overrides()])
    use_cache = bool(cfg.get("cache", True))
    here = bool(cfg.get("in_process", True))
    promote = f"promote={str(bool(cfg.get('promote', True))).lower()}"
    overrides = {
        "prepare_data": [*shared, *per_step["prepare_data"]],
        "train": [*shared, *per_step["train"]],
        "evaluate": [*shared, promote, *per_step["evaluate"]],
    }
    # Every step's config composes before the first step starts (a typo in
    # `-P evaluate.x=...` fails now, not after training). The URIs that steps
    # hand on are added later; cache keys leave them out (their digests count).
    composed = {step: compose_for_cache(step, overrides[step]) for step in STEPS}
    configs = {step: keyed for step, (keyed, _) in composed.items()}
    launch = {step: _launcher(step, as_run, here) for step, (_, as_run) in composed.items()}
    outcomes: dict[str, StepOutcome] = {}

    prepared = _step(run, "prepare_data", overrides["prepare_data"], configs["prepare_data"],
                     source_inputs(composed["prepare_data"][1]), use_cache, launch["prepare_data"])
    outcomes["prepare_data"] = prepared
    digest = prepared.tags.get(tag.DATA_DIGEST, "")
    data = [f"data.uri={prepared.output}"]

    trained = _step(run, "train", [*overrides["train"], *data], configs["train"], {"data": digest}, use_cache,
                    launch["train"])
    outcomes["train"] = trained

    # train hands on a model URI, or its best checkpoint with registry.log_model=false
    subject = f"ckpt_path={trained.output}" if trained.output.endswith(".ckpt") else f"model_uri={trained.output}"
    outcomes["evaluate"] = _step(
        run, "evaluate", [*overrides["evaluate"], *data, subject], configs["evaluate"],
        {"data": digest, "model": trained.output, "train_run": trained.run_id}, use_cache, launch["evaluate"])
    result = PipelineResult(outcomes)
    _record(run, result)
    return result


def _step(run: StepRun, step: str, overrides: list[str], resolved: dict[str, Any], inputs: dict[str, str],
          use_cache: bool, launch: Launch) -> StepOutcome:
    """Reuse or run one step, and link it from the pipeline run at once (a later failure keeps the link).

    A Ctrl-C whose interrupt was lost while the step before ran (tracking/signals.py) stops the pipeline here.
    """
    from mlflow.entities import RunTag

    run.signalled.raise_if_any()
    outcome = _reuse_or_run(run, step, overrides, resolved, inputs, use_cache, launch)
    run.client.log_batch(run.run_id, tags=[
        RunTag(tag.pipeline_step(step, "run_id"), outcome.run_id),
        RunTag(tag.pipeline_step(step, "reused"), str(outcome.reused).lower()),
        RunTag(tag.pipeline_step(step, "output"), outcome.output),
    ])
    return outcome


def _reuse_or_run(run: StepRun, step: str, overrides: list[str], resolved: dict[str, Any],
                  inputs: dict[str, str], use_cache: bool, launch: Launch) -> StepOutcome:
    key = cache_key(step, resolved, step_code_digest(run.root, step, resolved), inputs)
    if use_cache:
        hit = find_finished_run(run.client, [run.experiment_id], key)
        if hit is not None and tag.OUTPUT in hit.data.tags:
            log.info("%s: reusing run %s (cache key %s)", step, hit.info.run_id, key[:12])
            print(f"{step}: reused run {hit.info.run_id}", flush=True)
            return StepOutcome(step, hit.info.run_id, True, hit.data.tags[tag.OUTPUT], key, dict(hit.data.tags),
                               dict(hit.data.metrics))
    run_id = launch(run, step, overrides)
    run.client.set_tag(run_id, tag.CACHE_KEY, key)
    child = run.client.get_run(run_id)
    output = child.data.tags.get(tag.OUTPUT)
    if not output:
        raise TrainflowError(f"pipeline: step {step} (run {run_id}) finished without an output URI")
    return StepOutcome(step, run_id, False, output, key, dict(child.data.tags), dict(child.data.metrics))


Launch = Callable[[StepRun, str, list[str]], str]


def _launcher(step: str, as_run: dict[str, Any], in_process: bool) -> Launch:
    """Where a step runs: in this process, or (multi-device training, `in_process=false`) in its own."""
    if not in_process:
        return _launch
    reason = subprocess_reason(as_run)
    if reason is None:
        return _launch_here
    print(f"{step}: runs in its own process ({reason})", flush=True)
    return _launch


def _params(overrides: list[str]) -> dict[str, str]:
    """The `-P` parameters of a step's run: one per override, as `mlflow run` would have logged them."""
    params: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        params[param_name(key)] = value  # later overrides win, as on Hydra's command line
    return params


def _announce(step: str, overrides: list[str]) -> None:
    print(f"{step}: running with {overrides}", flush=True)
    # a pipeline shows one config tree, its own; each step still saves its tree as config_tree.log
    os.environ[TREE_SHOWN_ENV] = "1"


def _launch_here(run: StepRun, step: str, overrides: list[str]) -> str:
    _announce(step, overrides)
    return run_step_here(run, step, _params(overrides), overrides)


def _launch(run: StepRun, step: str, overrides: list[str]) -> str:
    import mlflow.projects
    from mlflow.exceptions import ExecutionException

    params = _params(overrides)
    _announce(step, overrides)
    # env manager "local" means this interpreter's environment: its `python`
    # must come first on PATH even when main was started by full path.
    bin_dir = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    try:
        submitted = mlflow.projects.run(
            uri=str(run.root), entry_point=step, parameters=params, env_manager="local",
            experiment_id=run.experiment_id, synchronous=True,
        )  # unnamed: MLflow's random name, which the step replaces with its derived one
    except ExecutionException as exc:
        raise TrainflowError(f"pipeline: step {step} failed: {exc}") from exc
    return str(submitted.run_id)


def compose_for_cache(step: str, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The step's config as the step will compose it: (as keyed, as run).

    Composed in this process with Hydra's compose API (no torch imported), so
    the cache is consulted before any step process starts. The keyed copy
    names `paths.*` by placeholder, so a key is the same in every checkout
    that shares a tracking server; the run copy keeps the real paths, which
    source_inputs needs to stat the files a data config points at.
    """
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        raise TrainflowError("pipeline: Hydra is not initialised (run through steps/main.py)")
    try:
        cfg = compose(config_name=step, overrides=overrides)
    except Exception as exc:
        raise ConfigError(f"{step} config: {compose_error(exc)}") from exc
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra", None)
    for key in RUNTIME_PATHS:  # only Hydra's runtime knows them; no data lives there
        cfg.paths[key] = f"<{key}>"
    as_run = _container(cfg)
    for key in cfg.paths:
        cfg.paths[key] = f"<{key}>"
    return _container(cfg), as_run


def _container(cfg: Any) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def _record(run: StepRun, result: PipelineResult) -> None:
    """The whole pipeline on its run: which steps ran, which were reused, what each handed on.

    The headline comes from the evaluate run as `_reuse_or_run` fetched it
    (finished: its metrics are final), in one request with the reused tag.
    """
    summary = {s: {k: v for k, v in asdict(o).items() if k not in ("tags", "metrics")} for s, o in result.steps.items()}
    run.client.log_text(run.run_id, json.dumps(summary, indent=2), "pipeline.json")
    evaluated = result.steps["evaluate"]
    log_headline(run.client, run.run_id, evaluated.run_id, evaluated.metrics,
                 tags={tag.PIPELINE_REUSED: ",".join(result.reused) or "none"})
    run.set_output(evaluated.output)

"""Logging, registering, resolving and promoting models.

Registration happens only after fit and test succeeded and the model logged
completely; promotion moves the `champion` alias only when the candidate beats
the champion on the same dataset digest. Every decision is written on the run
and on the version, with both numbers.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

import trainflow
from trainflow.config.redact import redact
from trainflow.errors import TrainflowError, UriError, first_line
from trainflow.registry.model_card import write_model_card
from trainflow.tracking import tags as tag
from trainflow.tracking.lockfile import locked_requirements

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion

    from trainflow.data.task import ServingSpec
    from trainflow.tracking.run import StepRun

log = logging.getLogger(__name__)

CHAMPION = "champion"
MODEL_ARTIFACT = "model"


@dataclass
class LoggedModel:
    model_uri: str
    model_id: str | None
    version: ModelVersion | None


def log_trained_model(run: StepRun, model_cfg: DictConfig, weights: dict, spec: ServingSpec,
                      tags: dict[str, str], register_as: str | None) -> LoggedModel:
    """Log the pyfunc into the step's run and, if asked, register a version.

    The model's config and tags are redacted like the run's config: a model
    artifact travels further than the run (registries, serving hosts).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    from trainflow.registry.pyfunc import TaskModel

    tags = redact(tags)

    with tempfile.TemporaryDirectory(prefix="trainflow-model-") as tmp:
        folder = Path(tmp)
        torch.save(weights, folder / "weights.pt")
        (folder / "model.yaml").write_text(OmegaConf.to_yaml(redact(OmegaConf.to_container(model_cfg, resolve=True))))
        (folder / "meta.json").write_text(json.dumps(spec.meta))
        artifacts = {"weights": str(folder / "weights.pt"), "model_config": str(folder / "model.yaml"),
                     "meta": str(folder / "meta.json")}
        python_model = TaskModel(spec.served)
        # The signature comes from a real prediction of the model being logged,
        # on the example widened to what pandas and JSON give.
        example = as_users_send(spec.example)
        python_model.load_context(_Context(artifacts))
        output = python_model.predict(None, example)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=python_model,
            artifacts=artifacts,
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=locked_requirements(run.root / "uv.lock"),
            code_paths=code_paths(spec.served),
            tags=tags,
        )
    run.client.set_tag(run.run_id, tag.MODEL_URI, info.model_uri)
    version = None
    if register_as:
        version = mlflow.register_model(info.model_uri, register_as, tags=tags)
        write_model_card(run.client, register_as, str(version.version), version)
        run.client.set_tag(run.run_id, tag.REGISTERED, f"models:/{register_as}/{version.version}")
    return LoggedModel(info.model_uri, getattr(info, "model_id", None), version)


def as_users_send(example: pd.DataFrame) -> pd.DataFrame:
    """`example` with the column types `pd.read_csv` and a JSON request give: float64 and int64.

    MLflow enforces a signature by only widening: a float32 ("float") column
    refuses the float64 that `pd.read_csv`, `mlflow models predict -t csv|json`
    and JSON numbers all produce ("Can not safely convert float64 to
    float32"). Declared as float64 ("double") and int64 ("long"), every
    table a user has passes; the served model casts to what the network
    takes. Other columns (bytes, strings, lists) are left as they are.
    """
    import numpy as np

    widened = {name: np.float64 if example[name].dtype.kind == "f" else np.int64
               for name in example.columns if example[name].dtype.kind in "fiu"}
    return example.astype(widened) if widened else example


def code_paths(served: type) -> list[str]:
    """What a served model imports when loaded: trainflow, and the task's own package if it lives elsewhere.

    MLflow copies each path into the model's `code/` and puts that folder
    first on sys.path, so `mlflow models serve` finds a task defined outside
    trainflow. The whole package goes, not only the modules loading runs
    (13 of 79 files for digits): `code/trainflow` then shadows any installed
    trainflow in the loading process and in every process it spawns (which
    inherit sys.path), and a partial copy there broke `import trainflow.sweep`
    in a multiprocessing child of a process that had loaded a model.
    """
    paths = [Path(trainflow.__file__).parent]
    top = sys.modules[served.__module__.split(".")[0]]
    file = Path(str(top.__file__))
    task = file.parent if file.name == "__init__.py" else file
    if task not in paths:
        paths.append(task)
    return [str(p) for p in paths]


@dataclass
class _Context:
    artifacts: dict[str, str]


@dataclass
class ResolvedModel:
    uri: str
    local_dir: Path
    run_id: str | None
    model_id: str | None
    name: str | None = None
    version: str | None = None


_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?/?$")


def resolve_model(uri: str, client: Any, dst: Path) -> ResolvedModel:
    """Download a model by any URI users write; one clear line if it is not there."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    name = version = model_id = run_id = None
    source = uri
    match = _MODELS.match(uri)
    try:
        if match and match.group("name").startswith("m-") and not (match.group("alias") or match.group("version")):
            model_id = match.group("name")
            run_id = client.get_logged_model(model_id).source_run_id
        elif match:
            name = match.group("name")
            mv = _model_version(client, name, match.group("alias"), match.group("version"), uri)
            version, run_id, model_id = str(mv.version), mv.run_id, getattr(mv, "model_id", None)
            source = f"models:/{name}/{version}"
        elif uri.startswith("runs:/"):
            run_id = uri.split("/")[1]
            client.get_run(run_id)
        elif not uri.startswith(("mlflow-artifacts:/", "file:", "/")):
            raise UriError(f"model_uri: {uri} is not a models:/, runs:/ or artifact URI")
        local = Path(download_artifacts(artifact_uri=source, dst_path=str(dst)))
    except UriError:
        raise
    except MlflowException as exc:
        raise UriError(f"model_uri: {uri}: {first_line(exc)}") from exc
    except OSError as exc:
        raise UriError(f"model_uri: {uri}: {exc}") from exc
    if not (local / "MLmodel").is_file():
        raise UriError(f"model_uri: {uri} is not an MLflow model (no MLmodel file)")
    return ResolvedModel(uri, local, run_id, model_id, name, version)


def _model_version(client: Any, name: str, alias: str | None, version: str | None, uri: str) -> ModelVersion:
    """The version a URI names; only a lookup that found nothing asks whether the model exists, for the message."""
    from mlflow.exceptions import MlflowException

    failure: MlflowException | None = None
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version not in (None, "latest"):
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name = '{name}'")
        if versions:
            return max(versions, key=lambda v: int(v.version))
    except MlflowException as exc:
        failure = exc
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise UriError(f"model_uri: {uri}: no registered model '{name}'") from exc
    if failure is None:
        raise UriError(f"model_uri: {uri}: model '{name}' has no versions")
    what = f"alias '{alias}'" if alias else f"version '{version}'"
    raise UriError(f"model_uri: {uri}: no {what} of model '{name}'") from failure


@dataclass
class Promotion:
    decision: str  # promoted | kept
    candidate: float
    champion: float | None
    champion_version: str | None


def promote_if_better(client: Any, name: str, version: str, metric: str, value: float, digest: str,
                      higher_is_better: bool, champion_value_on: Any, scope: str = "all") -> Promotion:
    """Move `champion` to `version` only if it beats the champion on the same data.

    `champion_value_on(version)` evaluates the current champion on this digest
    when its recorded figure was measured on other data, or on another part of
    it (`scope`: a figure over 2 test batches says little next to one over all).
    """
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is None:
        result = Promotion("promoted", value, None, None)
    elif str(champion.version) == str(version):
        result = Promotion("kept", value, value, str(version))
    else:
        recorded = champion.tags.get(tag.eval_metric(metric))
        same_data = (champion.tags.get(tag.EVAL_DATA_DIGEST) == digest
                     and champion.tags.get(tag.EVAL_TEST_SCOPE, "all") == scope)
        champ_value = float(recorded) if recorded is not None and same_data else champion_value_on(champion)
        better = value > champ_value if higher_is_better else value < champ_value
        result = Promotion("promoted" if better else "kept", value, champ_value, str(champion.version))
    if result.decision == "promoted":
        client.set_registered_model_alias(name, CHAMPION, version)
    return result


def register_best_trial(client: Any, model_name: str, best_run_id: str, sweep_run_id: str, study_name: str,
                        trial_number: int) -> ModelVersion:
    """A registry version of a sweep's best trial's logged model, tagged like the train step's versions.

    Once per study and trial: a version another machine of the same study
    registered for the same best trial is returned, not registered again (the
    caller holds the study's lock around this).
    """
    import mlflow

    model_uri = client.get_run(best_run_id).data.tags.get(tag.MODEL_URI)
    if not model_uri:
        raise TrainflowError(f"sweep.register_best: best trial run {best_run_id} logged no model")
    found = client.search_model_versions(f"name = '{model_name}' and tags.`{tag.SWEEP_STUDY}` = '{study_name}' "
                                         f"and tags.`{tag.TRIAL_NUMBER}` = '{trial_number}'")
    if found:
        return found[0]
    version_tags = _logged_model_tags(client, model_uri)
    version_tags.update({tag.SWEEP_RUN_ID: sweep_run_id, tag.SWEEP_STUDY: study_name,
                         tag.TRIAL_NUMBER: str(trial_number)})
    version = mlflow.register_model(model_uri, model_name, tags=version_tags)
    write_model_card(client, version.name, str(version.version), version)
    return version


def _logged_model_tags(client: Any, model_uri: str) -> dict[str, str]:
    """The train step's tags on the logged model (data digest, monitor, commit): versions need them."""
    if not model_uri.startswith("models:/m-"):
        return {}
    model_id = model_uri.removeprefix("models:/").split("/")[0]
    return {k: v for k, v in client.get_logged_model(model_id).tags.items() if k.startswith(tag.PREFIX)}

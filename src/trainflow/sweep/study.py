"""The Optuna study: where it lives, how it is made once, and how workers share its trials.

The study's trial budget is a queue: the sweep that creates the study puts
`n_trials` WAITING trials in it, and every worker (in any process, on any
machine) pops trials until none is left. Popping never creates a trial, so
however many workers race, the study ends with exactly `n_trials` trials.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainflow.errors import ConfigError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
# sqlite waits this long for another worker's write instead of failing "database is locked"
SQLITE_TIMEOUT_S = 60


@dataclass
class StudySpec:
    """What a worker needs to open the study: plain values, so it travels as JSON."""

    name: str
    storage: str | None
    direction: str
    sampler: dict[str, Any] | None = None
    pruner: dict[str, Any] | None = None
    seed: int | None = None


def resolve_storage(storage: str | None, n_workers: int, output_dir: Path) -> str | None:
    """In memory for one worker; several workers share a sqlite file in the sweep's output dir."""
    if storage:
        return storage
    if n_workers > 1:
        output_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(output_dir / 'optuna.db').resolve()}"
    return None


def build_storage(url: str | None) -> Any:
    """An RDBStorage whose sqlite connections wait for each other's writes."""
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as exc:
        raise ConfigError(f"sweep.storage: cannot open {redact_url(url)}: {str(exc).splitlines()[0]}") from exc


def redact_url(url: str | None) -> str:
    """A storage URL fit for tags and logs: the password masked."""
    from trainflow.config.redact import mask_url_passwords

    return mask_url_passwords(url) if url else "in-memory"


def build_sampler(node: dict[str, Any] | None, seed: int | None, worker: int) -> optuna.samplers.BaseSampler:
    """TPE unless configured; worker i uses seed + i, or parallel workers would sample the same points."""
    import optuna
    from hydra.utils import instantiate

    if not node:
        return optuna.samplers.TPESampler(seed=None if seed is None else seed + worker)
    node = dict(node)
    if node.get("seed") is not None:
        node["seed"] = int(node["seed"]) + worker
    return instantiate(node)


def build_pruner(node: dict[str, Any] | None) -> optuna.pruners.BasePruner:
    import optuna
    from hydra.utils import instantiate

    return instantiate(dict(node)) if node else optuna.pruners.NopPruner()


def open_study(spec: StudySpec, storage: Any, worker: int = 0) -> optuna.Study:
    """Create the study or load it (a second machine joining); the direction must agree."""
    import optuna

    study = optuna.create_study(study_name=spec.name, storage=storage,
                                direction=optuna.study.StudyDirection[spec.direction.upper()],
                                sampler=build_sampler(spec.sampler, spec.seed, worker),
                                pruner=build_pruner(spec.pruner), load_if_exists=True)
    if study.direction.name.lower() != spec.direction:
        raise ConfigError(f"sweep.direction: study '{spec.name}' exists with direction "
                          f"{study.direction.name.lower()}, not {spec.direction}")
    return study


def queue_trials(study: optuna.Study, n_trials: int, enqueue: list[dict[str, Any]]) -> int:
    """Top the study up to `n_trials` trials (queued ones count); returns how many were added.

    `enqueue` fixes the parameters of the first trials (a baseline, known
    good points); the rest are sampled when a worker starts them.
    """
    existing = len(study.get_trials(deepcopy=False))
    added = 0
    for index in range(existing, n_trials):
        fixed = enqueue[index] if index < len(enqueue) else {}
        study.enqueue_trial({str(k).lstrip("+"): v for k, v in dict(fixed).items()})
        added += 1
    return added


def claim_trial(study: optuna.Study, storage_url: str | None) -> optuna.Trial | None:
    """The next queued trial, now RUNNING in this worker; None when the queue is empty.

    `Study.ask()` would create a trial when the queue is empty and overshoot
    `n_trials`. Optuna's pop is a WAITING -> RUNNING change that only one
    process wins on PostgreSQL/MySQL (SELECT ... FOR UPDATE); sqlite ignores
    FOR UPDATE, so there workers on the machine take a file lock around it.
    """
    import optuna

    with _pop_lock(storage_url):
        study._thread_local.cached_all_trials = None
        trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else optuna.Trial(study, trial_id)


@contextmanager
def _pop_lock(storage_url: str | None) -> Iterator[None]:
    path = sqlite_path(storage_url)
    if path is None:
        yield
        return
    with open(f"{path}.trainflow-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sqlite_path(storage_url: str | None) -> Path | None:
    if not storage_url or not storage_url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(storage_url).database
    return Path(database).resolve() if database and database != ":memory:" else None

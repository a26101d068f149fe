"""The Optuna study: where it lives, how it is made once, and how workers share its trials.

The study's trial budget is a queue: the sweep that creates the study puts
`n_trials` WAITING trials in it, and every worker (in any process, on any
machine) pops trials until none is left. Popping never creates a trial, and
"count the trials, queue the missing ones" runs under a lock every machine
shares (`study_lock`: a PostgreSQL advisory lock, MySQL's GET_LOCK, a file
lock beside a sqlite file), so however many machines start at the same
instant, the study gets exactly `n_trials` trials.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainflow.config.redact import mask_url_passwords
from trainflow.errors import ConfigError, first_line
from trainflow.sweep.optuna_adapter import pop_waiting_trial
from trainflow.sweep.recovery import StaleTrialCallback

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
# sqlite waits this long for another worker's write instead of failing "database is locked"
SQLITE_TIMEOUT_S = 60
# a PostgreSQL/MySQL server that does not answer: fail the sweep, naming the URL, instead of hanging
CONNECT_TIMEOUT_S = 10


@dataclass
class StudySpec:
    """What a worker needs to open the study: plain values, so it travels as JSON."""

    name: str
    storage: str | None
    direction: str
    sampler: dict[str, Any] | None = None
    pruner: dict[str, Any] | None = None
    seed: int | None = None
    heartbeat_s: int | None = None  # None: no heartbeat (in memory, or tests of the queue alone)
    grace_s: int = 60
    max_retry: int = 1


def resolve_storage(storage: str | None, n_workers: int, output_dir: Path) -> str | None:
    """In memory for one worker; several workers share a sqlite file in the sweep's output dir."""
    if storage:
        return storage
    if n_workers > 1:
        output_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(output_dir / 'optuna.db').resolve()}"
    return None


def build_storage(url: str | None, heartbeat_s: int | None = None, grace_s: int = 60, max_retry: int = 1) -> Any:
    """An RDBStorage whose sqlite connections wait for each other's writes, with trial heartbeats if asked.

    A database that cannot be reached (wrong URL, server down, no such
    database) fails here in seconds, naming the URL with its password masked.
    """
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    try:
        with _quiet_experimental():
            stale = StaleTrialCallback(max_retry, grace_s, heartbeat_s) if heartbeat_s else None
            return optuna.storages.RDBStorage(
                url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=heartbeat_s,
                grace_period=grace_s if heartbeat_s else None, heartbeat_stale_trial_callback=stale)
    except Exception as exc:
        raise ConfigError(f"sweep.storage: cannot open {redact_url(url)}: {_driver_line(exc)}") from exc


def open_storage(spec: StudySpec) -> Any:
    return build_storage(spec.storage, spec.heartbeat_s, spec.grace_s, spec.max_retry)


def _engine_kwargs(url: str) -> dict[str, Any]:
    """sqlite waits for other writers; a network database answers or fails within CONNECT_TIMEOUT_S."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    if url.startswith(("postgresql", "mysql")):
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    return {}


def _driver_line(exc: BaseException) -> str:
    """SQLAlchemy's error as one line: the database driver's own message (`orig`), password masked."""
    return mask_url_passwords(first_line(getattr(exc, "orig", None) or exc))


@contextmanager
def _quiet_experimental() -> Iterator[None]:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def redact_url(url: str | None) -> str:
    """A storage URL fit for tags and logs: the password masked."""
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
        raise ConfigError(f"sweep.direction: study '{spec.name}' in {redact_url(spec.storage)} exists with "
                          f"direction {study.direction.name.lower()}, not {spec.direction}")
    return study


@contextmanager
def study_lock(url: str | None, name: str) -> Iterator[None]:
    """One machine at a time creates the study (and the storage's tables) and tops up its queue.

    PostgreSQL: a session advisory lock keyed by the study name, held on a
    connection of its own and released when it closes, so a machine killed
    while holding it frees it. MySQL: GET_LOCK, likewise. sqlite: a file lock
    beside the database (sqlite is one machine's storage anyway). In memory:
    one process, nothing to lock.
    """
    if url is None:
        yield
        return
    if sqlite_path(url) is not None:
        with _file_lock(url):
            yield
        return
    from sqlalchemy.engine import make_url

    backend = make_url(url).get_backend_name()
    if backend not in ("postgresql", "mysql", "mariadb"):
        raise ConfigError(f"sweep.storage: {redact_url(url)}: no lock shared across machines for '{backend}'; "
                          "use postgresql://, mysql:// or (one machine) sqlite://")
    with _server_lock(url, backend, f"trainflow-study:{name}"):
        yield


@contextmanager
def _server_lock(url: str, backend: str, key: str) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, **_engine_kwargs(url))
        connection = engine.connect()
    except Exception as exc:
        raise ConfigError(f"sweep.storage: cannot connect to {redact_url(url)}: {_driver_line(exc)}") from exc
    try:
        if backend == "postgresql":
            number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": number})
        else:
            connection.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": key[:64]})
        connection.commit()
        yield
    finally:
        connection.close()  # a session lock ends with its connection
        engine.dispose()


def create_and_queue(spec: StudySpec, n_trials: int, enqueue: list[dict[str, Any]]) -> tuple[optuna.Study, int]:
    """The study, created or joined, topped up to `n_trials`: one machine at a time (`study_lock`)."""
    with study_lock(spec.storage, spec.name):
        study = open_study(spec, open_storage(spec))
        return study, queue_trials(study, n_trials, enqueue)


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

    Popping is a WAITING -> RUNNING change that only one process wins on
    PostgreSQL/MySQL (SELECT ... FOR UPDATE); sqlite ignores FOR UPDATE, so
    there workers on the machine take a file lock around it. Why not
    `Study.ask()`: see optuna_adapter.
    """
    with _file_lock(storage_url):
        return pop_waiting_trial(study)


@contextmanager
def _file_lock(storage_url: str | None) -> Iterator[None]:
    """Beside a sqlite file (FOR UPDATE means nothing there); other storages need none."""
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

"""`mlflow run . -e train --backend slurm --backend-config slurm.json`: an MLflow Projects backend for SLURM.

`mlflow run` creates the run here, on the submitting machine; the batch job
runs the entry point through MLflow's own local backend
(`mlflow run <project> --run-id <that run> --env-manager <yours>`), so the
environment managers (local, uv, virtualenv, conda) behave as they do
without SLURM and the step attaches to the run as it always does. The job's
id and its log file are tags of the run. Waiting polls `scontrol`, and a job
that ends without having ended its run (it failed before the step started,
was cancelled or ran out of time) leaves the run FAILED or KILLED, never
RUNNING. A requeued job (preemption, `scontrol requeue`) runs the same
script again, and the step continues the same run with `resume=` from its
last logged checkpoint.

Why not the `mlflow-slurm` plugin (1.0.6): it builds only conda or
virtualenv environments and ignores `--env-manager`; its batch script
exports only MLflow's own variables (not PATH) and calls Lmod's `module`;
its `cancel()` only prints "Cancel"; a job that failed, was cancelled or
timed out leaves the run RUNNING; and it writes `sbatch-<run>.sh` into the
current folder.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.projects.backend.abstract_backend import AbstractBackend
from mlflow.projects.submitted_run import SubmittedRun
from mlflow.projects.utils import (
    PROJECT_BUILD_IMAGE,
    PROJECT_DOCKER_ARGS,
    PROJECT_DOCKER_AUTH,
    PROJECT_ENV_MANAGER,
    PROJECT_STORAGE_DIR,
    PROJECT_SYNCHRONOUS,
    fetch_and_validate_project,
    get_or_create_run,
)
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_BACKEND, MLFLOW_PROJECT_ENV

from trainflow.slurm import jobs
from trainflow.slurm.jobs import SlurmError
from trainflow.tracking import tags as tag

# backend-config keys of ours; sbatch's own are jobs.SBATCH_OPTIONS, any other flag goes through sbatch_args
OWN_KEYS = {"sbatch_args", "log_dir", "poll_s", "wait"}
# what MLflow itself puts into every backend config
MLFLOW_KEYS = {PROJECT_ENV_MANAGER, PROJECT_SYNCHRONOUS, PROJECT_DOCKER_ARGS, PROJECT_STORAGE_DIR, PROJECT_BUILD_IMAGE,
               PROJECT_DOCKER_AUTH}
DEFAULT_LOG_DIR = "~/.mlflow/slurm"  # a home folder is what a cluster's nodes usually share
# a job's end on SLURM, as the run's status
_STATUS = {**dict.fromkeys(jobs.WAITING, RunStatus.SCHEDULED), **dict.fromkeys(jobs.ACTIVE, RunStatus.RUNNING),
           **dict.fromkeys(jobs.SUCCEEDED, RunStatus.FINISHED), **dict.fromkeys(jobs.CANCELLED, RunStatus.KILLED)}


def slurm_backend() -> AbstractBackend:
    """The `mlflow.project_backend` entry point (pyproject.toml) MLflow loads for `--backend slurm`."""
    return SlurmBackend()


class SlurmBackend(AbstractBackend):
    def run(self, project_uri: str, entry_point: str, params: dict[str, Any], version: str | None,
            backend_config: dict[str, Any], tracking_uri: str, experiment_id: str) -> SlurmSubmittedRun:
        options = {k: v for k, v in backend_config.items() if k not in OWN_KEYS | MLFLOW_KEYS}
        extra = backend_config.get("sbatch_args") or []
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            raise _refused("backend config sbatch_args must be a list of strings, e.g. [\"--mem=4G\"]")
        log_dir = Path(os.path.expanduser(str(backend_config.get("log_dir") or DEFAULT_LOG_DIR))).absolute()
        try:
            flags = [*jobs.sbatch_flags(options), *extra]
            jobs.check_submittable(flags)  # SLURM down or a partition that does not exist: before any run exists
        except SlurmError as e:
            raise _refused(str(e)) from None
        env_manager = backend_config.get(PROJECT_ENV_MANAGER)
        work_dir = fetch_and_validate_project(project_uri, version, entry_point, params)
        run = get_or_create_run(None, project_uri, experiment_id, work_dir, version, entry_point, params)
        run_id = run.info.run_id
        client = MlflowClient(tracking_uri)
        log_dir.mkdir(parents=True, exist_ok=True)
        script = log_dir / f"mlflow-{run_id}.sh"
        script.write_text(batch_script(work_dir, entry_point, params, run_id, experiment_id, tracking_uri,
                                       env_manager))
        script.chmod(0o600)  # it names the tracking URI, which may carry credentials
        log = log_dir / "slurm-%j.out"
        try:
            # append: a requeued job's second start must not erase the first one's log
            job_id = jobs.submit(script, [f"--job-name=mlflow-{entry_point}", f"--output={log}", "--open-mode=append",
                                          *flags])
        except SlurmError as e:
            client.set_terminated(run_id, "FAILED")
            raise _refused(str(e)) from None
        client.set_tag(run_id, tag.SLURM_JOB_ID, job_id)
        client.set_tag(run_id, tag.SLURM_LOG, str(log).replace("%j", job_id))
        if env_manager:
            client.set_tag(run_id, MLFLOW_PROJECT_ENV, env_manager)
        print(f"submitted SLURM job {job_id} for MLflow run {run_id}", file=sys.stderr, flush=True)
        submitted = SlurmSubmittedRun(run_id, job_id, client, float(backend_config.get("poll_s", 5)))
        if _waits(backend_config):
            try:
                succeeded = submitted.wait()
            except KeyboardInterrupt:  # Ctrl-C on `mlflow run` ends the job too, as it ends a local run
                submitted.cancel()
                raise
            if not succeeded:
                raise _refused(submitted.failure or f"job {job_id} failed") from None
        return submitted


def batch_script(work_dir: str, entry_point: str, params: dict[str, Any], run_id: str, experiment_id: str,
                 tracking_uri: str, env_manager: str | None) -> str:
    """The job: MLflow's local backend running the entry point in the run `mlflow run` created.

    A requeued job (`SLURM_RESTART_COUNT` > 0: preempted, `scontrol requeue`)
    runs this again; it then continues the same run from its last logged
    checkpoint (`resume=`, trainflow's train step) instead of training over it.
    """
    cmd = [sys.executable, "-m", "mlflow", "run", work_dir, "-e", entry_point, "--run-id", run_id,
           "--experiment-id", experiment_id]
    if env_manager:
        cmd += ["--env-manager", env_manager]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    resume = "resume" not in params and entry_point == "train"
    lines = [
        "#!/bin/bash",
        f"# MLflow run {run_id}: written by trainflow's SLURM backend (trainflow/slurm/backend.py)",
        f"export MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)}",
        f"export MLFLOW_EXPERIMENT_ID={shlex.quote(experiment_id)}",
        f"export MLFLOW_RUN_ID={run_id}",
        f"cd {shlex.quote(work_dir)}",
        "again=()",
        f'[ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 ] && again=(-P resume={run_id})' if resume else "",
        f'exec {shlex.join(cmd)} "${{again[@]}}"',
    ]
    return "\n".join(line for line in lines if line) + "\n"


def _last_line(log: str) -> str:
    """The job log's line that names the cause: the last `error: ...` a step printed, else the last exception."""
    try:
        lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for wanted in (lambda line: line.startswith("error:"), lambda line: re.match(r"^[\w.]+(Error|Exception)\b", line)):
        found = [line for line in lines if wanted(line)]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else "empty log"


def _waits(backend_config: dict[str, Any]) -> bool:
    """Whether to wait here for the job: the config's `wait`, else whether `mlflow run` (the CLI) called us.

    MLflow's CLI submits to any backend but local and kubernetes with
    synchronous=False and returns at once; a user typing `mlflow run`
    expects it to wait and exit with the job's status. The Python API's
    `synchronous` reaches a backend the same way whatever its value, so its
    callers wait on the SubmittedRun (or MLflow does, for synchronous=True).
    """
    if "wait" in backend_config:
        return bool(backend_config["wait"])
    import click

    context = click.get_current_context(silent=True)
    return context is not None and context.command.name == "run"


def _refused(reason: str) -> MlflowException:
    from mlflow.projects import ExecutionException

    return ExecutionException(f"error: SLURM: {reason}")


class SlurmSubmittedRun(SubmittedRun):
    """A batch job carrying one MLflow run: wait, status and cancel through SLURM's clients."""

    def __init__(self, run_id: str, job_id: str, client: MlflowClient, poll_s: float = 5.0) -> None:
        super().__init__()
        self._run_id = run_id
        self.job_id = job_id
        self._client = client
        self._poll_s = poll_s
        self.failure: str | None = None  # why the job failed, once wait() has seen it end

    @property
    def run_id(self) -> str:
        return self._run_id

    def _state(self) -> jobs.JobState | None:
        return jobs.job_state(self.job_id)

    def get_status(self) -> str:
        """The job's state as a run status; once SLURM has forgotten the job, the run's own."""
        state = self._state()
        if state is None:
            return str(self._client.get_run(self.run_id).info.status)
        return RunStatus.to_string(_STATUS.get(state.state, RunStatus.FAILED))

    def wait(self) -> bool:
        """Until the job ends; True when it completed. A run the job left open is ended as the job ended."""
        state = self._state()
        while state is not None and not state.ended:
            time.sleep(self._poll_s)
            state = self._state()
        run = self._client.get_run(self.run_id)
        self._client.set_tag(self.run_id, MLFLOW_PROJECT_BACKEND, "slurm")  # the job's own `mlflow run` said local
        if state is None:  # SLURM forgot it: the run's own status is all there is
            if str(run.info.status) != "FINISHED":
                self.failure = f"job {self.job_id} is gone from SLURM and its run is {run.info.status}"
            return str(run.info.status) == "FINISHED"
        if state.state in jobs.SUCCEEDED:
            return True
        status = "KILLED" if state.state in jobs.CANCELLED else "FAILED"
        if str(run.info.status) in ("RUNNING", "SCHEDULED"):
            self._client.set_terminated(self.run_id, status)
        log = run.data.tags.get(tag.SLURM_LOG, "?")
        self.failure = (f"job {self.job_id} ended {state.state} (exit {state.exit_code}"
                        f"{', ' + state.reason if state.reason not in ('', 'None') else ''}): "
                        f"{_last_line(log)} (log: {log})")
        return False

    def cancel(self) -> None:
        """`scancel` the job and wait for it to end; the run ends KILLED."""
        state = self._state()
        if state is not None and not state.ended:
            jobs.cancel(self.job_id)
            while state is not None and not state.ended:
                time.sleep(min(self._poll_s, 1.0))
                state = self._state()
        if str(self._client.get_run(self.run_id).info.status) != "FINISHED":
            self._client.set_terminated(self.run_id, "KILLED")

"""Talking to SLURM through its own clients: submit a batch script, read a job's state, cancel it.

The commands are the ones a user types (`sbatch`, `scontrol`, `scancel`), so
whatever cluster `SLURM_CONF` (or /etc/slurm) names is the one used. No
accounting daemon is assumed: a job's state comes from `scontrol show job`,
which knows a job until `MinJobAge` after it ended; past that the caller
falls back to what the job itself recorded (the MLflow run's status).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainflow.errors import TrainflowError


class SlurmError(TrainflowError):
    """SLURM refused or cannot be reached; the message is SLURM's own reason."""


# `scontrol show job` states, by what they mean for the run the job carries.
WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED",
           "SPECIAL_EXIT", "STOPPED", "RESIZING"}
ACTIVE = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "POWER_UP_NODE"}
SUCCEEDED = {"COMPLETED"}
CANCELLED = {"CANCELLED", "PREEMPTED", "REVOKED"}
# everything else that ends a job (FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE) is a failure

# The sbatch option each backend-config key sets; a value of true is a bare flag.
SBATCH_OPTIONS = {
    "partition": "--partition", "time": "--time", "nodes": "--nodes", "ntasks_per_node": "--ntasks-per-node",
    "cpus_per_task": "--cpus-per-task", "mem": "--mem", "gres": "--gres", "gpus_per_node": "--gpus-per-node",
    "account": "--account", "qos": "--qos", "constraint": "--constraint", "signal": "--signal",
    "requeue": "--requeue", "exclusive": "--exclusive", "job_name": "--job-name",
}


@dataclass(frozen=True)
class JobState:
    state: str  # SLURM's word: RUNNING, COMPLETED, FAILED ...
    exit_code: str  # "code:signal"
    reason: str

    @property
    def ended(self) -> bool:
        return self.state not in WAITING | ACTIVE


def sbatch_flags(options: Mapping[str, object]) -> list[str]:
    """`--partition=debug --time=10` from `{"partition": "debug", "time": 10}`; unknown keys are refused."""
    unknown = sorted(set(options) - set(SBATCH_OPTIONS))
    if unknown:
        raise SlurmError(f"unknown SLURM option(s) {', '.join(unknown)}: known are {', '.join(sorted(SBATCH_OPTIONS))}"
                         " (or pass any sbatch flag through `sbatch_args`)")
    flags = []
    for key, value in options.items():
        if value is True:
            flags.append(SBATCH_OPTIONS[key])
        elif value not in (None, False):
            flags.append(f"{SBATCH_OPTIONS[key]}={value}")
    return flags


def _slurm(args: Sequence[str], env: Mapping[str, str] | None = None, timeout_s: float = 60) -> str:
    """Run a SLURM client; its stdout, or SlurmError with the last line it printed on failure."""
    if shutil.which(args[0]) is None:
        raise SlurmError(f"no `{args[0]}` on PATH: SLURM's clients are not installed here (slurm-client)")
    try:
        done = subprocess.run(list(args), env=None if env is None else dict(env), capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{args[0]}` got no answer from the SLURM controller within {timeout_s:g}s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        # `sbatch: error: invalid partition specified: gpu` names the culprit; the summary after it does not
        said = [line for line in lines if " error: " in line] or lines
        raise SlurmError(f"`{args[0]}` failed: {said[-1] if said else f'exit {done.returncode}'}")
    return done.stdout


def check_submittable(flags: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Ask the controller whether a job with these flags would be accepted, without submitting one.

    `sbatch --test-only` reaches the controller and checks the partition and
    resources: SLURM down, a typo in a partition and a request no node can
    meet all fail here, before anything is created in MLflow.
    """
    config_file(env)
    _slurm(["sbatch", "--test-only", *flags, "--wrap", "true"], env)


# Where SLURM's clients look for the cluster's configuration: SLURM_CONF, the packaged default, and the copy
# a configless cluster's slurmd caches on its nodes.
DEFAULT_CONFS = ("/etc/slurm/slurm.conf", "/run/slurm/conf/slurm.conf")


def config_file(env: Mapping[str, str] | None = None) -> Path:
    """The configuration the clients will read; SlurmError at once where there is none.

    Without one, every client retries for a minute before saying so.
    """
    named = (os.environ if env is None else env).get("SLURM_CONF")
    if named:
        if not Path(named).is_file():
            raise SlurmError(f"SLURM_CONF={named} does not exist")
        return Path(named)
    for path in DEFAULT_CONFS:
        if Path(path).is_file():
            return Path(path)
    raise SlurmError(f"no SLURM cluster configured here: SLURM_CONF is unset and {DEFAULT_CONFS[0]} does not exist")


def submit(script: Path, flags: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """`sbatch` a script; the job id."""
    out = _slurm(["sbatch", "--parsable", *flags, str(script)], env).strip()
    match = re.fullmatch(r"(\d+)(;\S+)?", out.splitlines()[-1] if out else "")
    if match is None:
        raise SlurmError(f"sbatch answered {out!r}, not a job id")
    return match.group(1)


def job_state(job_id: str, env: Mapping[str, str] | None = None) -> JobState | None:
    """The job's state as the controller knows it; None once it has forgotten the job (past MinJobAge)."""
    try:
        out = _slurm(["scontrol", "show", "job", "--oneliner", job_id], env)
    except SlurmError as e:
        if "Invalid job id" in str(e):
            return None
        raise
    fields = dict(re.findall(r"(\w+)=(\S*)", out))
    return JobState(fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", "?"), fields.get("Reason", ""))


def cancel(job_id: str, env: Mapping[str, str] | None = None) -> None:
    _slurm(["scancel", job_id], env)

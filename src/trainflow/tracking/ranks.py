"""Which process of a distributed job this is, and what it may write.

Only rank zero owns the MLflow run; the others must see the same run id (to
read what they need) and write nothing: no second run, no duplicate params,
artifacts or registry versions. Two ways a follower learns the run id:

- Lightning's own launcher (`trainer=ddp` started as one process) re-runs the
  script per extra rank after rank zero opened the run: the id is inherited
  in `TRAINFLOW_RUN_ID`.
- torchrun or SLURM's srun start every rank at once, on several nodes maybe:
  rank zero tags its run with the job (`trainflow.job`), and the others find
  it through the tracking server, the one store every node shares.

Step code gates on one flag, `StepRun.leader` (False on a follower), set when
the run is placed: it is known before any Trainer exists, holds in steps that
never build one (evaluate, predict), and says what the gate is about, whether
this process owns the run. A follower's client is a `ReadOnlyClient`, so a
write that step code did not gate is dropped rather than duplicated. Inside
Lightning, `RunLogger` keeps Lightning's `@rank_zero_only`, as Lightning's
Logger contract asks: under `ddp_spawn` every spawned rank holds a copy of
the leader's StepRun, and only Lightning knows which rank it is.
"""

from __future__ import annotations

import os
import time
from typing import Any

from trainflow.errors import TrackingError
from trainflow.tracking import tags as tag

LEADER_RUN_ENV = "TRAINFLOW_RUN_ID"
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
_WRITES = ("log_", "set_", "create_", "delete_", "update_", "register", "rename_", "transition_", "copy_")


def process_rank() -> int:
    """0 on the leader; the first non-zero rank variable otherwise."""
    for var in _RANK_VARS:
        value = os.environ.get(var)
        if value and value.isdigit() and int(value) != 0:
            return int(value)
    return 0


def is_follower() -> bool:
    """A non-zero rank: of Lightning's launcher (run id inherited) or of torchrun/srun (run id looked up)."""
    return process_rank() != 0 and (bool(os.environ.get(LEADER_RUN_ENV)) or job_key() is not None)


def job_key() -> str | None:
    """What every rank of one torchrun/srun job shares and no other job's RUNNING run does; None otherwise."""
    env = os.environ
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        # the rendezvous endpoint: one live job per address and port
        return f"torchrun:{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}:{env['TORCHELASTIC_RUN_ID']}"
    return None


def find_leader_run(client: Any, key: str, experiment: str, started_after_s: float, timeout_s: float,
                    poll_s: float = 1.0) -> str:
    """The RUNNING run rank zero opened for this job in `experiment` (an id, or a name it may still create).

    Only runs started after `started_after_s` (epoch seconds) count: a job
    killed outright leaves its run RUNNING, and a static rendezvous or a
    requeued SLURM job gives the next job the same key.
    """
    deadline = time.monotonic() + timeout_s
    filter_string = (f"tags.`{tag.JOB}` = '{key}' and attributes.status = 'RUNNING' "
                     f"and attributes.start_time >= {int(started_after_s * 1000)}")
    while True:
        experiment_id = experiment if experiment.isdigit() else getattr(
            client.get_experiment_by_name(experiment), "experiment_id", None)
        runs = client.search_runs([experiment_id], filter_string, max_results=1) if experiment_id else []
        if runs:
            return str(runs[0].info.run_id)
        if time.monotonic() > deadline:
            raise TrackingError(f"rank {process_rank()}: no run of job {key} appeared within {timeout_s:g}s "
                                "(did rank 0 start, against the same tracking server?)")
        time.sleep(poll_s)


class ReadOnlyClient:
    """An MlflowClient that reads and drops writes, for non-zero ranks.

    Rank-zero-only writes are what Lightning does for its own loggers; this
    applies the same rule to everything a step writes through its client.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name.startswith(_WRITES):
            return lambda *args, **kwargs: None
        return getattr(self._client, name)

"""Every `trainflow.*` tag key, in one place.

Tags are how steps talk to each other and to users: a key written by one
module (train's `MODEL_URI`) is read by another (the sweep's registration),
by the pipeline, by tests and by people filtering runs in the UI. A key spelt
twice drifts; here each is spelt once, grouped by who writes it. The strings
are a public interface (README, saved searches): change one only on purpose.
"""

from __future__ import annotations

PREFIX = "trainflow."

# --- the step contract (tracking.run): on every step's run -----------------
STEP = "trainflow.step"  # prepare_data | train | evaluate | predict | sweep | main
RUN_NAME = "trainflow.run_name"  # trainflow's derived name, also where the user named the run (UI group-by)
OUTPUT = "trainflow.output_uri"  # what the step hands on; `OUTPUT.<name>` for extra outputs
ERROR = "trainflow.error"  # why a run ended FAILED or KILLED (secrets masked)
GIT_COMMIT = "trainflow.git.commit"
GIT_DIRTY = "trainflow.git.dirty"
CODE_VERSION = "trainflow.code_version"  # commit + digest of uncommitted changes
LOCK_DIGEST = "trainflow.uv_lock.digest"  # sha256 of uv.lock: what reproduce checks for dependency drift
CONFIG_HASH = "trainflow.config_hash"
OVERRIDES = "trainflow.overrides"  # Hydra overrides as JSON (secrets masked)
USER_TAGS = "trainflow.tags"  # the config's `tags`, comma-separated
JOB = "trainflow.job"  # torchrun/srun job id: other ranks find rank zero's run by it
RESUMED_INTO = "trainflow.resumed_into"  # on the run `mlflow run` made for a resume, closed at once
RESUMES = "trainflow.resumes"  # how often a train run was resumed
SYNCED_FROM = "trainflow.synced_from"  # an outage's unsynced folder, uploaded later

# --- datasets and lineage (tracking.datasets, evaluate, predict) -----------
DATA_URI = "trainflow.data.uri"
DATA_DIGEST = "trainflow.data.digest"
DATA_BYTES_DOWNLOADED = "trainflow.data.bytes_downloaded"
UPSTREAM_PREPARE_DATA = "trainflow.upstream.prepare_data"
UPSTREAM_TRAIN = "trainflow.upstream.train"
EVALUATED = "trainflow.evaluated"  # the model or checkpoint URI an evaluate run tested
PREDICTED = "trainflow.predicted"  # the model URI a predict run used

# --- models (registry, train): on train runs and on model versions ---------
MODEL_URI = "trainflow.model_uri"  # the logged pyfunc of a train run
REGISTERED = "trainflow.registered"  # models:/NAME/N a run registered
RUN_ID = "trainflow.run_id"  # on a version: the train run that made it
MONITOR = "trainflow.monitor"
MODEL_DIGEST = "trainflow.model.digest"  # on an evaluate run: the weights it evaluated (an alias may move)
MONITOR_VALUE = "trainflow.monitor.value"

# --- evaluation and promotion (evaluate, registry): on runs and versions ----
EVAL_PREFIX = "trainflow.eval."  # + a test metric (`trainflow.eval.test/acc`)
EVAL_DATA_DIGEST = "trainflow.eval.data_digest"
EVAL_TEST_SCOPE = "trainflow.eval.test_scope"  # how much of the test split a figure covers
EVAL_RUN_ID = "trainflow.eval.run_id"
PROMOTION_DECISION = "trainflow.promotion.decision"  # promoted | kept | skipped: ...
PROMOTION_METRIC = "trainflow.promotion.metric"
PROMOTION_CANDIDATE = "trainflow.promotion.candidate"
PROMOTION_CHAMPION = "trainflow.promotion.champion"
PROMOTION_CHAMPION_VERSION = "trainflow.promotion.champion_version"

# --- reproduce (pipeline.reproduce): on the new run -------------------------
REPRODUCES = "trainflow.reproduces"  # the run id this run reproduces
REPRODUCE_DRIFT = "trainflow.reproduce.drift"  # what differed from the original (allow_drift=true)

# --- the pipeline (pipeline.main, pipeline.cache) ---------------------------
PIPELINE_STEPS = ("prepare_data", "train", "evaluate")  # main's steps, in order: each has its pipeline_step keys
CACHE_KEY = "trainflow.cache_key"  # on a step run the pipeline may reuse
PIPELINE_REUSED = "trainflow.pipeline.reused"  # steps reused from the cache, comma-separated
HEADLINE_RUN = "trainflow.headline.run_id"  # on a pipeline or sweep parent: whose test metrics it repeats

# --- sweeps (sweep.*): on the parent run and on trials -----------------------
SWEEP_STUDY = "trainflow.sweep.study"
SWEEP_STORAGE = "trainflow.sweep.storage"  # password masked
SWEEP_DIRECTION = "trainflow.sweep.direction"
SWEEP_METRIC = "trainflow.sweep.metric"
SWEEP_N_TRIALS = "trainflow.sweep.n_trials"
SWEEP_N_WORKERS = "trainflow.sweep.n_workers"
SWEEP_QUEUED = "trainflow.sweep.queued"
SWEEP_BEST_TRIAL = "trainflow.sweep.best_trial"
SWEEP_BEST_RUN_ID = "trainflow.sweep.best_run_id"
SWEEP_RUN_ID = "trainflow.sweep.run_id"  # on a registered version: the sweep that chose it
TRIAL_NUMBER = "trainflow.trial.number"
TRIAL_STATE = "trainflow.trial.state"  # COMPLETE | PRUNED | FAIL
TRIAL_PARAMS = "trainflow.trial.params"
TRIAL_WORKER = "trainflow.trial.worker"
TRIAL_VALUE = "trainflow.trial.value"

# --- SLURM (trainflow.slurm.backend): on a run `mlflow run --backend slurm` submitted --
SLURM_JOB_ID = "trainflow.slurm.job_id"
SLURM_LOG = "trainflow.slurm.log"  # the job's output file on the cluster

# --- Optuna study user attrs (sweep.recovery), not run tags ------------------
STUDY_LEASE_PREFIX = "trainflow.lease."  # + the sweep's parent run id: the time of its last heartbeat


def output(name: str = "output") -> str:
    """The tag holding a step's output called `name` (`output` is the main one)."""
    return OUTPUT if name == "output" else f"{OUTPUT}.{name}"


def eval_metric(metric: str) -> str:
    """A version's recorded test figure: promotion compares against it."""
    return f"{EVAL_PREFIX}{metric}"


def pipeline_step(step: str, field: str) -> str:
    """The pipeline run's link to one of its steps (`run_id`, `reused`, `output`)."""
    return f"{PREFIX}pipeline.{step}.{field}"

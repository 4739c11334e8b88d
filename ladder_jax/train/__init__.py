"""Training: the state and optimiser (state.py), the compiled step (step.py), a job of K >= 1
models (job.py), evaluation (evaluate.py), the loop (loop.py) with its log lines
(progress.py) and stop requests (interrupt.py), the run directory (workdir.py) and reading
runs back (restore.py). The names below are the package's public face."""

from ladder_jax.errors import CheckpointError, Interrupted, TrainingDiverged
from ladder_jax.train.evaluate import error_rate, population_stats, predict
from ladder_jax.train.job import Job, build_job, check_models, job_key, load_dataset
from ladder_jax.train.loop import (
                                   RunResult,
                                   replica_workdir,
                                   train_and_evaluate,
                                   train_group,
                                   train_models,
)
from ladder_jax.train.progress import eta_string, speed_string
from ladder_jax.train.restore import load_run, predict_from_workdir
from ladder_jax.train.state import (
                                   Schedule,
                                   TrainState,
                                   learning_rate_schedule,
                                   make_optimizer,
                                   metric_names,
)
from ladder_jax.train.step import DeviceData, noise_block_size, train_steps

__all__ = [name for name in dir() if not name.startswith("_")]  # the names above

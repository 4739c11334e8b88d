"""Training: the state and optimiser (state.py), the compiled step (step.py), a job of K >= 1
models (job.py), evaluation (evaluate.py), THE loop (loop.py) and the run directory
(workdir.py). The names below are the package's public face."""

from ladder_jax.train.evaluate import error_rate, population_stats, predict
from ladder_jax.train.job import Job, build_job, check_models, load_dataset, shape_key
from ladder_jax.train.loop import (
                                   RunResult,
                                   eta_string,
                                   load_run,
                                   predict_from_workdir,
                                   replica_workdir,
                                   train_and_evaluate,
                                   train_group,
                                   train_models,
)
from ladder_jax.train.state import (
                                   Schedule,
                                   TrainingDiverged,
                                   TrainState,
                                   learning_rate_schedule,
                                   make_optimizer,
                                   metric_names,
)
from ladder_jax.train.step import DeviceData, noise_block_size, train_steps
from ladder_jax.train.workdir import CheckpointError

__all__ = [name for name in dir() if not name.startswith("_")]  # the names above

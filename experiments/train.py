"""The general runner: any preset, dataset and model family, one run or K replicas.

    python -m experiments.train --preset=full_100 --dataset=fashion_mnist --max_steps=600
    python -m experiments.train --preset=conv_small_gamma_100 --epochs=10
    python -m experiments.train --preset=full_100 --num_replicas=4   # seeds 0..3, one program

Re-running the same command resumes the run; --max_steps, --eval_every, --checkpoint_every
and --steps_per_call may change on resume.
"""

from __future__ import annotations

from absl import app, logging

from experiments import entry, shared_flags
from ladder_jax import config, parallel, references, train

FLAGS = shared_flags.FLAGS

shared_flags.define_model_flags()
shared_flags.define_data_flags()
shared_flags.define_schedule_flags()
shared_flags.define_output_flags()
shared_flags.define_run_flags("Default: runs/<preset>_labels<N>_seed<S>.")
shared_flags.define_scale_out_flags()
shared_flags.install_grouped_help()


def default_workdir(cfg: config.TrainConfig) -> str:
    return f"runs/{FLAGS.preset}_labels{cfg.num_labels}_seed{cfg.seed}"


def _mesh(cfg: config.TrainConfig, num_replicas: int):
    mode = FLAGS.distributed
    if mode == "off" and FLAGS.coordinator_address:
        mode = "manual"
    parallel.initialize_distributed(mode, coordinator_address=FLAGS.coordinator_address,
                                    num_processes=FLAGS.num_processes,
                                    process_id=FLAGS.process_id)
    if not parallel.is_main_process():  # process 0 logs; the others report problems only
        logging.set_verbosity(logging.WARNING)
    num_devices = parallel.choose_num_devices(
        FLAGS.num_devices, (cfg.batch_size, cfg.unlabeled_batch_size), num_replicas)
    mesh = parallel.make_mesh(num_devices, num_replicas) if parallel.needs_mesh(num_devices) \
        else None
    if mesh is not None:
        logging.info("mesh: %s", parallel.describe(mesh))
    return mesh


def configs_from_flags() -> list[config.TrainConfig]:
    """The run's config, or the --num_replicas=K configs (seeds --seed .. --seed+K-1)."""
    cfg = shared_flags.config_from_flags(config.preset(FLAGS.preset))
    k = FLAGS.num_replicas
    if k < 1:
        raise config.ConfigError(f"--num_replicas={k} must be >= 1")
    return [cfg.replace(seed=cfg.seed + i) for i in range(k)]


def run(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    cfgs = configs_from_flags()
    cfg, k = cfgs[0], len(cfgs)
    mesh = _mesh(cfg, k)
    if k == 1:
        workdir = FLAGS.workdir or default_workdir(cfg)
        reference = references.LEARNING_CURVES.get(FLAGS.preset) \
            if cfg.identity() == config.preset(FLAGS.preset).identity() else None
        results = [train.train_and_evaluate(cfg, workdir, restart=FLAGS.restart, mesh=mesh,
                                            reference=reference).results]
        dirs = [workdir]
    else:
        workdir = FLAGS.workdir or f"{default_workdir(cfg)}_replicas{k}"
        dirs = [train.replica_workdir(workdir, c) for c in cfgs]
        results = [r.results for r in train.train_group(cfgs, workdir, restart=FLAGS.restart,
                                                        mesh=mesh)]
    if parallel.is_main_process():
        for r, d in zip(results, dirs):
            print(f"test error: {100 * r['final_test_error']:.2f}% (step {r['step']}, "
                  f"workdir {d})")
    return 0


main = entry.entry_point(run, lambda: FLAGS.compilation_cache_dir)

if __name__ == "__main__":
    app.run(main)

"""Ladder network on permutation-invariant MNIST: flags -> config -> train_and_evaluate.

With no flags: the paper's full ladder, 100 labels, 150 epochs, seed 0.
    python -m experiments.mnist_100labels
A few-minute demo:
    python -m experiments.mnist_100labels --epochs=3 --workdir=runs/demo
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from experiments import common
from ladder_jax import config as config_lib
from ladder_jax import data, parallel, replicas, train

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Run directory (config, metrics, checkpoints, results). "
                    "Default: runs/<preset>_labels<N>_seed<S>. Re-running resumes it.")
flags.DEFINE_enum("preset", "full_100", list(config_lib.PRESETS),
                  "Named paper setting; the flags below override its fields.")
flags.DEFINE_string("num_labels", None, "Labeled examples, a multiple of 10, or 'all'.")
flags.DEFINE_integer("seed", 0, "Seed for label choice, init, data order and noise.")
flags.DEFINE_integer("epochs", None, "Epochs (passes over the unlabeled set). Paper: 150.",
                     lower_bound=1)
flags.DEFINE_integer("max_steps", None, "Stop after this many steps (smoke runs); the "
                     "learning-rate schedule still spans --epochs.", lower_bound=0)
flags.DEFINE_integer("batch_size", None, "Labeled (and unlabeled) examples per step. "
                     "Paper: 100 + 100.", lower_bound=1)
flags.DEFINE_float("lr", None, "Adam learning rate before the decay. Paper: 0.002.")
flags.DEFINE_list("noise_std", None, "Encoder noise std: one value, or one per layer "
                  "(input first).")
flags.DEFINE_list("denoise_weights", None, "Denoising cost weights lambda_0..lambda_L "
                  "(input first); all 0 = supervised baseline.")
flags.DEFINE_list("layer_sizes", None, "Layer widths, input first, e.g. 784,1000,500,250,"
                  "250,250,10.")
flags.DEFINE_enum("combinator", None, list(config_lib.COMBINATORS), "Decoder combinator g.")
flags.DEFINE_enum("matmul_dtype", None, list(config_lib.MATMUL_DTYPES), "Matmul operands: "
                  "float32 (default, the paper's computation) or bfloat16 (float32 "
                  "accumulation; faster on CPUs with AVX512-BF16, changes the numbers).")
flags.DEFINE_enum("data_source", None, list(data.SOURCES), "Where MNIST comes from: pypi "
                  "(offline wheel cache), idx (--data_dir of IDX files) or tfds.")
flags.DEFINE_string("data_dir", None, "Directory of IDX files (idx) or TFDS data_dir (tfds).")
flags.DEFINE_integer("num_validation", None, "Training images held out as a validation set.",
                     lower_bound=0)
flags.DEFINE_integer("eval_every", None, "Evaluate on the test set every N epochs.",
                     lower_bound=1)
flags.DEFINE_integer("checkpoint_every", None, "Steps between checkpoints (0: at evaluations "
                     "and the end only).", lower_bound=0)
flags.DEFINE_integer("steps_per_call", None, "Training steps per compiled call (lax.scan).",
                     lower_bound=1)
flags.DEFINE_bool("restart", False, "Discard an existing run in --workdir and start over.")
# Scale-out (docs/scale_out.md).
flags.DEFINE_integer("num_devices", 0, "Devices to train on (0: all devices of all "
                     "processes). Each batch is split over them (data parallel); batch sizes "
                     "must divide evenly. One device = the plain single-device path.",
                     lower_bound=0)
flags.DEFINE_integer("num_replicas", 1, "Train this many independent models (seeds --seed .. "
                     "--seed+K-1) in one compiled program; each reports into "
                     "<workdir>/replica_seed<S>_labels<N>/.", lower_bound=1)
flags.DEFINE_enum("distributed", "off", ["off", "auto", "manual"], "Multi-host: 'auto' calls "
                  "jax.distributed.initialize() with no arguments (TPU pods, SLURM); 'manual' "
                  "needs --coordinator_address, --num_processes, --process_id. Implied "
                  "'manual' when --coordinator_address is given.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed=manual).")
flags.DEFINE_integer("process_id", None, "This process's index (--distributed=manual).")


def _floats(name: str, values: list[str] | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise config_lib.ConfigError(
            f"--{name}={','.join(values)} must be numbers separated by commas") from None


def config_from_flags() -> config_lib.TrainConfig:
    """The preset with every given flag applied."""
    cfg = config_lib.preset(FLAGS.preset)
    model_changes = {}
    for name in ("noise_std", "denoise_weights"):
        values = _floats(name, FLAGS[name].value)
        if values is not None:
            model_changes[name] = values[0] if len(values) == 1 else values
    if FLAGS.layer_sizes is not None:
        sizes = _floats("layer_sizes", FLAGS.layer_sizes)
        model_changes["layer_sizes"] = tuple(int(s) for s in sizes)
        n = len(sizes)
        # Per-layer settings of the preset no longer fit: keep their first value per layer.
        model_changes.setdefault("noise_std", cfg.model.noise_std[0])
        if "denoise_weights" not in model_changes and n != len(cfg.model.denoise_weights):
            raise config_lib.ConfigError(
                f"--layer_sizes has {n} layers; give --denoise_weights with {n} values too")
    for name in ("combinator", "matmul_dtype"):
        if FLAGS[name].value is not None:
            model_changes[name] = FLAGS[name].value
    changes = {"seed": FLAGS.seed}
    for name in ("num_labels", "epochs", "max_steps", "lr", "data_source", "data_dir",
                 "num_validation", "eval_every", "checkpoint_every", "steps_per_call"):
        if FLAGS[name].value is not None:
            changes[name] = FLAGS[name].value
    if FLAGS.batch_size is not None:
        changes["batch_size"] = changes["unlabeled_batch_size"] = FLAGS.batch_size
    return cfg.replace(model=model_changes, **changes)


def default_workdir(cfg: config_lib.TrainConfig) -> str:
    return f"runs/{FLAGS.preset}_labels{cfg.num_labels}_seed{cfg.seed}"


def main(argv: list[str]) -> int:
    common.quiet_library_logs()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    try:
        cfg = config_from_flags()
        mode = FLAGS.distributed
        if mode == "off" and FLAGS.coordinator_address:
            mode = "manual"
        parallel.initialize_distributed(mode, coordinator_address=FLAGS.coordinator_address,
                                        num_processes=FLAGS.num_processes,
                                        process_id=FLAGS.process_id)
        if not parallel.is_main_process():  # process 0 logs; the others report problems only
            logging.set_verbosity(logging.WARNING)
        k = FLAGS.num_replicas
        num_devices = parallel.choose_num_devices(
            FLAGS.num_devices, (cfg.batch_size, cfg.unlabeled_batch_size), k)
        mesh = parallel.make_mesh(num_devices, k) if parallel.needs_mesh(num_devices) else None
        if mesh is not None:
            logging.info("mesh: %s", parallel.describe(mesh))
        if k > 1:
            workdir = FLAGS.workdir or f"{default_workdir(cfg)}_replicas{k}"
            cfgs = [cfg.replace(seed=cfg.seed + i) for i in range(k)]
            group = replicas.train_replicas_and_evaluate(cfgs, workdir, restart=FLAGS.restart,
                                                         mesh=mesh)
            if parallel.is_main_process():
                for c, r in zip(cfgs, group):
                    print(f"test error: {100 * r.results['final_test_error']:.2f}% "
                          f"(step {r.results['step']}, workdir "
                          f"{replicas.replica_workdir(workdir, c)})")
            return 0
        workdir = FLAGS.workdir or default_workdir(cfg)
        result = train.train_and_evaluate(cfg, workdir, restart=FLAGS.restart, mesh=mesh)
    except (config_lib.ConfigError, data.DataError, train.TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not parallel.is_main_process():
        return 0
    logging.info("results in %s", workdir)
    print(f"test error: {100 * result.results['final_test_error']:.2f}% "
          f"(step {result.results['step']}, workdir {workdir})")
    return 0


if __name__ == "__main__":
    app.run(main)

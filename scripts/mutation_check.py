"""Plants known bugs in the training procedure one at a time and checks the tests catch them
(issue #19). Not part of CI: it takes a while (each mutant reruns the tests it names).

    python scripts/mutation_check.py                  # every mutant, markdown table at the end
    python scripts/mutation_check.py --only noise     # mutants whose name contains 'noise'
    python scripts/mutation_check.py --list           # the mutants, nothing run

The repository (without .git and .venv) is copied to a temporary directory once; each
mutant replaces one exact piece of text (which must occur exactly once) in one library file
of the copy, runs its tests there with this interpreter (the copy's ladder_jax is imported,
checked first), records whether pytest failed (caught) or passed (missed), and restores the
file. A first run without any mutant checks that the selected tests pass on the clean copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TP = "tests/test_training_procedure.py"


def tp(*names: str) -> list[str]:
    """Node ids of tests in tests/test_training_procedure.py."""
    return [f"{TP}::{name}" for name in names]


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # library file, relative to the repository root
    old: str  # exact text, occurring once
    new: str
    tests: list[str]  # pytest arguments (node ids)
    issue: bool  # one of issue #19's planted bugs


MUTANTS = [
    # ---- the bugs of issue #19
    Mutant("lr decay starts at 33.5 % (lr halved by 67 %)", "ladder_jax/train/state.py",
           "decay_begin = round(cfg.decay_start * total_steps)",
           "decay_begin = round(cfg.decay_start * total_steps / 2)",
           tp("test_lr_schedule_is_constant_then_linear_to_zero", "test_paper_lr_written_numbers",
              "test_compiled_step_uses_the_paper_lr", "test_metrics_lr_follows_the_schedule"),
           True),
    Mutant("lr decay starts at 33.5 % in the compiled step only", "ladder_jax/train/step.py",
           "lr=lr, decay_start=decay_start, epochs=epochs)",
           "lr=lr, decay_start=decay_start / 2, epochs=epochs)",
           tp("test_compiled_step_uses_the_paper_lr"), True),
    Mutant("same corruption noise at every step", "ladder_jax/train/step.py",
           "steps = state.step + jnp.arange(block, dtype=state.step.dtype)",
           "steps = jnp.zeros(block, dtype=state.step.dtype)",
           tp("test_noise_changes_every_step_and_depends_on_seed_and_step_alone",
              "test_noise_of_each_step_of_a_call_is_drawn_from_seed_and_step"), True),
    Mutant("noise repeats every call (position in the call, not the step)",
           "ladder_jax/train/step.py",
           "steps = state.step + jnp.arange(block, dtype=state.step.dtype)",
           "steps = jnp.arange(block, dtype=state.step.dtype)",
           tp("test_noise_changes_every_step_and_depends_on_seed_and_step_alone",
              "test_noise_of_each_step_of_a_call_is_drawn_from_seed_and_step"), True),
    Mutant("same noise for every step of a call", "ladder_jax/train/step.py",
           "steps = state.step + jnp.arange(block, dtype=state.step.dtype)",
           "steps = state.step + jnp.zeros(block, dtype=state.step.dtype)",
           tp("test_noise_changes_every_step_and_depends_on_seed_and_step_alone",
              "test_noise_of_each_step_of_a_call_is_drawn_from_seed_and_step"), True),
    Mutant("same data order in every pass", "ladder_jax/datasets/rows.py",
           "jax.random.permutation(jax.random.fold_in(key, e), n)",
           "jax.random.permutation(jax.random.fold_in(key, 0 * e), n)",
           tp("test_every_unlabeled_row_once_per_pass_and_a_new_order_each_pass",
              "test_labeled_stream_cycles_through_every_labeled_row_before_repeating"), True),
    Mutant("labeled rows may overlap the validation split", "ladder_jax/datasets/rows.py",
           "labeled = select_labeled(labels, num_labels, seed, num_classes, exclude=val_rows)",
           "labeled = select_labeled(labels, num_labels, seed, num_classes, exclude=None)",
           tp("test_labeled_rows_balanced_inside_the_training_split"), True),
    Mutant("checkpoints between evaluations carry stale (zero) statistics",
           "ladder_jax/train/loop.py",
           "if not evaluated:  # a checkpoint carries statistics of its own parameters",
           "if False:  # a checkpoint carries statistics of its own parameters",
           tp("test_every_checkpoint_carries_the_statistics_of_its_own_parameters"), True),
    Mutant("AMLP leaky slope 0.2 instead of 0.1", "ladder_jax/combinators.py",
           "AMLP_LEAK = 0.1", "AMLP_LEAK = 0.2",
           tp("test_amlp_combinator_matches_pezeshki_equations"), True),
    Mutant("labeled batches drawn from all training images", "ladder_jax/train/job.py",
           "rows_lib.stream_key(cfg.seed, rows_lib.LABELED_STREAM), r.labeled, step,",
           "rows_lib.stream_key(cfg.seed, rows_lib.LABELED_STREAM), r.unlabeled, step,",
           tp("test_class_cost_of_the_compiled_step_sees_labeled_rows_only"), True),
    Mutant("population statistics over the labeled rows", "ladder_jax/train/job.py",
           "population_stats(params, cfg.model, d.images, r.unlabeled, d.preprocessing)",
           "population_stats(params, cfg.model, d.images, r.labeled, d.preprocessing)",
           tp("test_population_stats_over_the_unlabeled_rows"), True),
    # ---- more of the same kind
    Mutant("lr decays to lr/2 instead of 0", "ladder_jax/train/state.py",
           "optax.linear_schedule(cfg.lr, 0.0,", "optax.linear_schedule(cfg.lr, cfg.lr / 2,",
           tp("test_lr_schedule_is_constant_then_linear_to_zero",
              "test_compiled_step_uses_the_paper_lr"), False),
    Mutant("noise key ignores the seed", "ladder_jax/datasets/rows.py",
           "return stream_key(seed, NOISE_STREAM)", "return stream_key(0, NOISE_STREAM)",
           tp("test_noise_changes_every_step_and_depends_on_seed_and_step_alone"), False),
    Mutant("validation rows in the unlabeled set", "ladder_jax/train/job.py",
           "jnp.asarray(np.sort(train_rows), jnp.int32), val_rows))",
           "jnp.arange(len(labels), dtype=jnp.int32), val_rows))",
           tp("test_every_unlabeled_row_once_per_pass_and_a_new_order_each_pass",
              "test_population_stats_over_the_unlabeled_rows"), False),
    Mutant("labeled rows not class-balanced", "ladder_jax/datasets/rows.py",
           "candidates = np.flatnonzero((labels == c) & allowed)",
           "candidates = np.flatnonzero(allowed)",
           tp("test_labeled_rows_balanced_inside_the_training_split"), False),
    Mutant("prediction with the test batch's statistics", "ladder_jax/models/__init__.py",
           "encode(params, cfg, x, bn_stats=bn_stats).logits", "encode(params, cfg, x).logits",
           tp("test_every_checkpoint_carries_the_statistics_of_its_own_parameters"), False),
    Mutant("denoising cost gives no gradient (broken unsupervised path)", "ladder_jax/losses.py",
           "total = class_cost + denoise_total",
           "total = class_cost + jax.lax.stop_gradient(denoise_total)",
           tp("test_ladder_beats_supervised_baseline_on_mnist"), False),
    Mutant("clean instead of corrupted output in the supervised cost", "ladder_jax/losses.py",
           "part_sizes=parts, noisy=(True, True, False),",
           "part_sizes=parts, noisy=(False, True, False),",
           ["tests/test_model.py::test_class_cost_uses_corrupted_output_of_labeled_rows_only"],
           False),
    Mutant("decoder normaliser var instead of sqrt(var + eps)", "ladder_jax/models/mlp.py",
           "estimates[layer] = ops.normalize(\n"
           "                zhat, clean_stats.mean[layer], clean_stats.var[layer], cfg.bn_eps\n"
           "            )",
           "estimates[layer] = (zhat - clean_stats.mean[layer]) / clean_stats.var[layer]",
           [("tests/test_model.py::"
             "test_decoder_normalises_with_sqrt_var_eps_of_clean_unlabeled_preactivations")],
           False),
]


def copy_repo(target: str) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache",
                                    ".ruff_cache", ".hypothesis", "*.egg-info", "runs")
    shutil.copytree(REPO, target, ignore=ignore, symlinks=True)


def run_tests(root: str, tests: list[str], timeout: float
              ) -> tuple[str, float, list[str], str]:
    """('pass' | 'fail' | 'timeout' | 'error', seconds, the failed tests' short summary
    lines, last lines of output). Every named test runs (no -x): the table says which
    of them caught the bug."""
    env = dict(os.environ, PYTHONPATH=root)
    start = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests],
            cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - start, [], ""
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    failed = [line.split(" ", 1)[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    status = {0: "pass", 1: "fail"}.get(proc.returncode, "error")
    return status, time.time() - start, failed, "\n".join(lines[-6:])


def check_import(root: str) -> None:
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", "import ladder_jax; print(ladder_jax.__file__)"],
                         cwd=root, env=env, capture_output=True, text=True, check=True)
    path = os.path.realpath(out.stdout.strip())
    if not path.startswith(os.path.realpath(root)):
        sys.exit(f"the copy imports ladder_jax from {path}, not from {root}")


def short(tests: list[str]) -> str:
    return ", ".join(t.split("::")[-1] if t.startswith(TP) else t.replace("tests/", "")
                     for t in tests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run mutants whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
    parser.add_argument("--no-clean-run", action="store_true",
                        help="skip the check that the tests pass without a mutant")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.only.lower() in m.name.lower()]
    if args.list:
        for m in mutants:
            print(f"{'issue' if m.issue else 'extra'}  {m.name}  [{m.path}]  {short(m.tests)}")
        return

    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        root = os.path.join(tmp, "repo")
        copy_repo(root)
        check_import(root)
        for m in mutants:  # every mutant must apply before anything runs
            with open(os.path.join(root, m.path)) as f:
                count = f.read().count(m.old)
            if count != 1:
                sys.exit(f"mutant {m.name!r}: its text occurs {count} times in {m.path}")
        if not args.no_clean_run:
            tests = sorted({t for m in mutants for t in m.tests})
            status, seconds, _, tail = run_tests(root, tests, args.timeout)
            print(f"clean copy: {status} ({seconds:.0f} s)", flush=True)
            if status != "pass":
                sys.exit(f"the tests do not pass without a mutant:\n{tail}")
        rows = []
        for m in mutants:
            path = os.path.join(root, m.path)
            with open(path) as f:
                original = f.read()
            try:
                with open(path, "w") as f:
                    f.write(original.replace(m.old, m.new))
                status, seconds, failed, tail = run_tests(root, m.tests, args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            verdict = {"fail": "caught", "pass": "MISSED"}.get(status, status)
            by = sorted({line.split(" - ")[0].split("::")[-1].split("[")[0] for line in failed})
            rows.append((m, verdict, seconds, by))
            print(f"{verdict:>8}  {seconds:5.0f} s  {m.name}", flush=True)
            for line in failed:
                print(f"          {line[:160]}", flush=True)
            if status in ("error", "timeout"):
                print(tail, flush=True)

    print()
    print("| bug | issue #19 | file | tests run | caught? | failing tests | seconds |")
    print("|---|---|---|---|---|---|---|")
    for m, verdict, seconds, by in rows:
        print(f"| {m.name} | {'yes' if m.issue else ''} | {m.path} | {short(m.tests)} | "
              f"{verdict} | {', '.join(by)} | {seconds:.0f} |")
    missed = [m.name for m, verdict, _, _ in rows if m.issue and verdict != "caught"]
    if missed:
        sys.exit(f"issue bugs not caught: {', '.join(missed)}")


if __name__ == "__main__":
    main()

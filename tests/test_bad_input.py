"""Bad input, systematically: generated flag sets for every runner (wrong types, signs,
NaN/inf, huge values, empty lists, unknown names, bad paths) either build a valid config or
fail in one line (ConfigError/DataError, or absl's flags.Error for a value absl rejects),
never with another exception; and the runner's path checks, end to end, in one line.

The runners define their flags into absl's one global FLAGS, and several define the same
names differently (--num_labels, --seeds, --steps_per_call), so one process can import only
one of them at a time: ``runner_flags`` imports a runner with the others' flags set aside
and puts everything back afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments import compile_cache, entry, path_checks, shared_flags
from ladder_jax import config, datasets, parallel
from ladder_jax.datasets import base as datasets_base
from ladder_jax.datasets import rows as rows_lib
from ladder_jax.train import job as job_lib

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNERS = ("experiments.train", "experiments.mnist_100labels", "experiments.label_sweep",
           "experiments.paper_tables", "experiments.measure.benchmark")
EXAMPLES = 200  # per runner
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
ONE_LINE_ERRORS = (config.ConfigError, datasets.DataError, flags.Error)

# ---------------------------------------------------------------------------------------------
# Importing one runner at a time into the global FLAGS


def _is_runner_flag(name: str) -> bool:
    module = FLAGS.find_module_defining_flag(name) or ""
    return module in shared_flags._GROUP_ORDER or module.startswith(("experiments", "__main__"))


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return type(value)(value)
    return value


@contextlib.contextmanager
def runner_flags(module_name: str) -> Iterator[Any]:
    """The runner module ``module_name`` freshly imported, with FLAGS holding its flags and
    no other runner's; FLAGS, the runner modules and shared_flags' groups are restored after."""
    saved_state = {k: _copy(v) for k, v in FLAGS.__dict__.items()}
    saved_values = {name: (f.value, f.present, f.using_default_value)
                    for name, f in FLAGS._flags().items()}
    was_parsed = FLAGS.is_parsed()
    saved_groups = _copy(shared_flags._defined)
    saved_modules = {name: sys.modules.get(name) for name in RUNNERS}
    packages = {name: importlib.import_module(name.rpartition(".")[0]) for name in RUNNERS}
    saved_attrs = {name: getattr(packages[name], name.rpartition(".")[2], None)
                   for name in RUNNERS}
    try:
        for name in [n for n in FLAGS if _is_runner_flag(n)]:
            delattr(FLAGS, name)
        for names in shared_flags._defined.values():
            names.clear()
        for name in RUNNERS:
            sys.modules.pop(name, None)
        FLAGS.unparse_flags()
        yield importlib.import_module(module_name)
    finally:
        FLAGS.unparse_flags()
        FLAGS.__dict__.clear()
        FLAGS.__dict__.update(saved_state)
        for name, (value, present, default) in saved_values.items():
            flag = FLAGS._flags()[name]
            flag.value, flag.present, flag.using_default_value = value, present, default
        if was_parsed:
            FLAGS.mark_as_parsed()
        shared_flags._defined.clear()
        shared_flags._defined.update(saved_groups)
        for name in RUNNERS:
            short = name.rpartition(".")[2]
            if saved_modules[name] is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = saved_modules[name]
            if saved_attrs[name] is None:
                packages[name].__dict__.pop(short, None)
            else:
                setattr(packages[name], short, saved_attrs[name])


def parse(argv: list[str]) -> None:
    """Parses ``argv`` (flags only) afresh: every flag not in it is at its default."""
    FLAGS.unparse_flags()
    FLAGS(["runner", *argv])


# ---------------------------------------------------------------------------------------------
# The datasets the relation checks run against


@pytest.fixture(scope="module")
def datasets_by_name(mnist) -> dict[str, datasets.Dataset]:
    """Real MNIST; Fashion-MNIST has its sizes (60000 28x28x1 images, 10 classes of 6000);
    CIFAR-10's sizes without its pixels (the checks read shapes and labels only)."""
    cifar_labels = np.repeat(np.arange(10, dtype=np.int32), 5000)
    cifar = datasets.Dataset(
        "cifar10", np.broadcast_to(np.zeros((1, 1, 1, 1), np.uint8), (50000, 32, 32, 3)),
        cifar_labels, np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int32), 10,
        tuple(map(str, range(10))))
    fashion = datasets.Dataset("fashion_mnist", *(getattr(mnist, f) for f in datasets_base.FIELDS),
                               mnist.num_classes, mnist.class_names)
    return {"mnist": mnist, "fashion_mnist": fashion, "cifar10": cifar}


def check_against_data(cfgs: list[config.TrainConfig], by_name: dict[str, datasets.Dataset]
                       ) -> None:
    """What building a job checks first, without compiling: the fit of model and batches to
    the dataset (job.check_fits) and every model's labeled and validation rows."""
    for cfg in cfgs:
        dataset = by_name[cfg.dataset]
        job_lib.check_fits(cfg, dataset)
        _index_sets(dataset, cfg.num_labels, cfg.num_validation, cfg.seed)


@functools.lru_cache(maxsize=4096)
def _index_sets(dataset: datasets.Dataset, num_labels: int | str, num_validation: int,
                seed: int) -> None:
    """The rows a job picks (DataError when the classes are too small); each set once."""
    rows_lib.index_sets(np.asarray(dataset.train_labels), num_labels, num_validation, seed,
                        dataset.num_classes)


# ---------------------------------------------------------------------------------------------
# Generated flag values

# Wrong for nearly every flag: types, signs, NaN/inf, huge and tiny values, empty lists.
BAD = ["", " ", "abc", "-1", "0", "-0.0", "1.5", "nan", "-nan", "inf", "-inf", "1e999",
       "99999999999999999999", "2147483648", "1e308", "1e-320", ",", ",,", "1,,2", "None",
       "all", "0x10", "1_000", "\uff11\uff12", "\t7", "-5e3", "1,2,3", "true"]
# Values absl parses for an integer or float flag: in range, out of range, huge, NaN/inf.
INTS = ["1", "2", "3", "10", "20", "100", "600", "1000", "59990", "60000", "70000", "-1", "0",
        "2147483647", "2147483648", "99999999999999999999"]
FLOATS = ["0", "0.002", "0.1", "0.5", "1", "1e-3", "2.5", "1e-13", "-1", "-0.0", "nan", "inf",
          "-inf", "1e999", "1e308", "1e-320"]
WIDTHS = ["784", "3072", "1000", "32", "10", "2", "1", "0", "-3", "1.5", "nan", "inf", "1e9",
          "abc", ""]
CONV_LAYERS = ["convf:32:5:1:1", "convv:16:3:1", "convv:8:99:1:1", "maxpool:2:2",
               "maxpool:0:0", "globalmeanpool:0", "globalmeanpool:6:6", "fc:10", "fc:0", "10",
               "convx:1:1:1", "convv:-1:3:1", "convv:8:3:1:2", ""]
UNKNOWN = ["--no_such_flag=1", "--nolr", "--noepochs=1", "-x", "--=1", "--lr", "--epochs"]


def _lists(items: list[str], max_size: int = 8) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(items), max_size=max_size).map(",".join)


def path_values(root: str) -> list[str]:
    """Paths of every kind under ``root``: a directory, a missing one, a file, a path under
    a file, a missing parent, /proc (where nothing can be made), empty."""
    os.makedirs(os.path.join(root, "dir"), exist_ok=True)
    with open(os.path.join(root, "file"), "w") as f:
        f.write("x")
    return ["", os.path.join(root, "dir"), os.path.join(root, "new"),
            os.path.join(root, "new", "deeper"), os.path.join(root, "file"),
            os.path.join(root, "file", "below"), os.path.join(root, "missing", "out.json"),
            "/proc/ladder_jax_no", "none"]


def value_strategy(flag: flags.Flag, paths: list[str]) -> st.SearchStrategy[str]:
    """Values for ``flag``: the generic bad ones, plus ones that fit its name and type."""
    parser = type(flag.parser).__name__
    name = flag.name
    if name in path_checks.PATH_FLAGS:
        good = st.sampled_from(paths)
    elif name == "coordinator_address":
        good = st.sampled_from(["", "localhost:1234", "nohost"])
    elif name == "layer_sizes":
        good = _lists(WIDTHS)
    elif name == "conv_layers":
        good = st.lists(st.sampled_from(CONV_LAYERS), max_size=6).map("-".join)
    elif name in ("noise_std", "denoise_weights"):
        good = _lists(FLOATS + ["abc", "1000", "10"])
    elif name in ("seeds", "num_labels") and parser == "ListParser":
        good = _lists(INTS + ["all", "-1", "105", "0", "abc", "2147483647"], 4)
    elif name == "num_labels":
        good = st.sampled_from(INTS + ["all", "ALL", "-1", "105", "1e2", "00", " 100"])
    elif name == "splits" and parser == "ListParser":  # a sweep's manifests by cell shape
        good = _lists([f"{shape}={path}" for shape in ("100", "all", "full_100", "7", "x", "")
                       for path in paths], 3)
    elif name in ("presets", "rows"):
        good = _lists([*config.PRESETS, "full", "gamma", "baseline", "foo", "conv", ""], 4)
    elif name == "data_source":
        good = st.sampled_from(["pypi", "idx", "tfds", "debian", "archive", "foo"])
    elif parser == "EnumParser":
        good = st.sampled_from(flag.parser.enum_values)
    elif parser == "BooleanParser":
        good = st.sampled_from(["true", "false", "1", "0"])
    elif parser == "IntegerParser":
        good = st.sampled_from(INTS)
    elif parser == "FloatParser":
        good = st.sampled_from(FLOATS)
    else:
        good = st.sampled_from(INTS + FLOATS)
    return st.one_of(*[good] * 5, st.sampled_from(BAD))  # a sixth: the generic bad ones


@st.composite
def argvs(draw, runner_flags: dict[str, flags.Flag], paths: list[str]) -> list[str]:
    """A flag set: a few of the runner's flags with generated values, sometimes ending in an
    unknown flag or a flag without its value."""
    names = draw(st.lists(st.sampled_from(sorted(runner_flags)), max_size=4, unique=True))
    argv = [f"--{n}={draw(value_strategy(runner_flags[n], paths))}" for n in names]
    if draw(st.integers(0, 9)) == 0:
        argv.append(draw(st.sampled_from(UNKNOWN)))
    return argv


def assert_one_line_or_valid(build: Callable[[], Any], argv: list[str]) -> None:
    """``build()`` returns, or raises one of ONE_LINE_ERRORS with a one-line message that the
    runner prints as its one error line; any other exception fails the test (with argv)."""
    try:
        build()
    except ONE_LINE_ERRORS as e:
        message = str(e)
        assert message and "\n" not in message, (argv, message)
        assert "\n" not in entry.error_line(e), (argv, entry.error_line(e))
    except Exception as e:  # the property: nothing else escapes
        raise AssertionError(f"{argv} raised {type(e).__name__}: {e}") from e


def defined_runner_flags() -> dict[str, flags.Flag]:
    return {n: f for n, f in FLAGS._flags().items() if _is_runner_flag(n) and n == f.name}


# ---------------------------------------------------------------------------------------------
# The property, runner by runner


def build_train(by_name: dict[str, datasets.Dataset]) -> None:
    """experiments.train's start-up (its run() up to training, less the multi-host start):
    path checks, the replicas' configs, the device count, the fit to the data."""
    path_checks.check_paths()
    cfgs = sys.modules["experiments.train"].configs_from_flags()
    parallel.choose_num_devices(FLAGS.num_devices,
                                (cfgs[0].batch_size, cfgs[0].unlabeled_batch_size), len(cfgs))
    check_against_data([cfgs[0], cfgs[-1]], by_name)  # the others differ only in the seed


def build_benchmark(by_name: dict[str, datasets.Dataset]) -> None:
    """experiments.measure.benchmark's start-up: path checks, the config, the fit."""
    path_checks.check_paths()
    check_against_data([shared_flags.config_from_flags(config.preset(FLAGS.preset))], by_name)


def build_sweep(by_name: dict[str, datasets.Dataset]) -> None:
    """experiments.label_sweep's start-up: path checks, the cells, each cell's fit."""
    path_checks.check_paths()
    check_against_data([c.config for c in sys.modules["experiments.label_sweep"]
                        .cells_from_flags()], by_name)


def build_table(by_name: dict[str, datasets.Dataset]) -> None:
    """experiments.paper_tables' start-up (its run() up to the sweep): path checks, the
    cells of the rows x seeds, each cell's fit."""
    path_checks.check_paths()
    check_against_data([c.config for c in sys.modules["experiments.paper_tables"]
                        .cells_from_flags()], by_name)


@pytest.mark.parametrize("module_name, build", [
    ("experiments.train", build_train),
    ("experiments.label_sweep", build_sweep),
    ("experiments.paper_tables", build_table),
    ("experiments.measure.benchmark", build_benchmark),
])
def test_generated_flags_build_a_config_or_fail_in_one_line(module_name, build,
                                                            datasets_by_name, tmp_path,
                                                            monkeypatch):
    paths = path_values(str(tmp_path))
    with runner_flags(module_name):
        monkeypatch.chdir(tmp_path)  # relative paths: probed here, not in the checkout
        runner = defined_runner_flags()
        assert "dataset" in runner and "num_validation" in runner, sorted(runner)

        @PROPERTY
        @given(argv=argvs(runner, paths))
        def check(argv: list[str]) -> None:
            def start_up() -> None:
                parse(argv)
                build(datasets_by_name)

            assert_one_line_or_valid(start_up, argv)

        check()
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"]  # the checks made nothing
    assert os.listdir(tmp_path / "dir") == []


@pytest.mark.parametrize("argv", [
    # found: OverflowError, ValueError, silently 32, a hang building 10**9 replica configs
    ["--layer_sizes=784,inf,10", "--denoise_weights=1,1,1"],
    ["--layer_sizes=784,nan,10", "--denoise_weights=1,1,1"],
    ["--layer_sizes=784,32.5,10", "--denoise_weights=1,1,1"],
    ["--num_replicas=1000000000"],
    # edges kept from the search
    ["--layer_sizes=", "--denoise_weights=1"],
    ["--num_replicas=0"],
    ["--seed=2147483647", "--num_replicas=2"],
    ["--noise_std=", "--layer_sizes=784,10", "--denoise_weights=1,1"],
])
def test_found_cases_fail_in_one_line(argv, datasets_by_name):
    with runner_flags("experiments.train"):
        with pytest.raises(ONE_LINE_ERRORS) as raised:
            parse(argv)
            build_train(datasets_by_name)
        assert "\n" not in str(raised.value)


def test_combinator_per_channel_reaches_a_conv_net_and_an_mlp_refuses_it():
    with runner_flags("experiments.train"):
        for argv, expected in ((["--preset=conv_fc_100", "--combinator_per_channel"], True),
                               (["--preset=conv_fc_100"], False)):
            parse(argv)
            cfg = shared_flags.config_from_flags(config.preset(FLAGS.preset))
            assert cfg.model.combinator_per_channel is expected
        parse(["--combinator_per_channel"])  # the default preset is the dense full ladder
        with pytest.raises(config.ConfigError, match="applies to conv nets"):
            shared_flags.config_from_flags(config.preset(FLAGS.preset))


def test_a_new_layer_structure_keeps_the_presets_input_and_layer_noise():
    """The baseline's noise is 0.3 on the input and 0.5 above (the authors' code); new
    --layer_sizes or --conv_layers keep both values, and a given --noise_std wins."""
    with runner_flags("experiments.train"):
        for argv, expected in (
                (["--layer_sizes=784,50,20,10"], (0.3, 0.5, 0.5, 0.5)),
                (["--conv_layers=convv:8:3:1:1-globalmeanpool:0-fc:10"], (0.3, 0.5, 0.5, 0.5)),
                (["--layer_sizes=784,50,10", "--noise_std=0.2"], 0.2)):
            parse(["--preset=baseline_100", "--denoise_weights=0", *argv])
            cfg = shared_flags.config_from_flags(config.preset(FLAGS.preset))
            if isinstance(expected, float):
                expected = (expected,) * (cfg.model.num_layers + 1)
            assert cfg.model.noise_std == expected, argv


def test_the_sweeps_own_num_labels_is_not_a_run_setting(datasets_by_name):
    """Found: every label sweep failed with TypeError (its list --num_labels was passed to
    build_grid a second time, as a training change)."""
    with runner_flags("experiments.label_sweep") as label_sweep:
        parse(["--num_labels=20,all", "--seeds=0,1", "--presets=full,baseline", "--epochs=2"])
        cells = label_sweep.cells_from_flags()
        assert [c.name for c in cells][:2] == ["full_labels20_seed0", "full_labels20_seed1"]
        assert len(cells) == 8 and {c.config.epochs for c in cells} == {2}


def test_runner_flags_restores_the_global_flags():
    before = {n: FLAGS[n].value for n in FLAGS}
    with runner_flags("experiments.paper_tables"):
        assert "table_dir" in FLAGS and "workdir" not in FLAGS
    with runner_flags("experiments.train"):
        assert "workdir" in FLAGS and "table_dir" not in FLAGS
    assert {n: FLAGS[n].value for n in FLAGS} == before


# ---------------------------------------------------------------------------------------------
# The path checks, in-process


@pytest.mark.parametrize("flag, kind, relative, expected", [
    ("workdir", path_checks.OUTPUT_DIR, "dir", None),
    ("workdir", path_checks.OUTPUT_DIR, "new/deeper", None),
    ("workdir", path_checks.OUTPUT_DIR, "file", "is a file, not a directory"),
    ("workdir", path_checks.OUTPUT_DIR, "file/below", "is a file, not a directory"),
    ("sweep_dir", path_checks.OUTPUT_DIR, "/proc/ladder_jax_no/x", "nothing can be made in /proc"),
    ("table_dir", path_checks.OUTPUT_DIR, "/proc", "is not writable"),
    ("data_dir", path_checks.INPUT, "dir", None),
    ("data_dir", path_checks.INPUT, "file", None),
    ("data_dir", path_checks.INPUT, "missing", "does not exist"),
    ("output", path_checks.OUTPUT_FILE, "out.json", None),
    ("output", path_checks.OUTPUT_FILE, "file", None),
    ("output", path_checks.OUTPUT_FILE, "dir", "is a directory"),
    ("output", path_checks.OUTPUT_FILE, "missing/out.json", "does not exist"),
    ("output", path_checks.OUTPUT_FILE, "/proc/out.json", "nothing can be made in /proc"),
])
def test_check_path(flag, kind, relative, expected, tmp_path):
    path_values(str(tmp_path))
    path = os.path.join(tmp_path, relative)
    if expected is None:
        path_checks.check_path(flag, path, kind)
    else:
        with pytest.raises(config.ConfigError) as raised:
            path_checks.check_path(flag, path, kind)
        line = entry.error_line(raised.value)
        assert f"--{flag}={path}" in line and expected in line and "\n" not in line
    assert not os.path.exists(tmp_path / "new") and not os.path.exists(tmp_path / "out.json")
    assert not [n for n in os.listdir(tmp_path / "dir") if n.startswith(".ladder_jax")]


def test_broken_symlink_is_named(tmp_path):
    os.symlink(tmp_path / "gone", tmp_path / "link")
    with pytest.raises(config.ConfigError, match="broken symbolic link"):
        path_checks.check_path("workdir", str(tmp_path / "link"), path_checks.OUTPUT_DIR)


def test_flagfile_problems_are_one_line_and_name_the_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("--epochs=1\n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe--epochs=1\n")
    nested = tmp_path / "nested.txt"
    nested.write_text(f"# a comment\n--flagfile={tmp_path / 'gone.txt'}\n")
    cycle = tmp_path / "cycle.txt"
    cycle.write_text(f"--flagfile={cycle}\n--epochs=1\n")
    assert path_checks.flagfile_problem(["x", f"--flagfile={good}", "--epochs=2"]) is None
    assert path_checks.flagfile_problem(["x", "--flagfile", str(good)]) is None
    assert path_checks.flagfile_problem(["x", f"--flagfile={cycle}"]) is None
    assert path_checks.flagfile_problem(["x", "--flagfile="]) is None
    assert path_checks.flagfile_problem(["x", "--", f"--flagfile={tmp_path / 'gone'}"]) is None
    for argv, expected in [
        (["x", f"--flagfile={tmp_path / 'gone.txt'}"], "does not exist"),
        (["x", "--flagfile", str(tmp_path)], "is a directory"),
        (["x", f"-flagfile={binary}"], "is not utf-8 text (byte 0)"),
        (["x", f"--flagfile={good}", f"--flagfile={nested}"],
         f"gone.txt does not exist (named in {nested})"),
    ]:
        problem = path_checks.flagfile_problem(argv)
        assert problem is not None and "--flagfile=" in problem and expected in problem, problem
        assert "\n" not in problem


def test_none_is_no_compilation_cache_even_with_the_environment_variable(monkeypatch):
    import jax

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere")
    assert compile_cache.cache_dir("none", "runs/x") == "none"
    assert compile_cache.cache_dir(None, "runs/x") == "/somewhere"
    before = jax.config.jax_compilation_cache_dir
    compile_cache.use_compilation_cache("None")
    compile_cache.use_compilation_cache(None)
    assert jax.config.jax_compilation_cache_dir == before


# ---------------------------------------------------------------------------------------------
# The runner end to end (each start costs seconds: a few cases only)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.mnist_100labels", *args],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    problem = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "FATAL"))]
    assert len(problem) == 1, proc.stderr[-2000:]
    return problem[0]


@pytest.mark.parametrize("case", ["missing_flagfile", "binary_flagfile",
                                  "unwritable_workdir_parent"])
def test_runner_rejects_bad_paths_in_one_line(case, tmp_path):
    """The cases the in-process tests cannot reach: a --flagfile, checked before absl reads
    it, and the check of --workdir inside the runner (a parent made read-only, or for root,
    who may write there anyway, one in /proc)."""
    binary = tmp_path / "flags.bin"
    binary.write_bytes(b"--epochs=1\n\xff\n")
    workdir = "/proc/ladder_jax_test/run"
    if os.geteuid() != 0:
        (tmp_path / "read_only").mkdir(mode=0o500)
        workdir = str(tmp_path / "read_only" / "run")
    argv, named = {
        "missing_flagfile": ([f"--flagfile={tmp_path / 'no_flags.txt'}"],
                             f"--flagfile={tmp_path / 'no_flags.txt'} does not exist"),
        "binary_flagfile": ([f"--flagfile={binary}"], f"--flagfile={binary} is not utf-8 text"),
        "unwritable_workdir_parent": ([f"--workdir={workdir}"],
                                      f"--workdir={workdir} cannot be created"),
    }[case]
    line = one_error_line(run_cli(*argv, "--max_steps=1"))
    assert line.startswith(f"error: {named}"), line


@pytest.mark.parametrize("ask", [None, "env", "verbosity"])
def test_entry_point_prints_one_line_and_the_traceback_only_when_asked(ask, monkeypatch,
                                                                       capsys):
    from absl import logging

    def run(argv):
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/file")

    monkeypatch.delenv(entry.TRACEBACK_ENV, raising=False)
    if ask == "env":
        monkeypatch.setenv(entry.TRACEBACK_ENV, "1")
    old = logging.get_verbosity()
    logging.set_verbosity(1 if ask == "verbosity" else 0)
    try:
        assert entry.entry_point(run)(["runner"]) == 1
    finally:
        logging.set_verbosity(old)
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("error: No such file or directory (/nowhere/file); check "
                                    "the path and its permissions")
    assert ("Traceback" in err) == (ask is not None)

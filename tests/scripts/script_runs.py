"""Runs the scripts as a user would: in this process, or in a new one.

`run_script("train_lm.py", *flags)` calls the script's `main` in the test
process, with the flags parsed from the list as `python scripts/train_lm.py
FLAGS...` parses them, and returns what the run would have returned: the
exit status and what it wrote to stdout and stderr. TensorFlow, JAX, Keras
and sgmoe are loaded once per test process instead of once per run, and
the run uses the backend the tests run on (`KERAS_BACKEND`).

`run_process` starts the script in a new Python process, for what only a
process shows: its real exit status, and no native log line of
TensorFlow or XLA on stderr while they load (scripts/console.py holds
those back at the file-descriptor level).
"""

import contextlib
import importlib.util
import io
import logging
import os
import subprocess
import sys
import warnings
from typing import NamedTuple

import keras
from absl import app
from absl import flags

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPTS = os.path.join(ROOT, "scripts")
# The modules whose flags share names (both training scripts define
# training_flags' flags, evaluate.py some of them too), so only one of the
# scripts can have its flags defined at a time; by the names absl records,
# loaded from SCRIPTS or imported from the `scripts` package.
_SHARING_MODULES = ("train_lm", "train_translation", "evaluate",
                    "inspect_experts", "training_flags")
_FLAG_MODULES = frozenset(_SHARING_MODULES) | frozenset(
    f"scripts.{name}" for name in _SHARING_MODULES)

# The compile flag of the tests' short runs (a few steps of a tiny model):
# compiling the steps with XLA costs TensorFlow more than the run, while
# JAX runs a step that is not compiled op by op, about twice as slowly.
SHORT_RUN_JIT = ("--jit_compile" if keras.backend.backend() == "jax"
                 else "--nojit_compile")


class Result(NamedTuple):
    """What `subprocess.run(..., capture_output=True, text=True)` gives of a
    run: its exit status and what it wrote."""

    returncode: int
    stdout: str
    stderr: str


def run_process(script, *flags, env=None, timeout=600):
    """Runs `python scripts/SCRIPT FLAGS...` in a new process from the
    repository root, in `env` (default: this process's environment)."""
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, script), *flags], cwd=ROOT,
        env=env, capture_output=True, text=True, timeout=timeout)
    return Result(result.returncode, result.stdout, result.stderr)


def run_script(script, *flags):
    """Runs `python scripts/SCRIPT FLAGS...` in this process.

    A training script or evaluate.py is loaded afresh with only its own
    flags defined (they define flags of the same names, so two cannot be
    defined at once); the flags are parsed from their defaults as the
    script's `app.run` parses them, then its `main` runs. A `SystemExit`
    becomes the exit status a process would have (`sys.exit("message")`:
    the message on stderr, status 1). Any other exception is not caught:
    a script that would end in a traceback fails the test with it.
    Afterwards the flags are unparsed (and the training scripts' and
    evaluate.py's deleted), and Python's warning settings, logging
    handlers, environment variables, Keras's global distribution and the
    model-directory lock are as they were; Keras starts from a new
    session (default dtype policy, new layer names), as in a new process.

    Returns:
        A `Result`.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with _isolated_process_state():
        module = _load_script(script)
        parse = _flags_parser(os.path.splitext(script)[0])
        argv = [os.path.join(SCRIPTS, script), *flags]
        try:
            with (contextlib.redirect_stdout(stdout),
                  contextlib.redirect_stderr(stderr)):
                try:
                    module.main(parse(argv))
                    code = None
                except SystemExit as exit:
                    code = exit.code
                returncode = _exit_status(code)
        finally:
            _release_model_dir()
    return Result(returncode, stdout.getvalue(), stderr.getvalue())


def _exit_status(code):
    """The status Python exits with for `sys.exit(code)`; a code that is
    not an int or None is written to stderr, as Python writes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _flags_parser(name):
    """The `flags_parser` the script `name` passes to `app.run`."""
    if name == "prepare_data":  # app.run(main)
        return app.parse_flags_with_usage
    import console

    return console.parse_flags


def _load_script(script):
    """The module of scripts/SCRIPT with its flags defined: a training
    script or evaluate.py executed afresh as the module of its name (as
    `import train_lm` with scripts/ on the path would), after the flags of
    the others are deleted; prepare_data.py, whose flags are its own, as
    the tests import it (`scripts.prepare_data`)."""
    name = os.path.splitext(script)[0]
    if name not in _SHARING_MODULES:
        return importlib.import_module(f"scripts.{name}")
    _forget_script_flags()
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(SCRIPTS, script))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _forget_script_flags():
    """Deletes the flags of the training scripts and evaluate.py from
    absl's global `FLAGS`, and those of benchmarks a test imported
    in-process (bench/constant_compute.py imports bench/moe_layer.py,
    whose flags share names with the scripts': the benchmark module is
    dropped from `sys.modules` too, so its next import defines them
    again), and marks the rest unparsed (each at its default)."""
    registry = flags.FLAGS
    bench = os.path.join(ROOT, "bench") + os.sep
    doomed = set()
    for module, module_flags in registry.flags_by_module_dict().items():
        source = getattr(sys.modules.get(module), "__file__", None) or ""
        from_bench = os.path.abspath(source).startswith(bench)
        if module in _FLAG_MODULES or from_bench:
            doomed |= {id(flag) for flag in module_flags}
        if from_bench:
            sys.modules.pop(module, None)
    for name in [name for name in registry if id(registry[name]) in doomed]:
        delattr(registry, name)
    registry.unparse_flags()


def _release_model_dir():
    """Releases the lock a training script took on --model_dir, as the
    end of its process would."""
    training = sys.modules.get("sgmoe.training")
    registry = flags.FLAGS
    if (training is not None and registry.is_parsed()
            and "model_dir" in registry and registry.model_dir):
        training.unlock_model_dir(registry.model_dir)


@contextlib.contextmanager
def _isolated_process_state():
    """Puts back what a script changes for its own process: Python's
    warning format and filters, the `sgmoe.data` logger (scripts print
    its notices), environment variables, Keras's dtype policy and
    distribution (a --mesh run sets one on JAX), and the scripts' flags;
    starts a new Keras session."""
    environment = dict(os.environ)
    formatwarning = warnings.formatwarning
    logger = logging.getLogger("sgmoe.data")
    handlers, propagate = list(logger.handlers), logger.propagate
    distribution = keras.distribution.distribution()
    # Layer names start afresh, as in a new process; conftest.py collects
    # the garbage after the test.
    keras.backend.clear_session(free_memory=False)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        _forget_script_flags()
        warnings.formatwarning = formatwarning
        logger.handlers[:] = handlers
        logger.propagate = propagate
        for name in set(os.environ) - set(environment):
            del os.environ[name]
        for name, value in environment.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        keras.distribution.set_distribution(distribution)
        keras.config.set_dtype_policy("float32")

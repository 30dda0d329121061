"""The absl flags both training scripts share, and what they turn into.

`scripts/train_lm.py` and `scripts/train_translation.py` define their data
flags themselves and these common ones here, with their own defaults, so
the flags mean the same in both and `--helpfull` documents them once. The
functions below read the parsed flags and call the library with explicit
arguments; nothing under `sgmoe/` reads flags.
"""

import contextlib
import importlib.util
import logging
import os
import re
import sys
import warnings

from absl import flags

import console

FLAGS = flags.FLAGS
# sgmoe.data.DEFAULT_MAX_LINE_LENGTH, spelled out: importing sgmoe.data
# loads TensorFlow, and the flags are checked before it loads.
DEFAULT_MAX_LINE_LENGTH = 10_000
BACKENDS = ("jax", "tensorflow")


def define_training_flags(*, preset, train_steps, batch_size, learning_rate,
                          log_every, checkpoint_every, seed=1):
    """Defines the common flags with the script's defaults."""
    flags.DEFINE_string("preset", preset, "Model preset, or a directory "
                        "written by save_to_preset.")
    flags.DEFINE_string(
        "model_dir", None,
        "Checkpoints, vocabulary, TensorBoard logs (MODEL_DIR/logs) and the "
        "final model (MODEL_DIR/model, for scripts/evaluate.py); a run "
        "started again with the same MODEL_DIR resumes from its last "
        "checkpoint. None: no files.")
    flags.DEFINE_string(
        "hparams", "",
        "Overrides of the preset's model arguments, comma-separated "
        "key=value items, e.g. 'moe.router=switch,moe.capacity_factor=2.0,"
        "moe.eval_capacity_factor=4,dropout=0.2': moe.NAME is an argument "
        "of every MoE layer, moe.router_args.NAME one of its router "
        "(sgmoe.models.config_overrides).")
    flags.DEFINE_integer("train_steps", train_steps, "Optimizer steps in all.")
    flags.DEFINE_integer("batch_size", batch_size, "Sentences per batch.")
    flags.DEFINE_integer(
        "shuffle_block", 0,
        "Training sentences shuffled together (then sorted by length into "
        "batches); 0: every line of the training files, up to "
        "1,000,000 (sgmoe.data.MAX_SHUFFLE_BLOCK). Corpora in document "
        "order (the bundled ones) need a block as large as the corpus, or "
        "training sees one domain after another.")
    define_text_input_flags()
    flags.DEFINE_float("learning_rate", learning_rate, "Learning rate.")
    flags.DEFINE_enum(
        "schedule", "constant", ["constant", "inverse_sqrt", "cosine"],
        "Learning-rate schedule, with a linear warm-up of --warmup_steps "
        "to --learning_rate: constant; inverse_sqrt, the paper's (held "
        "for --hold_steps, then decaying as 1/sqrt(step): "
        "sgmoe.optimizers.WarmupInverseSquareRoot; the paper warms up "
        "1000 steps for language models, 2000 and holds 8000 for "
        "translation); cosine, decaying to 0 at --train_steps.")
    flags.DEFINE_integer("warmup_steps", 0,
                         "Steps of linear warm-up (inverse_sqrt needs at "
                         "least 1).")
    flags.DEFINE_integer("hold_steps", 0,
                         "inverse_sqrt: steps held at --learning_rate after "
                         "the warm-up.")
    flags.DEFINE_enum("optimizer", "adam", ["adam", "factored_adam"],
                      "adam: keras Adam; factored_adam: the paper's "
                      "Appendix D optimizer (sgmoe.optimizers.FactoredAdam).")
    flags.DEFINE_integer("seed", seed,
                         "Seed of weights, gating noise and shuffling.")
    flags.DEFINE_bool("mixed_precision", False,
                      "Train under the mixed_bfloat16 policy (routers stay "
                      "float32).")
    flags.DEFINE_integer("log_every", log_every,
                         "Steps between progress lines (any positive number; "
                         "the last line comes at --train_steps).")
    flags.DEFINE_integer("checkpoint_every", checkpoint_every,
                         "Steps between checkpoints (with --model_dir; any "
                         "positive number, and one at the end).")
    flags.DEFINE_integer(
        "eval_every", 0,
        "Steps between validations during training (and one at the end; "
        "0: none): val/* in TensorBoard, a progress line, and with "
        "--model_dir the model of lowest validation loss in "
        "MODEL_DIR/best.")
    flags.DEFINE_bool(
        "overwrite", False,
        "Delete what an earlier run wrote in --model_dir (checkpoints, logs, "
        "model, vocabulary, run.json; nothing else) and start afresh, "
        "instead of resuming it.")
    flags.DEFINE_bool("jit_compile", True, "Compile the train step with XLA.")
    flags.DEFINE_string(
        "mesh", None,
        "Device mesh, e.g. batch:2,model:4 (sgmoe.distribute): the batch is "
        "split over 'batch', expert weights over 'model', everything else "
        "replicated. 'model' > 1 needs --backend=jax; on tensorflow "
        "'batch:N' is tf.distribute data parallelism.")
    flags.DEFINE_enum(
        "expert_axis", "model", ["model", "batch"],
        "Mesh axis expert weights are split over (JAX): 'model', or "
        "'batch' for the paper's layout with a mesh batch:N (every device "
        "its own batch share and its own experts, all-to-all dispatch).")
    define_backend_flags()
    flags.DEFINE_bool("multi_host", False,
                      "The run spans several hosts (jax.distributed on JAX, "
                      "MultiWorkerMirroredStrategy on TensorFlow).")


def define_backend_flags():
    """Defines --backend and --verbose (also used by scripts/evaluate.py,
    so a model is evaluated on the backend it was trained on)."""
    flags.DEFINE_enum(
        "backend", None, list(BACKENDS),
        "Keras backend. Default: $KERAS_BACKEND when it is set, else jax "
        "when JAX is installed (it trains the default translation model "
        "2.7x faster than tensorflow on a CPU; docs/training.md), else "
        "tensorflow.")
    flags.DEFINE_bool("verbose", False,
                      "Also show TensorFlow's and XLA's native log lines "
                      "while they load.")


def define_text_input_flags():
    """Defines --max_line_length and --on_malformed (also used by
    scripts/evaluate.py)."""
    flags.DEFINE_integer(
        "max_line_length", DEFAULT_MAX_LINE_LENGTH,
        "Longest line of the data files, in bytes (the line ending not "
        "counted); see --on_malformed. Raise it for text with a paragraph "
        "or a document per line.")
    flags.DEFINE_enum(
        "on_malformed", "raise", ["raise", "skip"],
        "Lines that are not UTF-8 or are longer than --max_line_length: "
        "raise ends the script at the first one, naming its file and "
        "line; skip leaves them out wherever the files are read (a "
        "vocabulary, training or evaluation data) and prints how many "
        "per file.")


def check_training_flags(fail, positive=()):
    """Calls `fail(message)` for the first common flag that is invalid.

    Args:
        fail: called with a one-line message (the scripts exit with it).
        positive: names of the script's own flags that must be positive.
    """
    for name in ("train_steps", "batch_size", "log_every",
                 "checkpoint_every", "max_line_length") + tuple(positive):
        if getattr(FLAGS, name) < 1:
            fail(f"--{name} must be positive, received {getattr(FLAGS, name)}")
    if FLAGS.learning_rate <= 0:
        fail(f"--learning_rate must be positive, received "
             f"{FLAGS.learning_rate}")
    for name in ("warmup_steps", "hold_steps", "eval_every",
                 "shuffle_block"):
        if getattr(FLAGS, name) < 0:
            fail(f"--{name} must be >= 0, received {getattr(FLAGS, name)}")
    if FLAGS.schedule == "inverse_sqrt" and FLAGS.warmup_steps < 1:
        fail("--schedule=inverse_sqrt needs --warmup_steps >= 1 (the paper: "
             "1000 for language models, 2000 for translation)")
    if FLAGS.hold_steps and FLAGS.schedule != "inverse_sqrt":
        fail(f"--hold_steps is for --schedule=inverse_sqrt, not "
             f"--schedule={FLAGS.schedule}")
    if (FLAGS.schedule == "cosine"
            and FLAGS.warmup_steps >= FLAGS.train_steps):
        fail(f"--schedule=cosine needs --warmup_steps="
             f"{FLAGS.warmup_steps} < --train_steps={FLAGS.train_steps}")


def shuffle_block(train_files):
    """The `block_size` of the training stream: --shuffle_block, or the
    lines of `train_files` (a list of paths; the source side for parallel
    data) up to `sgmoe.data.MAX_SHUFFLE_BLOCK`. The datasets' own default
    (`block_size=None`) gives the same number in one process but counts
    each shard's lines; counting every file here keeps the batches of
    multi-process runs what they were, at the cost of a second read."""
    from sgmoe import data

    return FLAGS.shuffle_block or data.count_lines(
        train_files, limit=data.MAX_SHUFFLE_BLOCK)


def text_input():
    """The library arguments of --max_line_length and --on_malformed."""
    return {"max_line_length": FLAGS.max_line_length,
            "on_malformed": FLAGS.on_malformed}


def text_input_setup():
    """What `run_setup` records of them: the lines a run skips decide
    its batches, so a resumed run must skip the same ones."""
    if FLAGS.on_malformed == "raise":  # every line was read
        return {}
    return text_input()


def data_error_message(error):
    """A `sgmoe.data.DataError` message with the library's arguments
    (`max_line_length=N`, `on_malformed='skip'`) spelled as the flags
    that set them."""
    message = str(error)
    message = re.sub(r"(?<!-)\bmax_line_length=", "--max_line_length=",
                     message)
    message = message.replace("raise the limit", "raise it")
    return message.replace("on_malformed='skip'", "--on_malformed=skip")


def print_skipped_lines():
    """Prints the notices `sgmoe.data` logs (how many lines of a file
    --on_malformed=skip left out) on stdout, each once, instead of as
    log records on stderr."""
    logger = logging.getLogger("sgmoe.data")
    if not any(isinstance(handler, _PrintOnce)
               for handler in logger.handlers):
        logger.addHandler(_PrintOnce())
    logger.propagate = False


class _PrintOnce(logging.Handler):
    """Prints each distinct message once: a file read by two pipelines
    is reported once."""

    def __init__(self):
        super().__init__()
        self.printed = set()

    def emit(self, record):
        message = record.getMessage()
        if message not in self.printed:
            self.printed.add(message)
            print(message, flush=True)


def backend():
    """The Keras backend the run uses: --backend, else $KERAS_BACKEND,
    else jax when it is installed, else tensorflow."""
    if FLAGS.backend:
        return FLAGS.backend
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    return "jax" if importlib.util.find_spec("jax") else "tensorflow"


def load_libraries(fail):
    """Loads TensorFlow, Keras (with `backend()`) and sgmoe without their
    native log lines (unless --verbose); call it once the flags are
    checked, so a bad flag is reported at once."""
    chosen = backend()
    if chosen not in BACKENDS:
        fail(f"KERAS_BACKEND={chosen}: the scripts run on "
             f"{' or '.join(BACKENDS)}")
    loaded = sys.modules.get("keras")
    if loaded is not None and loaded.backend.backend() != chosen:
        # Keras picks its backend once, when it is first imported.
        fail(f"the run is to use Keras's {chosen} backend (--backend), "
             f"but Keras is already loaded with {loaded.backend.backend()}")
    os.environ["KERAS_BACKEND"] = chosen
    if FLAGS.verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    console.plain_warnings()
    console.import_quietly(verbose=FLAGS.verbose)


def check_preset(fail, model_class):
    """Calls `fail` unless --preset names one of `model_class.presets()` or
    a directory written by `save_to_preset`."""
    preset = FLAGS.preset
    if os.path.isdir(preset):
        if not os.path.isfile(os.path.join(preset, "config.json")):
            fail(f"--preset={preset}: the directory has no config.json (not "
                 "written by save_to_preset)")
    elif preset not in model_class.BUILTIN_PRESETS:
        fail(f"--preset={preset}: no such preset or directory; presets: "
             f"{', '.join(model_class.presets())}")


def model_config(fail, model_class, set_by_script, flag_overrides=None):
    """The model's constructor arguments: --preset's, updated by the
    script's own model flags (`flag_overrides`), then by --hparams, then
    by `set_by_script` (what the data and --seed decide, which --hparams
    may not change). A bad key ends the script with one line."""
    import json

    from sgmoe import models

    try:
        hparams = models.parse_overrides(FLAGS.hparams)
    except ValueError as error:
        fail(f"--hparams: {error}")
    for key in sorted(set(hparams) & set(set_by_script)):
        fail(f"--hparams: {key!r} is set by the script (from the data or "
             "a flag), not by --hparams")
    config = model_class.BUILTIN_PRESETS.get(FLAGS.preset)
    if config is None:  # a save_to_preset directory (see check_preset)
        with open(os.path.join(FLAGS.preset, "config.json")) as file:
            config = json.load(file)["config"]
    # One set of changes, so that a conflict between a model flag and
    # --hparams (e.g. --k with a router that fixes k) is reported.
    try:
        config = models.apply_overrides(
            model_class, config,
            models.config_overrides.merge(flag_overrides or {}, hparams))
    except ValueError as error:
        fail(f"--hparams: {error}" if FLAGS.hparams else error)
    return dict(config, **set_by_script)


def check_model_config(fail, model_class, config):
    """Fails on a configuration the model refuses (a bad value), before
    anything is written. Builds no weights; the random state is seeded
    again afterwards, so the model trained is the one --seed gives."""
    import keras

    try:
        model_class.from_config(config)
    except (ValueError, TypeError, KeyError) as error:
        fail(f"--hparams={FLAGS.hparams!r}: {error}" if FLAGS.hparams
             else error)
    keras.utils.set_random_seed(FLAGS.seed)


def build_model(fail, model_class, config):
    """The model of `config`: built from it for a named preset, or with
    the weights of a --preset directory; compiled by the caller."""
    try:
        if os.path.isdir(FLAGS.preset):
            return model_class.from_preset(FLAGS.preset, **config)
        return model_class.from_config(config)
    except (ValueError, TypeError) as error:
        fail(error)


def model_setup(flag_overrides=None):
    """What `run_setup` records of the model: --preset and the changes."""
    from sgmoe import models

    setup = {"preset": FLAGS.preset}
    if flag_overrides:
        setup["overrides"] = flag_overrides
    if FLAGS.hparams:
        setup["hparams"] = models.parse_overrides(FLAGS.hparams)
    return setup


def claim_model_dir(fail):
    """Makes this run the only writer of --model_dir, and with
    --overwrite deletes the run it held; nothing is written without
    --model_dir. Call it after the flags and the model configuration are
    checked, before anything is written there. Process 0 of a
    multi-process run does the work; the others wait for it, so none
    looks at the directory before it is cleared."""
    if not FLAGS.model_dir:
        return
    from sgmoe import training
    from sgmoe.distribute import processes

    if processes.is_primary_process():
        if (os.path.exists(FLAGS.model_dir)
                and not os.path.isdir(FLAGS.model_dir)):
            fail(f"--model_dir={FLAGS.model_dir}: not a directory")
        try:
            training.lock_model_dir(FLAGS.model_dir)
            if FLAGS.overwrite:
                removed = training.clear_run(FLAGS.model_dir)
                if removed:
                    print(f"--overwrite: deleted {', '.join(removed)} in "
                          f"{FLAGS.model_dir}")
        except training.ModelDirInUseError as error:
            fail(error)
        except OSError as error:
            fail(f"--model_dir={FLAGS.model_dir}: "
                 f"{error.strerror or error}")
    processes.wait_for_all_processes("sgmoe model_dir claimed")


def run_setup(*, train_files, vocabulary, data, model):
    """What --model_dir's run must keep when it resumes (see
    `sgmoe.training.check_run_setup`), or None without --model_dir.

    Args:
        train_files: the training files (their sizes and SHA-256 go in).
        vocabulary: the run's vocabulary, saved in --model_dir.
        data: other data settings (languages, --max_length).
        model: the model settings (--preset, overrides).
    """
    if not FLAGS.model_dir:
        return None
    from sgmoe import training

    [saved] = training.file_fingerprints(
        [os.path.join(FLAGS.model_dir, vocabulary.FILENAME)])
    data = dict(data, train_files=training.file_fingerprints(train_files),
                vocabulary=dict(saved, size=len(vocabulary)))
    training = {name: getattr(FLAGS, name) for name in (
        "batch_size", "shuffle_block", "seed", "optimizer", "learning_rate",
        "mixed_precision")}
    if FLAGS.schedule != "constant" or FLAGS.warmup_steps:
        training.update({name: getattr(FLAGS, name) for name in (
            "schedule", "warmup_steps", "hold_steps")})
    return {"data": data, "model": model, "training": training}


def start_run(fail):
    """Sets Keras up as the flags ask and returns the model's build scope.

    Applies `--mixed_precision` and `--seed`, then sets up `--mesh`
    (with `--multi_host`, this starts the processes, so call it before
    anything that waits for the other processes). An invalid `--mesh`
    calls `fail` with the library's message.

    Returns:
        The context to build and compile the model in.
    """
    # Keras warns whenever an evaluation dataset of unknown length ends,
    # which is how every evaluation in the scripts ends.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    import keras

    from sgmoe import distribute

    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(FLAGS.seed)
    try:
        distribution = distribute.distribution_for_mesh(
            FLAGS.mesh, multi_host=FLAGS.multi_host,
            expert_axis=FLAGS.expert_axis)
    except ValueError as error:
        fail(error)
    if distribution is None:
        return contextlib.nullcontext()
    return distribution.scope()


def evaluation_callbacks():
    """Callbacks for `evaluate` under `--mesh` (see
    `sgmoe.distribute.SynchronousBatches`); none without one."""
    if not FLAGS.mesh:
        return []
    from sgmoe import distribute

    return [distribute.SynchronousBatches()]


def learning_rate():
    """The rate or schedule --learning_rate, --schedule, --warmup_steps
    and --hold_steps name."""
    import keras

    from sgmoe import optimizers

    rate, warmup = FLAGS.learning_rate, FLAGS.warmup_steps
    if FLAGS.schedule == "inverse_sqrt":
        return optimizers.WarmupInverseSquareRoot(
            rate, warmup_steps=warmup, constant_steps=FLAGS.hold_steps)
    if FLAGS.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else rate, FLAGS.train_steps - warmup,
            warmup_target=rate if warmup else None, warmup_steps=warmup)
    if warmup:  # a warm-up, then held to the end (no decay before it)
        return optimizers.WarmupInverseSquareRoot(
            rate, warmup_steps=warmup, constant_steps=FLAGS.train_steps)
    return rate


def make_optimizer():
    """The optimizer `--optimizer` names, at `learning_rate()`."""
    import keras

    if FLAGS.optimizer == "factored_adam":
        from sgmoe.optimizers import FactoredAdam

        return FactoredAdam(learning_rate())
    return keras.optimizers.Adam(learning_rate())


def training_run(fail, model, tokens_per_step, setup, validation_data):
    """The `sgmoe.training.TrainingRun` the flags ask for, restored from
    --model_dir's last checkpoint. A run started with another `setup`
    (see `run_setup`), or a checkpoint that cannot be restored (corrupt,
    or written by another model) ends the script, with nothing written.
    `validation_data` is evaluated every --eval_every steps."""
    from sgmoe import training

    try:
        return training.TrainingRun(
            model, train_steps=FLAGS.train_steps, log_every=FLAGS.log_every,
            model_dir=FLAGS.model_dir,
            checkpoint_every=FLAGS.checkpoint_every,
            tokens_per_step=tokens_per_step, setup=setup,
            validation_data=validation_data,
            eval_every=FLAGS.eval_every or None,
            evaluation_callbacks=evaluation_callbacks())
    except training.RunMismatchError as error:
        fail(f"{error} (--overwrite deletes that run and starts afresh)")
    except (ValueError, training.CheckpointError) as error:
        fail(error)
    except OSError as error:
        fail(f"--model_dir={FLAGS.model_dir}: {error}")


def fit(fail, run, make_dataset):
    """`run.fit(make_dataset)`; a non-finite loss or a failed checkpoint
    write (a full disk) ends the script with the last good checkpoint
    kept. Returns the seconds trained."""
    from sgmoe import training

    try:
        return run.fit(make_dataset)
    except training.NonFiniteLossError as error:
        fail(error)
    except OSError as error:
        fail(f"writing to --model_dir={FLAGS.model_dir} failed: {error}; "
             "the last complete checkpoint is kept")


def save_model(fail, model, vocabulary, setup, results=None):
    """Writes the final model to --model_dir/model (atomically): a preset
    with its tokenizer and, in metadata.json, the run's `setup` (data,
    model and training settings), --train_steps and `results`."""
    if not FLAGS.model_dir:
        return
    from sgmoe import training

    metadata = dict(setup or {}, train_steps=FLAGS.train_steps,
                    results=results or {})
    try:
        training.save_model_preset(
            model, os.path.join(FLAGS.model_dir, "model"),
            vocabulary=vocabulary, metadata=metadata)
    except OSError as error:
        fail(f"writing {FLAGS.model_dir}/model failed: {error}; the last "
             "checkpoint is kept (run again to write it)")


def print_training_time(run, seconds, tokens_per_step, unit):
    """Prints the steps `run` just trained, their time and `unit`s/s."""
    if run.remaining_steps:
        steps = run.remaining_steps
        print(f"trained {steps} steps in {seconds:.0f}s "
              f"({steps * tokens_per_step / seconds:.0f} {unit}/s)")

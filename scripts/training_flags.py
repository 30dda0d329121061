"""The absl flags both training scripts share, and what they turn into.

`scripts/train_lm.py` and `scripts/train_translation.py` define their data
flags themselves and these common ones here, with their own defaults, so
the flags mean the same in both and `--helpfull` documents them once. The
functions below read the parsed flags and call the library with explicit
arguments; nothing under `sgmoe/` reads flags.
"""

import contextlib
import os
import warnings

from absl import flags

import console

FLAGS = flags.FLAGS


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
    flags.DEFINE_integer("train_steps", train_steps, "Optimizer steps in all.")
    flags.DEFINE_integer("batch_size", batch_size, "Sentences per batch.")
    flags.DEFINE_float("learning_rate", learning_rate, "Learning rate.")
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
        "replicated. 'model' > 1 needs KERAS_BACKEND=jax; on TensorFlow "
        "'batch:N' is tf.distribute data parallelism.")
    flags.DEFINE_enum(
        "expert_axis", "model", ["model", "batch"],
        "Mesh axis expert weights are split over (JAX): 'model', or "
        "'batch' for the paper's layout with a mesh batch:N (every device "
        "its own batch share and its own experts, all-to-all dispatch).")
    flags.DEFINE_bool("verbose", False,
                      "Also show TensorFlow's and XLA's native log lines "
                      "while they load.")
    flags.DEFINE_bool("multi_host", False,
                      "The run spans several hosts (jax.distributed on JAX, "
                      "MultiWorkerMirroredStrategy on TensorFlow).")


def check_training_flags(fail, positive=()):
    """Calls `fail(message)` for the first common flag that is invalid.

    Args:
        fail: called with a one-line message (the scripts exit with it).
        positive: names of the script's own flags that must be positive.
    """
    for name in ("train_steps", "batch_size", "log_every",
                 "checkpoint_every") + tuple(positive):
        if getattr(FLAGS, name) < 1:
            fail(f"--{name} must be positive, received {getattr(FLAGS, name)}")
    if FLAGS.learning_rate <= 0:
        fail(f"--learning_rate must be positive, received "
             f"{FLAGS.learning_rate}")


def load_libraries():
    """Loads TensorFlow, Keras and sgmoe without their native log lines
    (unless --verbose); call it once the flags are checked, so a bad flag
    is reported at once."""
    console.plain_warnings()
    console.import_quietly(verbose=FLAGS.verbose)


def check_preset(fail, presets):
    """Calls `fail` unless --preset names one of `presets` or a directory
    written by `save_to_preset`."""
    preset = FLAGS.preset
    if os.path.isdir(preset):
        if not os.path.isfile(os.path.join(preset, "config.json")):
            fail(f"--preset={preset}: the directory has no config.json (not "
                 "written by save_to_preset)")
    elif preset not in presets:
        fail(f"--preset={preset}: no such preset or directory; presets: "
             f"{', '.join(sorted(presets))}")


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
    return {"data": data, "model": model, "training": {
        name: getattr(FLAGS, name) for name in (
            "batch_size", "seed", "optimizer", "learning_rate",
            "mixed_precision")}}


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


def make_optimizer():
    """The optimizer `--optimizer` and `--learning_rate` name."""
    import keras

    if FLAGS.optimizer == "factored_adam":
        from sgmoe.optimizers import FactoredAdam

        return FactoredAdam(FLAGS.learning_rate)
    return keras.optimizers.Adam(FLAGS.learning_rate)


def training_run(fail, model, tokens_per_step, setup):
    """The `sgmoe.training.TrainingRun` the flags ask for, restored from
    --model_dir's last checkpoint. A run started with another `setup`
    (see `run_setup`), or a checkpoint that cannot be restored (corrupt,
    or written by another model) ends the script, with nothing written."""
    from sgmoe import training

    try:
        return training.TrainingRun(
            model, train_steps=FLAGS.train_steps, log_every=FLAGS.log_every,
            model_dir=FLAGS.model_dir,
            checkpoint_every=FLAGS.checkpoint_every,
            tokens_per_step=tokens_per_step, setup=setup)
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


def save_model(fail, model):
    """Writes the final model to --model_dir/model (atomically)."""
    if not FLAGS.model_dir:
        return
    from sgmoe import training

    try:
        training.save_model_preset(model,
                                   os.path.join(FLAGS.model_dir, "model"))
    except OSError as error:
        fail(f"writing {FLAGS.model_dir}/model failed: {error}; the last "
             "checkpoint is kept (run again to write it)")


def print_training_time(run, seconds, tokens_per_step, unit):
    """Prints the steps `run` just trained, their time and `unit`s/s."""
    if run.remaining_steps:
        steps = run.remaining_steps
        print(f"trained {steps} steps in {seconds:.0f}s "
              f"({steps * tokens_per_step / seconds:.0f} {unit}/s)")

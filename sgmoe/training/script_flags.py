"""The absl flags that every sgmoe training script shares.

`scripts/train_lm.py` and `scripts/train_translation.py` define their data
flags themselves and these common ones here, with their own defaults, so
the flags mean the same in both and `--helpfull` documents them once.
"""

import contextlib
import os
import shutil
import tempfile

from absl import flags

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
                         "Steps between progress lines (one Keras epoch); "
                         "must divide --train_steps and --checkpoint_every.")
    flags.DEFINE_integer("checkpoint_every", checkpoint_every,
                         "Steps between checkpoints (with --model_dir).")
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
    if FLAGS.train_steps % FLAGS.log_every:
        fail(f"--log_every={FLAGS.log_every} must divide "
             f"--train_steps={FLAGS.train_steps}")
    if FLAGS.model_dir and FLAGS.checkpoint_every % FLAGS.log_every:
        fail(f"--log_every={FLAGS.log_every} must divide "
             f"--checkpoint_every={FLAGS.checkpoint_every}")
    if FLAGS.learning_rate <= 0:
        fail(f"--learning_rate must be positive, received "
             f"{FLAGS.learning_rate}")


def distribution_scope():
    """The scope to build and compile the model in, for `--mesh`.

    Raises:
        ValueError: an invalid `--mesh` (naming `mesh`).
    """
    from sgmoe import distribute

    distribution = distribute.distribution_for_flags(
        FLAGS.mesh, multi_host=FLAGS.multi_host,
        expert_axis=FLAGS.expert_axis)
    if distribution is None:
        return contextlib.nullcontext()
    return distribution.scope()


def shared_vocabulary(vocabulary_class, build):
    """The run's vocabulary: `--model_dir`'s, or built once and saved there.

    A vocabulary saved in `--model_dir` is loaded. Otherwise process 0
    calls `build()` and saves the result, and every other process of a
    multi-process run (`--multi_host`) loads it once written, so all use
    the same one. Without `--model_dir` each process calls `build()`.
    Call it after `distribution_scope()`, which starts the processes.

    Args:
        vocabulary_class: `WordVocabulary` or `SubwordVocabulary` (their
            `FILENAME`, `load(directory)` and `save(directory)`).
        build: () -> a new vocabulary.
    """
    if not FLAGS.model_dir:
        return build()
    from sgmoe import distribute

    saved = os.path.isfile(os.path.join(FLAGS.model_dir,
                                        vocabulary_class.FILENAME))
    # Nobody writes before everybody has looked.
    distribute.wait_for_all_processes("sgmoe vocabulary checked")
    if saved:
        return vocabulary_class.load(FLAGS.model_dir)
    vocabulary = None
    if distribute.is_primary_process():
        vocabulary = build()
        vocabulary.save(FLAGS.model_dir)
    distribute.wait_for_all_processes("sgmoe vocabulary written")
    if vocabulary is None:
        vocabulary = vocabulary_class.load(FLAGS.model_dir)
    return vocabulary


def save_model(model):
    """Saves the trained model to `--model_dir`/model (`save_to_preset`).

    In a multi-process run every process must save: reading weights that
    span processes is a collective. Process 0 writes `--model_dir`/model;
    the others write to a scratch directory and delete it.
    """
    from sgmoe import distribute

    if distribute.is_primary_process():
        model.save_to_preset(os.path.join(FLAGS.model_dir, "model"))
        return
    scratch = tempfile.mkdtemp(prefix="sgmoe-save-")
    try:
        model.save_to_preset(os.path.join(scratch, "model"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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

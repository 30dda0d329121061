"""One vocabulary for every process of a run, kept in its model directory."""

import os

from sgmoe.data import DataError
from sgmoe.distribute import processes
from sgmoe.training import run_manifest


def shared_vocabulary(model_dir, vocabulary_class, build):
    """The run's vocabulary: `model_dir`'s, or built once and saved there.

    A vocabulary saved in `model_dir` is loaded, so a resumed run keeps the
    token ids its checkpoints were trained with. Otherwise process 0 calls
    `build()` and saves the result in `model_dir`, and every other process
    of a multi-process run loads it once it is written, so all processes
    use the same one. Without a `model_dir` each process calls `build()`.
    Every process must call it (it waits for the others); in a JAX
    multi-process run, after `jax.distributed` is initialised. A
    `model_dir` that holds a run (its `run.json`, see `check_run_setup`)
    but not the vocabulary is refused: a rebuilt vocabulary could give
    the trained embeddings other words.

    Args:
        model_dir: the run's directory, or None.
        vocabulary_class: `sgmoe.data.WordVocabulary` or
            `sgmoe.data.SubwordVocabulary` (what is used: their `FILENAME`,
            `load(directory)` and `save(directory)`).
        build: () -> a new `vocabulary_class` instance.

    Returns:
        A `vocabulary_class` instance.

    Raises:
        sgmoe.data.DataError: the vocabulary file is missing from a
            `model_dir` that holds a run, or is not a valid vocabulary.

    Example:

    >>> vocabulary = shared_vocabulary(
    ...     "/tmp/lm", WordVocabulary,
    ...     lambda: WordVocabulary.build("data/brown.train.txt.gz"))
    """
    if not model_dir:
        return build()
    path = os.path.join(model_dir, vocabulary_class.FILENAME)
    saved = os.path.isfile(path)
    if not saved and os.path.exists(
            os.path.join(model_dir, run_manifest.MANIFEST_FILE)):
        raise DataError(
            f"{path}: no such file, but {model_dir} holds a run trained with "
            "it; put it back, or start afresh in another model directory")
    # Nobody writes before everybody has looked.
    processes.wait_for_all_processes("sgmoe vocabulary checked")
    if saved:
        return vocabulary_class.load(model_dir)
    vocabulary = None
    if processes.is_primary_process():
        vocabulary = build()
        vocabulary.save(model_dir)
    processes.wait_for_all_processes("sgmoe vocabulary written")
    if vocabulary is None:
        vocabulary = vocabulary_class.load(model_dir)
    return vocabulary

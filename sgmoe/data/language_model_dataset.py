"""The `tf.data` pipeline of a word-level language model."""

import tensorflow as tf

from sgmoe import _validation
from sgmoe.data import _pipeline
from sgmoe.data import text_files
from sgmoe.data.word_vocabulary import WordVocabulary


def language_model_dataset(
        file_patterns, vocabulary, batch_size, max_length, *, shuffle=False,
        seed=0, repeat=False, block_size=None, num_shards=1,
        shard_index=0, skip_batches=0, bucket_boundaries=None,
        pad_to_bucket_length=True, drop_remainder=None,
        max_line_length=text_files.DEFAULT_MAX_LINE_LENGTH,
        on_malformed="raise", split_sentences=False):
    """Batches of (inputs, targets) word ids from one-sentence-per-line text.

    Each non-blank line becomes `<S> w1 ... wn </S>` (ids from `vocabulary`,
    unknown words `<UNK>`); the inputs are `<S> w1 ... wn` and the targets
    `w1 ... wn </S>`, the same sequence shifted by one. Sentences whose
    inputs would be longer than `max_length` are dropped, not cut. This is
    the setting of the paper's 1B Word experiments (Shazeer et al. 2017,
    Appendix C.1), where each sentence is an example. Text with a
    paragraph or document per line is split into sentences first with
    `split_sentences=True` (`split_into_sentences`; build the vocabulary
    with the same setting).

    Batches hold sentences of nearly equal length, padded with 0 (`<pad>`),
    so a loss masks the padding with
    `keras.losses.SparseCategoricalCrossentropy(ignore_class=0)`: sentences
    are read in blocks of `block_size`, each block is sorted by length and
    cut into batches, and each batch is padded to the smallest of
    `bucket_boundaries` that fits it (so an XLA-compiled train step sees
    only a few shapes).

    Files are expanded and checked in Python first (`sgmoe.data.text_files`),
    so a missing, empty or malformed file raises a `DataError` naming it
    before any TensorFlow op runs.

    The order is deterministic. Without `shuffle`, files are read in order
    and each block's batches come out shortest first. With it, the file
    order of every epoch, the sentences of every block and the order of its
    batches are stateless permutations of `seed` (TensorFlow's global seed
    plays no part), so another host, or a resumed run with `skip_batches`,
    sees exactly the same batches.

    Args:
        file_patterns: comma-separated paths or globs (`.gz` read as gzip),
            or a list of them; see `expand_file_patterns`.
        vocabulary: a `WordVocabulary`.
        batch_size: sentences per batch.
        max_length: the longest input sequence (words + 1), in tokens.
        shuffle: shuffle the file order, the sentences and the batches.
        seed: the shuffling seed (a non-negative integer).
        repeat: repeat forever, reshuffling every epoch.
        block_size: sentences shuffled and sorted by length together,
            rounded up to a multiple of `batch_size`. Larger blocks pad
            less and shuffle more widely, and hold more in memory. None:
            with `shuffle`, every line this shard reads, up to
            `MAX_SHUFFLE_BLOCK` (1,000,000), so a corpus in document order
            (Brown, the bundled manuals) is shuffled as a whole (a smaller
            block trains on one domain after another); without, 10,000,
            so the first batches hold the file's first lines.
        num_shards: number of disjoint shards (e.g. hosts or workers).
        shard_index: this shard, in [0, num_shards). With at least
            `num_shards` files, shards read disjoint files; with fewer, each
            keeps every `num_shards`-th line.
        skip_batches: batches to skip at the start, to resume a run where
            it stopped (the skipped batches are read and dropped).
        bucket_boundaries: increasing padded lengths; `max_length` is added
            as the last one. None: 8, 12, 16, 24, 32, 48, ... below
            `max_length`.
        pad_to_bucket_length: pad every batch to a bucket boundary; False
            pads to the longest sentence of the batch.
        drop_remainder: give every batch exactly `batch_size` rows (only
            the last batch of a finite dataset can be short; this drops
            it). None: when `repeat`, so training batches have a static
            batch size while an evaluation pass sees every sentence.
        max_line_length: the longest allowed line, in bytes.
        on_malformed: `"raise"` or `"skip"` for lines that are not UTF-8 or
            are longer than `max_line_length` (skipped lines are counted
            and logged).
        split_sentences: split each line into sentences
            (`split_into_sentences`), every sentence an example:
            `max_line_length` applies to the line, `max_length` to each
            sentence.

    Returns:
        A `tf.data.Dataset` of `(inputs, targets)`, both int32
        [batch, time].

    Raises:
        DataError: a missing file, a glob matching nothing, an empty file,
            a malformed line under `on_malformed="raise"`, or, with
            `repeat`, no sentence that fits `max_length`.

    Example:

    vocabulary = sgmoe.data.WordVocabulary.build(
        "data/brown.train.txt.gz", vocabulary_size=8000)
    train = sgmoe.data.language_model_dataset(
        "data/brown.train.txt.gz", vocabulary, batch_size=32,
        max_length=64, shuffle=True, repeat=True, seed=1)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=0), ...)
    model.fit(train, steps_per_epoch=1000)
    """
    _pipeline.check_vocabulary(vocabulary, WordVocabulary)
    _validation.check_bool("split_sentences", split_sentences)
    boundaries, drop_remainder = _pipeline.pipeline_settings(
        batch_size, max_length, num_shards, shard_index, skip_batches,
        block_size, seed, on_malformed, bucket_boundaries, repeat,
        drop_remainder)

    files = text_files.expand_file_patterns(file_patterns)
    files, shard_lines = _pipeline.shard_files(files, num_shards, shard_index)
    summaries = text_files.check_text_files(files, max_line_length,
                                            on_malformed)
    block_size = _pipeline.default_block_size(block_size, shuffle, summaries,
                                              num_shards, shard_lines)

    lines = _pipeline.read_lines(files, shuffle, seed, repeat, num_shards,
                                 shard_index, shard_lines)
    vocabulary.lookup_table  # created eagerly, captured by the map below

    def encode_chunk(lines):
        keep = tf.logical_not(_pipeline.is_blank(lines))
        if on_malformed == "skip":
            keep &= _pipeline.is_well_formed(lines, max_line_length)
        lines = tf.boolean_mask(lines, keep)
        if split_sentences:
            lines = _pipeline.sentences_of(lines)
        words = vocabulary.encode(lines)
        starts = tf.fill([words.nrows(), 1], vocabulary.bos_id)
        ends = tf.fill([words.nrows(), 1], vocabulary.eos_id)
        inputs = tf.concat([starts, words], axis=1)  # [lines, (words + 1)]
        targets = tf.concat([words, ends], axis=1)
        fits = tf.where(inputs.row_lengths() <= max_length)[:, 0]
        return tf.gather(inputs, fits), tf.gather(targets, fits)

    if repeat:
        _pipeline.check_keeps_an_example(
            _pipeline.read_lines(files, False, seed, False, num_shards,
                                 shard_index, shard_lines),
            encode_chunk, ", ".join(files), max_length)
    examples = _pipeline.examples_in_chunks(lines, encode_chunk)
    batches = _pipeline.batches_by_length(
        examples, lambda inputs, targets: inputs.row_lengths(), boundaries,
        batch_size, block_size, shuffle, seed, pad_to_bucket_length,
        drop_remainder)
    return _pipeline.finish(batches, skip_batches)

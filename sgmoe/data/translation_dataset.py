"""The `tf.data` pipeline of a translation model."""

import tensorflow as tf

from sgmoe.data import _pipeline
from sgmoe.data import text_files
from sgmoe.data.data_error import DataError
from sgmoe.data.subword_vocabulary import SubwordVocabulary


def translation_dataset(
        source_patterns, target_patterns, vocabulary, batch_size, max_length,
        *, shuffle=False, seed=0, repeat=False, block_size=None,
        num_shards=1, shard_index=0, skip_batches=0, bucket_boundaries=None,
        pad_to_bucket_length=True, drop_remainder=None,
        max_line_length=text_files.DEFAULT_MAX_LINE_LENGTH,
        on_malformed="raise"):
    """Batches of ((source, target_inputs), target_outputs) piece ids.

    Line i of the k-th source file is the translation of line i of the k-th
    target file (files in `expand_file_patterns` order). Each pair becomes

        source_ids     = s1 ... sm </s>
        target_inputs  = <s> t1 ... tn
        target_outputs = t1 ... tn </s>

    with ids from a shared `SubwordVocabulary`: the encoder reads the
    source, the decoder reads `target_inputs` (teacher forcing) and predicts
    `target_outputs`. Pairs with a blank side are dropped, and so are pairs
    whose source or target sequence would be longer than `max_length`.
    Batches hold pairs of nearly equal length (the longer of the two
    sequences: blocks of `block_size` pairs are sorted by it and cut into
    batches); both sides of a batch are padded with 0 (`<pad>`) to the same
    bucket boundary, so a loss masks padding with
    `keras.losses.SparseCategoricalCrossentropy(ignore_class=0)`.
    `vocabulary.detokenize` turns ids back into text for BLEU.

    Files are expanded and checked in Python first: a missing, empty or
    malformed file, or a source and target file with different numbers of
    lines, raises a `DataError` naming the files before any TensorFlow op
    runs. Ordering, shuffling, sharding (by file pair, or by line with fewer
    pairs than shards) and resuming work as in `language_model_dataset`.

    Args:
        source_patterns: comma-separated paths or globs of the source side
            (`.gz` read as gzip), or a list of them.
        target_patterns: the target side, in the same order.
        vocabulary: a `SubwordVocabulary`.
        batch_size: sentence pairs per batch.
        max_length: the longest source or target sequence, in pieces
            (`</s>` or `<s>` included).
        shuffle, seed, repeat, block_size, num_shards, shard_index,
        skip_batches, bucket_boundaries, pad_to_bucket_length,
        drop_remainder, max_line_length, on_malformed: as in
            `language_model_dataset`. Under `on_malformed="skip"` a pair is
            skipped when either side is malformed.

    Returns:
        A `tf.data.Dataset` of `((source_ids, target_inputs),
        target_outputs)`, all int32 [batch, time].

    Raises:
        DataError: a missing file, a glob matching nothing, an empty file,
            a malformed line under `on_malformed="raise"`, different
            numbers of source and target files, different line counts, or,
            with `repeat`, no pair that fits `max_length`.

    Example:

    vocabulary = sgmoe.data.SubwordVocabulary.train(
        ["data/ding.de-en.train.de.gz", "data/ding.de-en.train.en.gz"])
    train = sgmoe.data.translation_dataset(
        "data/ding.de-en.train.de.gz", "data/ding.de-en.train.en.gz",
        vocabulary, batch_size=64, max_length=64, shuffle=True,
        repeat=True, seed=1)
    model.fit(train, steps_per_epoch=1000)  # model((source, target_in))
    """
    _pipeline.check_vocabulary(vocabulary, SubwordVocabulary)
    boundaries, drop_remainder = _pipeline.pipeline_settings(
        batch_size, max_length, num_shards, shard_index, skip_batches,
        block_size, seed, on_malformed, bucket_boundaries, repeat,
        drop_remainder)

    sources = text_files.expand_file_patterns(source_patterns)
    targets = text_files.expand_file_patterns(target_patterns)
    if len(sources) != len(targets):
        raise DataError(
            f"{source_patterns}: {len(sources)} source files, but "
            f"{target_patterns}: {len(targets)} target files (the k-th "
            "source file pairs with the k-th target file)")
    file_pairs, shard_lines = _pipeline.shard_files(
        list(zip(sources, targets)), num_shards, shard_index)
    summaries = text_files.check_parallel_files(
        [source for source, _ in file_pairs],
        [target for _, target in file_pairs],
        max_line_length, on_malformed)
    block_size = _pipeline.default_block_size(
        block_size, shuffle, [source for source, _ in summaries],
        num_shards, shard_lines)

    lines = _pipeline.read_lines(file_pairs, shuffle, seed, repeat,
                                 num_shards, shard_index, shard_lines)

    def encode_chunk(source_lines, target_lines):
        keep = tf.logical_not(tf.logical_or(_pipeline.is_blank(source_lines),
                                            _pipeline.is_blank(target_lines)))
        if on_malformed == "skip":
            keep &= _pipeline.is_well_formed(source_lines, max_line_length)
            keep &= _pipeline.is_well_formed(target_lines, max_line_length)
        source = vocabulary.tokenize(tf.boolean_mask(source_lines, keep))
        target = vocabulary.tokenize(tf.boolean_mask(target_lines, keep))
        starts = tf.fill([source.nrows(), 1], vocabulary.bos_id)
        ends = tf.fill([source.nrows(), 1], vocabulary.eos_id)
        source = tf.concat([source, ends], axis=1)  # [pairs, (pieces + 1)]
        target_inputs = tf.concat([starts, target], axis=1)
        target_outputs = tf.concat([target, ends], axis=1)
        fits = tf.where(_longer_side(source, target_inputs) <= max_length)
        return tuple(tf.gather(ids, fits[:, 0])
                     for ids in (source, target_inputs, target_outputs))

    if repeat:
        _pipeline.check_keeps_an_example(
            _pipeline.read_lines(file_pairs, False, seed, False,
                                 num_shards, shard_index, shard_lines),
            encode_chunk, ", ".join(path for pair in file_pairs
                                    for path in pair), max_length)
    examples = _pipeline.examples_in_chunks(lines, encode_chunk)
    batches = _pipeline.batches_by_length(
        examples, lambda source, target_inputs, _: _longer_side(
            source, target_inputs),
        boundaries, batch_size, block_size, shuffle, seed,
        pad_to_bucket_length, drop_remainder)
    batches = batches.map(
        lambda source, target_inputs, target_outputs: (
            (source, target_inputs), target_outputs))
    return _pipeline.finish(batches, skip_batches)


def _longer_side(source, target_inputs):
    return tf.maximum(source.row_lengths(), target_inputs.row_lengths())

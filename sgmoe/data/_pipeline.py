"""tf.data building blocks shared by the LM and translation pipelines."""

import numbers

import numpy as np
import tensorflow as tf

from sgmoe import _validation
from sgmoe.data import text_files
from sgmoe.data.data_error import DataError
from sgmoe.data.split_into_sentences import split_into_sentences

# The characters Python's str.split() splits at: Unicode White_Space plus the
# ASCII separators \x1c-\x1f. tensorflow-text's WhitespaceTokenizer cuts
# multi-byte whitespace in the middle (leaving broken UTF-8 in the tokens),
# so the pipelines turn every run of these into one ASCII space first, and
# vocabularies counted with str.split() see the same words.
WHITESPACE_PATTERN = r"[\t\n\x0b\f\r\x1c-\x1f\x{85}\p{Z}]+"

# The largest default block of a shuffled stream (`block_size=None`):
# about 0.4 GB of ids for sentences of 25 words; larger corpora come in
# several files, whose order is shuffled too.
MAX_SHUFFLE_BLOCK = 1_000_000
# The default block of a stream in file order: the window sorted by length.
ORDERED_BLOCK = 10_000
# Seeds of the random streams, folded with the epoch or block number.
_FILE_ORDER_STREAM, _BLOCK_STREAM, _BATCH_ORDER_STREAM = 0, 1, 2
_CHUNK_SIZE = 1024


def pipeline_settings(batch_size, max_length, num_shards, shard_index,
                      skip_batches, block_size, seed, on_malformed,
                      bucket_boundaries, repeat, drop_remainder):
    """Checks a dataset's arguments; returns (boundaries, drop_remainder).

    `drop_remainder` None means: drop a last short batch only when the
    dataset repeats.
    """
    _validation.check_positive_int("batch_size", batch_size)
    _validation.check_positive_int("max_length", max_length)
    _validation.check_positive_int("num_shards", num_shards)
    if block_size is not None:
        _validation.check_positive_int("block_size", block_size)
    for name, value in (("shard_index", shard_index),
                        ("skip_batches", skip_batches), ("seed", seed)):
        if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                or value < 0):
            raise ValueError(f"`{name}` must be a non-negative integer, "
                             f"received {name}={value!r}.")
    if shard_index >= num_shards:
        raise ValueError(
            f"`shard_index` must be less than `num_shards`={num_shards}, "
            f"received shard_index={shard_index}.")
    text_files.check_on_malformed(on_malformed)
    boundaries = bucket_boundaries_for(bucket_boundaries, max_length)
    if drop_remainder is None:
        drop_remainder = bool(repeat)
    return boundaries, drop_remainder


def check_vocabulary(vocabulary, expected_class):
    if not isinstance(vocabulary, expected_class):
        raise ValueError(
            f"`vocabulary` must be a {expected_class.__name__}, received "
            f"{type(vocabulary).__name__}.")


def default_bucket_boundaries(max_length):
    """Bucket lengths 8, 12, 16, 24, 32, 48, ... below `max_length`, then it.

    Padding to these lengths wastes at most a third of a batch, and a
    pipeline emits only a few distinct shapes, so an XLA-compiled train step
    compiles a few times, not once per length.
    """
    boundaries, length = [], 8
    while length < max_length:
        boundaries.append(length)
        length += length // 2 if length & (length - 1) == 0 else length // 3
    return boundaries + [max_length]


def bucket_boundaries_for(bucket_boundaries, max_length):
    """Checks user boundaries and ends them with `max_length`."""
    if bucket_boundaries is None:
        return default_bucket_boundaries(max_length)
    boundaries = list(bucket_boundaries)
    if (any(isinstance(b, bool) or not isinstance(b, numbers.Integral)
            for b in boundaries)
            or any(b < 1 for b in boundaries)
            or any(a >= b for a, b in zip(boundaries, boundaries[1:]))
            or (boundaries and boundaries[-1] > max_length)):
        raise ValueError(
            "`bucket_boundaries` must be increasing positive integers no "
            f"larger than `max_length`={max_length}, received "
            f"bucket_boundaries={bucket_boundaries!r}.")
    if not boundaries or boundaries[-1] < max_length:
        boundaries.append(max_length)
    return [int(b) for b in boundaries]


def shard_files(files, num_shards, shard_index):
    """This shard's files, and whether lines must be sharded instead.

    With at least `num_shards` files, shard i reads files i, i + n, ...;
    with fewer, every shard reads all files and keeps lines i, i + n, ...
    Either way the shards are disjoint and together cover the data.
    """
    if num_shards == 1:
        return list(files), False
    if len(files) >= num_shards:
        return list(files)[shard_index::num_shards], False
    return list(files), True


def default_block_size(block_size, shuffle, summaries, num_shards,
                       shard_lines):
    """`block_size`, or for None: shuffled, every line this shard reads
    (from the `TextFileSummary`s of its files) up to MAX_SHUFFLE_BLOCK; in
    file order, ORDERED_BLOCK, so the first batches stay the first lines'."""
    if block_size is not None:
        return block_size
    if not shuffle:
        return ORDERED_BLOCK
    lines = sum(summary.lines for summary in summaries)
    if shard_lines:
        lines = -(-lines // num_shards)
    return max(1, min(lines, MAX_SHUFFLE_BLOCK))


def _seed_for(seed, stream, index):
    return tf.random.experimental.stateless_fold_in(
        tf.constant([seed, stream], tf.int64), index)


def _permute(elements, seed):
    """Applies one stateless random permutation to every component."""
    first = tf.nest.flatten(elements, expand_composites=False)[0]
    size = (first.nrows() if isinstance(first, tf.RaggedTensor)
            else tf.shape(first, out_type=tf.int64)[0])
    order = tf.argsort(tf.random.stateless_uniform([size], seed=seed))
    return tf.nest.map_structure(lambda t: tf.gather(t, order), elements)


def _text_line_dataset(path):
    compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"),
                           "GZIP", "")
    return tf.data.TextLineDataset(path, compression_type=compression)


def read_lines(files, shuffle, seed, repeat, num_shards, shard_index,
               shard_lines):
    """Lines of `files` (a list of paths, or of tuples of line-aligned paths).

    The file order is a stateless permutation of (seed, epoch) when
    shuffling, and up to 8 files are read at once, a line of each in turn;
    without shuffling files are read one after the other in order.
    Elements are a string, or a tuple of strings for tuples of paths.
    """
    num_files = len(files)
    columns = list(zip(*files)) if isinstance(files[0], tuple) else [files]
    file_table = tuple(tf.constant(column) for column in columns)
    epochs = (tf.data.Dataset.counter() if repeat
              else tf.data.Dataset.range(1))

    def files_of_epoch(epoch):
        paths = file_table
        if shuffle:
            paths = _permute(paths, _seed_for(seed, _FILE_ORDER_STREAM, epoch))
        return tf.data.Dataset.from_tensor_slices(paths)

    def lines_of(*paths):
        if len(paths) == 1:
            return _text_line_dataset(paths[0])
        return tf.data.Dataset.zip(tuple(_text_line_dataset(p) for p in paths))

    cycle_length = min(num_files, 8) if shuffle else 1
    parallel = ({"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True}
                if cycle_length > 1 else {})
    dataset = epochs.flat_map(files_of_epoch).interleave(
        lines_of, cycle_length=cycle_length, block_length=1, **parallel)
    if shard_lines:
        dataset = dataset.shard(num_shards, shard_index)
    return dataset


def normalize_whitespace(lines):
    return tf.strings.regex_replace(lines, WHITESPACE_PATTERN, " ")


def is_well_formed(line, max_line_length):
    """The in-graph twin of `read_text_lines`' checks (UTF-8 and length)."""
    transcoded = tf.strings.unicode_transcode(
        line, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD,
        replace_control_characters=False)
    return tf.logical_and(tf.equal(transcoded, line),
                          tf.strings.length(line) <= max_line_length)


def is_blank(line):
    return tf.equal(tf.strings.strip(normalize_whitespace(line)), "")


def sentences_of(lines):
    """The sentences of a vector of UTF-8 lines, in order: a string vector
    [sentences] (`split_into_sentences` of each line).

    The lines are split in Python by the function the vocabulary and the
    token count use, so all of them see the same sentences; one call per
    chunk of lines, not per line, keeps the cost in `tf.data` small.
    """
    def split(chunk):  # [lines] bytes -> [sentences] bytes
        return np.array(
            [sentence.encode("utf-8") for line in chunk
             for sentence in split_into_sentences(line.decode("utf-8"))],
            dtype=object)

    sentences = tf.numpy_function(split, [lines], tf.string, stateful=False)
    return tf.ensure_shape(sentences, [None])


def examples_in_chunks(lines, chunk_fn):
    """Maps `chunk_fn` over chunks of 1,024 lines (or tuples of lines).

    Filtering and tokenizing a chunk at a time costs far less than one line
    at a time. `chunk_fn` maps a vector of lines (or a tuple of vectors) to a tuple of
    ragged id tensors [examples, (length)], one row per example it keeps.
    """
    return lines.batch(_CHUNK_SIZE).map(
        chunk_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def check_keeps_an_example(one_pass, chunk_fn, what, max_length):
    """Raises `DataError` unless one pass over the lines keeps an example.

    A repeated stream whose every line is blank or filtered out would never
    yield a batch, and training on it would wait forever. This reads lines
    only until the first kept example.

    Args:
        one_pass: the lines (or tuples of lines), read once.
        chunk_fn: as in `examples_in_chunks`.
        what: the files, for the message.
        max_length: the length limit, for the message.
    """
    kept = examples_in_chunks(one_pass, chunk_fn).filter(
        lambda first, *rest: first.nrows() > 0).take(1)
    for _ in kept:
        return
    raise DataError(
        f"{what}: no example with at most max_length={max_length} tokens "
        "(every line is blank or longer); repeating them would never yield "
        "a batch")


def batches_by_length(examples, length_fn, boundaries, batch_size,
                      block_size, shuffle, seed, pad_to_bucket_length,
                      drop_remainder):
    """Cuts examples into batches of similar length, padded with 0.

    Examples are regrouped into blocks of `block_size` (rounded up to a
    multiple of `batch_size`). Each block is shuffled (with `shuffle`: a
    stateless permutation of (seed, block number), so the order depends on
    `seed` alone, not on TensorFlow's global seed), sorted by length
    (stable), and cut into batches, whose order in the block is shuffled
    too. So every batch holds examples of nearly equal length; it is padded
    to the smallest bucket boundary that fits its longest example (or to
    that example, when `pad_to_bucket_length` is False). Only the last
    block of a finite dataset can leave a short batch; `drop_remainder`
    drops that block's surplus examples before sorting (after shuffling,
    a random choice), so no length is favoured.

    This is sort-by-length bucketing within a window, like the
    maxi-batches of Marian NMT: the per-example work is vectorised over
    blocks, not done one example at a time as `group_by_window` (and
    `tf.data.Dataset.bucket_by_sequence_length`) does; the difference in
    speed is in `docs/data.md`.

    Args:
        examples: a dataset of tuples of ragged tensors [n, (length)], as
            from `examples_in_chunks`.
        length_fn: maps the tuple of ragged tensors to lengths [n].
    """
    block_size = -(-block_size // batch_size) * batch_size
    boundary_table = tf.constant(boundaries, tf.int64)

    def cut_block(block_index, block):
        num_examples = block[0].nrows()
        if shuffle:
            block = _permute(block, _seed_for(seed, _BLOCK_STREAM,
                                              block_index))
        if drop_remainder:
            num_examples -= num_examples % batch_size
            block = tuple(component[:num_examples] for component in block)
        by_length = tf.argsort(length_fn(*block), stable=True)
        block = tuple(tf.gather(component, by_length) for component in block)
        starts = tf.range(0, num_examples, batch_size)
        splits = tf.concat([starts, [num_examples]], axis=0)
        batches = tuple(tf.RaggedTensor.from_row_splits(component, splits)
                        for component in block)  # [batches, (rows), (len)]
        if shuffle:
            batches = _permute(batches, _seed_for(seed, _BATCH_ORDER_STREAM,
                                                  block_index))
        return batches

    def pad(*batch):
        longest = tf.reduce_max(length_fn(*batch))
        if pad_to_bucket_length:
            bucket = tf.reduce_sum(tf.cast(boundary_table < longest,
                                           tf.int64))
            longest = tf.gather(boundary_table, bucket)
        rows = batch_size if drop_remainder else None
        padded = []
        for component in batch:
            dense = component.to_tensor()
            width = tf.shape(dense, out_type=tf.int64)[1]
            dense = tf.pad(dense, [[0, 0], [0, longest - width]])
            padded.append(tf.ensure_shape(dense, [rows, None]))
        return tuple(padded)

    parallel = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True}
    blocks = examples.rebatch(block_size).enumerate()
    return blocks.map(cut_block, **parallel).unbatch().map(pad, **parallel)


def finish(dataset, skip_batches):
    """Skips already-seen batches and prefetches; keeps the order fixed."""
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def content_ids(ids, stop_id, drop_ids):
    """Rows of `ids` cut at their first `stop_id`, without `drop_ids`.

    Args:
        ids: int tensor [batch, time], dense or ragged.

    Returns:
        An int32 `tf.RaggedTensor` [batch, (time)].
    """
    if isinstance(ids, tf.RaggedTensor):
        ids = ids.to_tensor(default_value=drop_ids[0])
    ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
    keep = tf.math.cumsum(tf.cast(ids == stop_id, tf.int32), axis=-1) == 0
    for drop_id in drop_ids:
        keep = tf.logical_and(keep, ids != drop_id)
    return tf.ragged.boolean_mask(ids, keep)

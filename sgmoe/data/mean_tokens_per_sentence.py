"""How many tokens a sentence of a corpus has on average."""

import itertools

from sgmoe import _validation
from sgmoe.data.split_into_sentences import split_into_sentences
from sgmoe.data.text_files import DEFAULT_MAX_LINE_LENGTH
from sgmoe.data.text_files import expand_file_patterns
from sgmoe.data.text_files import read_text_lines

_TOKENIZE_CHUNK = 1000


def mean_tokens_per_sentence(file_patterns, vocabulary=None,
                             max_sentences=None, *,
                             max_line_length=DEFAULT_MAX_LINE_LENGTH,
                             on_malformed="raise", split_sentences=False):
    """Mean tokens per sentence of text files, the end token included.

    A sentence is a non-blank line, or with `split_sentences` each
    sentence `split_into_sentences` finds in one (as
    `language_model_dataset` reads them). Its tokens are its
    whitespace-separated words without a `vocabulary`, or the pieces
    `vocabulary.tokenize` gives it with one; one more is counted for the
    end-of-sentence token the datasets append. Batch size times this is
    the tokens of a training step, for throughput figures
    (`TrainingRun(tokens_per_step=...)`).

    Args:
        file_patterns: comma-separated paths or globs, or a list of them
            (see `expand_file_patterns`).
        vocabulary: None, or a vocabulary whose `tokenize(lines)` returns a
            `tf.RaggedTensor` [batch, (tokens)] (`SubwordVocabulary`).
        max_sentences: read only the first this many sentences; None reads
            them all.
        max_line_length: the longest allowed line, in bytes.
        on_malformed: `"raise"` or `"skip"` for lines that are not UTF-8
            or are longer than `max_line_length` (see
            `sgmoe.data.text_files`); skipped lines are not counted.
        split_sentences: count the sentences of each line, not lines.

    Returns:
        The mean, a float; 0.0 for files without a sentence.

    Raises:
        DataError: a missing or unreadable file, or a malformed line under
            `on_malformed="raise"`.

    Example:

    >>> round(mean_tokens_per_sentence("data/brown.train.txt.gz"), 2)
    21.24
    """
    _validation.check_bool("split_sentences", split_sentences)
    lines = (line for path in expand_file_patterns(file_patterns)
             for line in read_text_lines(path, max_line_length, on_malformed))
    if split_sentences:
        sentences = (sentence for line in lines
                     for sentence in split_into_sentences(line))
    else:
        sentences = (line for line in lines if line.strip())
    sentences = itertools.islice(sentences, max_sentences)
    count = tokens = 0
    if vocabulary is None:
        for line in sentences:
            tokens += len(line.split())
            count += 1
    else:
        while chunk := list(itertools.islice(sentences, _TOKENIZE_CHUNK)):
            tokens += int(vocabulary.tokenize(chunk).row_lengths().numpy()
                          .sum())
            count += len(chunk)
    return (tokens + count) / count if count else 0.0

"""Word vocabularies for language models, with the 1B Word conventions."""

import collections
import os

import tensorflow as tf
import tensorflow_text as tf_text

from sgmoe import _files
from sgmoe import _validation
from sgmoe.data import _pipeline
from sgmoe.data import text_files
from sgmoe.data.data_error import DataError
from sgmoe.data.split_into_sentences import split_into_sentences


class WordVocabulary:
    """Words of a training corpus and their ids, for a word-level LM.

    Ids 0-3 are the special tokens: `<pad>` (0, batch padding, never a
    target), then the One Billion Word benchmark's `<S>` (sentence start),
    `</S>` (sentence end) and `<UNK>` (every word outside the vocabulary)
    (Chelba et al. 2013, arXiv:1312.3005). Words follow from id 4 by
    descending training count, ties in code-point order, so a vocabulary is
    a pure function of its training files. Words are what Python's
    `str.split()` gives; the pipeline splits the same way, with
    tensorflow-text's `WhitespaceTokenizer` after mapping Unicode whitespace
    to spaces. The benchmark's own vocabulary keeps the words seen at least
    3 times (`min_count=3`).

    A vocabulary is saved as `vocabulary.txt` in a directory, usually the
    model's, one token per line in id order, the four special tokens first.

    Args:
        words: the vocabulary's words, in id order from id 4: distinct,
            non-empty, without whitespace, not a special token.

    Example:

    >>> vocabulary = WordVocabulary.build(
    ...     "data/brown.train.txt.gz", vocabulary_size=8000)
    >>> vocabulary.save("runs/brown_lm")
    'runs/brown_lm/vocabulary.txt'
    >>> vocabulary = WordVocabulary.load("runs/brown_lm")
    >>> vocabulary.encode(["the cat sat"]).to_list()
    [[4, 4481, 677]]
    """

    PAD, BOS, EOS, UNK = "<pad>", "<S>", "</S>", "<UNK>"
    SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    FILENAME = "vocabulary.txt"

    def __init__(self, words):
        words = list(words)
        seen = set(self.SPECIAL_TOKENS)
        for word in words:
            problem = _token_problem(word, seen)
            if problem:
                raise ValueError(f"`words` must hold distinct words without "
                                 f"whitespace, but {word!r} {problem}.")
            seen.add(word)
        self.words = words
        self.tokens = list(self.SPECIAL_TOKENS) + words
        self._ids = {token: i for i, token in enumerate(self.tokens)}
        self._table = None
        self._token_tensor = None

    @classmethod
    def from_counts(cls, counts, vocabulary_size=None, min_count=1):
        """Builds a vocabulary from a mapping word -> count.

        Args:
            counts: word counts; special tokens in it are ignored.
            vocabulary_size: the largest vocabulary, special tokens included
                (None: no limit). Must be at least 5.
            min_count: words seen fewer times map to `<UNK>`.
        """
        if vocabulary_size is not None:
            if (isinstance(vocabulary_size, bool)
                    or not isinstance(vocabulary_size, int)
                    or vocabulary_size <= len(cls.SPECIAL_TOKENS)):
                raise ValueError(
                    "`vocabulary_size` must be None or an integer larger than "
                    f"{len(cls.SPECIAL_TOKENS)} (the special tokens), "
                    f"received vocabulary_size={vocabulary_size!r}.")
        if isinstance(min_count, bool) or not isinstance(min_count, int) \
                or min_count < 1:
            raise ValueError("`min_count` must be a positive integer, "
                             f"received min_count={min_count!r}.")
        ranked = sorted(
            ((word, count) for word, count in counts.items()
             if count >= min_count and word not in cls.SPECIAL_TOKENS),
            key=lambda item: (-item[1], item[0]))
        if vocabulary_size is not None:
            ranked = ranked[:vocabulary_size - len(cls.SPECIAL_TOKENS)]
        return cls([word for word, _ in ranked])

    @classmethod
    def build(cls, file_patterns, vocabulary_size=None, min_count=1,
              max_line_length=text_files.DEFAULT_MAX_LINE_LENGTH,
              on_malformed="raise", split_sentences=False):
        """Counts the words of training files and keeps the frequent ones.

        Args:
            file_patterns: comma-separated paths or globs (`.gz` read as
                gzip), or a list of them; see `expand_file_patterns`.
            vocabulary_size: the largest vocabulary, special tokens included.
            min_count: words seen fewer times map to `<UNK>`.
            max_line_length: the longest allowed line, in bytes.
            on_malformed: `"raise"` or `"skip"` for lines that are not UTF-8
                or are too long (see `sgmoe.data.text_files`).
            split_sentences: count the words of each line's sentences
                (`split_into_sentences`), as `language_model_dataset`
                with `split_sentences=True` reads them.

        Raises:
            DataError: a missing, empty or unreadable file, or a malformed
                line under `on_malformed="raise"`.
        """
        counts = cls.count_words(file_patterns, max_line_length, on_malformed,
                                 split_sentences)
        return cls.from_counts(counts, vocabulary_size=vocabulary_size,
                               min_count=min_count)

    @staticmethod
    def count_words(file_patterns,
                    max_line_length=text_files.DEFAULT_MAX_LINE_LENGTH,
                    on_malformed="raise", split_sentences=False):
        """Returns a `collections.Counter` of the words of the files
        (arguments as in `build`)."""
        _validation.check_bool("split_sentences", split_sentences)
        counts = collections.Counter()
        for path in text_files.expand_file_patterns(file_patterns):
            summary = text_files.TextFileSummary(path)
            for line in text_files.read_text_lines(
                    path, max_line_length, on_malformed, summary):
                if split_sentences:
                    for sentence in split_into_sentences(line):
                        counts.update(sentence.split())
                else:
                    counts.update(line.split())
            text_files.check_usable(summary)
        return counts

    def __len__(self):
        return len(self.tokens)

    @property
    def size(self):
        """Number of ids, special tokens included (the softmax width)."""
        return len(self.tokens)

    def token_to_id(self, token):
        """The id of a token; `unk_id` for words outside the vocabulary."""
        return self._ids.get(token, self.unk_id)

    def id_to_token(self, token_id):
        return self.tokens[token_id]

    def save(self, directory):
        """Writes `directory/vocabulary.txt` (creating the directory).

        The file is replaced atomically: a kill during the write leaves the
        old file or none, never a truncated one.

        Returns:
            The path written.
        """
        path = os.path.join(directory, self.FILENAME)
        _files.write_text_atomically(
            path, "".join(token + "\n" for token in self.tokens))
        return path

    @classmethod
    def load(cls, path):
        """Reads a vocabulary written by `save`.

        Args:
            path: the directory given to `save`, or the file itself.

        Raises:
            DataError: a missing file or one not in `save`'s format.
        """
        if os.path.isdir(path):
            path = os.path.join(path, cls.FILENAME)
        tokens = list(text_files.read_text_lines(path))
        specials = len(cls.SPECIAL_TOKENS)
        if tokens[:specials] != list(cls.SPECIAL_TOKENS):
            raise DataError(
                f"{path}: not a WordVocabulary file: it must start with the "
                f"lines {' '.join(cls.SPECIAL_TOKENS)}, found "
                f"{' '.join(tokens[:specials]) or 'nothing'}")
        seen = set(cls.SPECIAL_TOKENS)
        for line_number, token in enumerate(tokens[specials:], specials + 1):
            problem = _token_problem(token, seen)
            if problem:
                raise DataError(f"{path}:{line_number}: token {token!r} "
                                f"{problem}")
            seen.add(token)
        return cls(tokens[specials:])

    @property
    def lookup_table(self):
        """A `tf.lookup.StaticHashTable` word -> id (int64), `<UNK>` default.

        Created once, outside any function being traced, so `tf.data`
        functions can capture it.
        """
        if self._table is None:
            with tf.init_scope():
                self._table = tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(
                        tf.constant(self.tokens),
                        tf.range(len(self.tokens), dtype=tf.int64)),
                    default_value=self.unk_id)
                self._token_tensor = tf.constant(self.tokens)
        return self._table

    def encode(self, lines):
        """Word ids of each line (no `<S>`/`</S>`), as TensorFlow ops.

        Args:
            lines: a string tensor (or list) of shape [batch].

        Returns:
            An int32 `tf.RaggedTensor` [batch, (words)].
        """
        table = self.lookup_table
        words = tf_text.WhitespaceTokenizer().tokenize(
            _pipeline.normalize_whitespace(tf.convert_to_tensor(lines)))
        return tf.cast(tf.ragged.map_flat_values(table.lookup, words),
                       tf.int32)

    def decode(self, ids):
        """Text of id sequences, as TensorFlow ops.

        Each row is cut at its first `</S>`; `<pad>` and `<S>` are dropped
        and the other tokens joined by single spaces (`<UNK>` stays).

        Args:
            ids: int tensor [batch, time] (dense or ragged), e.g. a model's
                sampled or target ids.

        Returns:
            A string tensor [batch].
        """
        self.lookup_table  # creates the token tensor outside any trace
        ids = _pipeline.content_ids(ids, self.eos_id,
                                    (self.pad_id, self.bos_id))
        tokens = tf.ragged.map_flat_values(tf.gather, self._token_tensor, ids)
        return tf.strings.reduce_join(tokens, axis=-1, separator=" ")


def _token_problem(token, seen):
    """Why `token` cannot be a vocabulary word, or None."""
    if not isinstance(token, str) or not token:
        return "is empty or not a string"
    if len(token.split()) != 1 or token != token.strip():
        return "holds whitespace"
    if token in seen:
        return "is a special token or comes twice"
    return None


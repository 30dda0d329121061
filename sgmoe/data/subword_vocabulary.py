"""A shared subword vocabulary for translation, learned with SentencePiece."""

import os
import re

import tensorflow as tf
import tensorflow_text as tf_text

from sgmoe import _files
from sgmoe.data import _pipeline
from sgmoe.data import text_files
from sgmoe.data.data_error import DataError

NORMALIZATIONS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")


class SubwordVocabulary:
    """Subword pieces shared by the source and target language.

    A SentencePiece model (Kudo and Richardson 2018, arXiv:1808.06226)
    learned from the training text of both sides, as GNMT-style translation
    models share one wordpiece vocabulary between encoder and decoder (the
    paper's machine translation models: Shazeer et al. 2017, Section 5.3).
    It is learned in Python with the `sentencepiece` package and applied in
    the pipeline with tensorflow-text's `SentencepieceTokenizer`, which
    gives the same ids.

    Ids 0-3 are `<pad>` (batch padding), `<unk>`, `<s>` (the decoder's
    start token) and `</s>` (end of sentence). Text is normalised before it
    is split: with the default `"nmt_nfkc"` that is Unicode NFKC plus
    collapsing runs of whitespace to one space and trimming the ends, so
    `detokenize(tokenize(text)) == normalize(text)`; with `"identity"` the
    round trip gives back the text exactly (up to leading, trailing and
    repeated spaces). `byte_fallback` (the default) spells characters
    outside the vocabulary as UTF-8 byte pieces, so no text becomes
    `<unk>`.

    The model is saved as `subwords.model` in a directory, usually the
    model's.

    Args:
        model_proto: a serialized SentencePiece model (bytes) whose ids 0-3
            are `<pad>`, `<unk>`, `<s>`, `</s>`, as `train` makes them.

    Example:

    >>> vocabulary = SubwordVocabulary.train(
    ...     ["data/ding.de-en.train.de.gz", "data/ding.de-en.train.en.gz"],
    ...     vocabulary_size=8000)
    >>> vocabulary.save("runs/de_en")
    'runs/de_en/subwords.model'
    >>> ids = vocabulary.tokenize(["Wie geht's?"])  # int32 [1, (pieces)]
    >>> vocabulary.detokenize(ids).numpy()
    array([b"Wie geht's?"], dtype=object)
    """

    PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
    SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3
    FILENAME = "subwords.model"

    def __init__(self, model_proto):
        if not isinstance(model_proto, bytes) or not model_proto:
            raise ValueError(
                "`model_proto` must be a serialized SentencePiece model "
                f"(non-empty bytes), received {type(model_proto).__name__}.")
        self.model_proto = model_proto
        with tf.init_scope():
            try:
                tokenizer = self._make_tokenizer()
                self._size = int(tokenizer.vocab_size())
                specials = tokenizer.id_to_string(
                    tf.range(len(self.SPECIAL_TOKENS))).numpy()
            except (tf.errors.OpError, ValueError):
                raise ValueError("`model_proto` is not a SentencePiece "
                                 "model.") from None
        specials = tuple(token.decode("utf-8") for token in specials)
        if specials != self.SPECIAL_TOKENS:
            raise ValueError(
                f"`model_proto` must have the ids 0-3 {self.SPECIAL_TOKENS} "
                f"(as SubwordVocabulary.train makes them), received "
                f"{specials}.")

    def _make_tokenizer(self):
        # A new tokenizer per call, created inside the caller's graph: its
        # model is a kernel-owned resource, which keras.backend.clear_session
        # (clearing the kernel cache) would destroy under a long-lived one.
        return tf_text.SentencepieceTokenizer(model=self.model_proto,
                                              out_type=tf.int32)

    @classmethod
    def train(cls, file_patterns, vocabulary_size=8000, *,
              model_type="unigram", normalization="nmt_nfkc",
              character_coverage=1.0, byte_fallback=True,
              max_sentences=1_000_000, seed=0, num_threads=None,
              max_line_length=text_files.DEFAULT_MAX_LINE_LENGTH,
              on_malformed="raise"):
        """Learns a vocabulary from training text (both sides of a pair).

        Args:
            file_patterns: the training files of both languages: a list of
                comma-separated paths or globs (`.gz` read as gzip), e.g.
                `[source_train_files, target_train_files]`.
            vocabulary_size: the number of pieces, special tokens and byte
                pieces included.
            model_type: `"unigram"` (SentencePiece's default) or `"bpe"`.
            normalization: a SentencePiece normalisation rule, one of
                `"nmt_nfkc"`, `"nfkc"`, `"nmt_nfkc_cf"`, `"nfkc_cf"`,
                `"identity"`.
            character_coverage: the share of characters the pieces must
                cover; the rest are spelled as bytes (or `<unk>`).
            byte_fallback: spell characters outside the vocabulary as UTF-8
                byte pieces (256 ids) instead of `<unk>`.
            max_sentences: learn from at most this many non-blank lines,
                sampled uniformly (with `seed`) when there are more.
            seed: the seed of that sample.
            num_threads: training threads (None: all cores).
            max_line_length: the longest allowed line, in bytes.
            on_malformed: `"raise"` or `"skip"` for lines that are not UTF-8
                or longer than `max_line_length`.

        Raises:
            DataError: a missing, empty or unreadable file, a malformed line
                under `on_malformed="raise"`, or too little text for
                `vocabulary_size` pieces.
        """
        import io

        import sentencepiece

        if model_type not in ("unigram", "bpe"):
            raise ValueError("`model_type` must be 'unigram' or 'bpe', "
                             f"received model_type={model_type!r}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}"
                             f", received normalization={normalization!r}.")
        files = text_files.expand_file_patterns(file_patterns)
        failure = []

        def sentences():
            try:
                for path in files:
                    summary = text_files.TextFileSummary(path)
                    for line in text_files.read_text_lines(
                            path, max_line_length, on_malformed, summary):
                        if line.split():
                            yield line
                    text_files.check_usable(summary)
            except DataError as error:
                # SentencePiece would swallow it: stop and raise it below.
                failure.append(error)

        model = io.BytesIO()
        sentencepiece.set_random_generator_seed(seed)
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_writer=model,
                vocab_size=vocabulary_size, model_type=model_type,
                normalization_rule_name=normalization,
                character_coverage=character_coverage,
                byte_fallback=byte_fallback,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                max_sentence_length=max_line_length,
                num_threads=num_threads or os.cpu_count() or 1,
                pad_id=cls.pad_id, unk_id=cls.unk_id, bos_id=cls.bos_id,
                eos_id=cls.eos_id, pad_piece=cls.PAD, unk_piece=cls.UNK,
                bos_piece=cls.BOS, eos_piece=cls.EOS, minloglevel=2)
        except RuntimeError as error:
            if failure:
                raise failure[0] from None
            # "INTERNAL: src/x.cc(744) [check] Vocabulary size too high ..."
            message = " ".join(str(error).split()).rsplit("] ", 1)[-1]
            needed = re.search(r"required_chars\. \d+ vs (\d+)", message)
            if needed:  # SentencePiece names its own command-line flags
                message = (
                    f"the characters to cover need {needed.group(1)} "
                    f"pieces (character_coverage={character_coverage}); "
                    "raise vocabulary_size or lower character_coverage")
            raise DataError(
                f"{','.join(files)}: cannot learn {vocabulary_size} subwords: "
                f"{message}") from None
        if failure:
            raise failure[0]
        return cls(model.getvalue())

    @property
    def size(self):
        """Number of ids, special tokens included (the softmax width)."""
        return self._size

    def __len__(self):
        return self.size

    def id_to_piece(self, ids):
        """The pieces of ids, as a string tensor of the same shape."""
        return self._make_tokenizer().id_to_string(ids)

    def save(self, directory):
        """Writes `directory/subwords.model` (creating the directory).

        The file is replaced atomically: a kill during the write leaves the
        old file or none, never a truncated one.

        Returns:
            The path written.
        """
        path = os.path.join(directory, self.FILENAME)
        _files.write_bytes_atomically(path, self.model_proto)
        return path

    @classmethod
    def load(cls, path):
        """Reads a vocabulary written by `save`.

        Args:
            path: the directory given to `save`, or the file itself.

        Raises:
            DataError: a missing file or one that is not such a model.
        """
        if os.path.isdir(path):
            path = os.path.join(path, cls.FILENAME)
        try:
            with open(path, "rb") as file:
                model_proto = file.read()
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except OSError as error:
            raise DataError(f"{path}: cannot read: {error}") from None
        try:
            return cls(model_proto)
        except ValueError as error:
            raise DataError(f"{path}: {error}") from None

    def tokenize(self, lines):
        """Piece ids of each line (no `<s>`/`</s>`), as TensorFlow ops.

        Args:
            lines: a string tensor (or list) of shape [batch].

        Returns:
            An int32 `tf.RaggedTensor` [batch, (pieces)].
        """
        return self._make_tokenizer().tokenize(tf.convert_to_tensor(lines))

    def detokenize(self, ids):
        """Text of piece-id sequences, as TensorFlow ops (e.g. for BLEU).

        Each row is cut at its first `</s>`; `<pad>` and `<s>` are dropped.

        Args:
            ids: int tensor [batch, time] (dense or ragged), e.g. a
                decoder's output or a batch's `target_outputs`.

        Returns:
            A string tensor [batch] of UTF-8 text.
        """
        ids = _pipeline.content_ids(ids, self.eos_id,
                                    (self.pad_id, self.bos_id))
        return self._make_tokenizer().detokenize(ids)

    def normalize(self, text):
        """The text `detokenize(tokenize(text))` gives back (Python str).

        Needs the `sentencepiece` package.
        """
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(
            model_proto=self.model_proto)
        # SentencePiece marks spaces (and the start) with U+2581, which
        # detokenization turns back into spaces.
        return processor.normalize(text).replace("\u2581", " ").strip(" ")

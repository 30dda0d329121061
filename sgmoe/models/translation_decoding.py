"""Greedy and beam decoding of the translation model, compiled once per
output length and input bucket; text-in/text-out translation."""

import numpy as np
from keras import ops

from sgmoe import _validation
from sgmoe.models import beam_search as search
from sgmoe.models.buckets import batch_bucket
from sgmoe.models.buckets import multiple_bucket
from sgmoe.models.stateless_function import stateless_function

PADDING_ID = 0


class TranslationDecoding:
    """`greedy_decode`, `beam_search` and `translate` for an
    encoder-decoder model.

    A mixin of `MoETranslationModel`, which provides what the search
    needs: `encode(source_ids, training)` -> (memory, mask),
    `attention.memory_keys(memory)`, `decode_step(token_ids, state,
    memory, mask, keys)` -> (log-probabilities, state),
    `_zero_decoder_state(batch_size)`, `bos_id`, `eos_id`, a dict
    `_decoders` (the compiled searches, one per output length, kind and
    options) and a `vocabulary` attribute (None, or the vocabulary
    `translate` uses by default). The searches read the model's
    variables and change none (the MoE statistics included; see
    `stateless_function`). Source batches are padded to a power-of-two
    number of rows (filler rows are the sentence `</s>`) and a multiple of
    8 positions, so each search is traced once per such bucket, never per
    batch.
    """

    def greedy_decode(self, source_ids, max_length=None, jit_compile=True):
        """Greedy decoding of a batch of source sentences.

        Args:
            source_ids: int [batch, S], padded with 0.
            max_length: static output length (end token included); None
                means 2 * S.
            jit_compile: compile the whole search with XLA.

        Returns:
            A dict of NumPy arrays: "token_ids" [batch, max_length] (end
            token included, 0 after it), "log_probs" [batch] (their total
            log-probability) and "lengths" [batch].
        """
        return self._decode("greedy", source_ids, max_length, jit_compile)

    def beam_search(self, source_ids, beam_width=4, length_penalty=0.6,
                    max_length=None, return_all_beams=False,
                    jit_compile=True):
        """Beam search with GNMT's length penalty (see `beam_search` in
        `sgmoe.models.beam_search`).

        Args:
            source_ids: int [batch, S], padded with 0.
            beam_width: hypotheses kept per sentence.
            length_penalty: alpha of lp(Y) = ((5 + |Y|) / 6) ** alpha; the
                score is log P(Y | X) / lp(Y). 0 ranks by log-probability.
            max_length: static output length (end token included); None
                means 2 * S.
            return_all_beams: return all `beam_width` finished hypotheses,
                best first, instead of the best one.
            jit_compile: compile the whole search with XLA.

        Returns:
            A dict of NumPy arrays: "token_ids" [batch, max_length],
            "scores", "log_probs" and "lengths" [batch] (with
            `return_all_beams`: [batch, beam_width, max_length] and [batch,
            beam_width]).
        """
        return self._decode("beam", source_ids, max_length, jit_compile,
                            beam_width=beam_width,
                            length_penalty=float(length_penalty),
                            return_all_beams=bool(return_all_beams))

    def translate(self, texts, vocabulary=None, beam_width=4,
                  length_penalty=0.6, batch_size=64, max_source_length=256,
                  jit_compile=True):
        """Translations of source sentences: text in, text out.

        `sgmoe.evaluation.translate_lines` with this model: each sentence
        is tokenized with the shared vocabulary and ended with `</s>`; the
        sentences are sorted by length, decoded in batches of
        `batch_size` padded to a multiple of 16 pieces (one compiled
        search per length bucket), and detokenized. A translation has at
        most twice its source's pieces (`</s>` included); sources longer
        than `max_source_length` pieces are cut there. Greedy translations
        (beam_width=1) do not depend on how sentences are batched.

        Args:
            texts: a source sentence (str) or a list of them.
            vocabulary: the `sgmoe.data.SubwordVocabulary` the model was
                trained with; None uses the model's `vocabulary`
                attribute. Its `<s>` and `</s>` ids must be the model's
                `bos_id` and `eos_id`.
            beam_width: hypotheses kept per sentence; 1 decodes greedily
                (`greedy_decode`), more with `beam_search`.
            length_penalty: GNMT's alpha of `beam_search`.
            batch_size: sentences decoded at once.
            max_source_length: longer sources are cut to this many pieces.
            jit_compile: compile the search with XLA.

        Returns:
            The translation (str) of `texts`, or a list of them in the
            order of `texts`.

        Example:

        >>> vocabulary = SubwordVocabulary.train(
        ...     ["data/ding.de-en.valid.de.gz", "data/ding.de-en.valid.en.gz"],
        ...     vocabulary_size=400)
        >>> model = MoETranslationModel.from_preset(
        ...     "tiny", vocabulary_size=len(vocabulary),
        ...     bos_id=vocabulary.bos_id, eos_id=vocabulary.eos_id)
        >>> model.vocabulary = vocabulary
        >>> translations = model.translate(["Das Haus ist alt.", "Ja."],
        ...                                beam_width=2)
        >>> [type(text).__name__ for text in translations]
        ['str', 'str']
        """
        from sgmoe.evaluation.translate_lines import translate_lines

        if vocabulary is None:
            vocabulary = getattr(self, "vocabulary", None)
        if vocabulary is None:
            raise ValueError(
                "Translating text needs a `vocabulary` (the model's "
                "SubwordVocabulary), given here or as the model's "
                "`vocabulary` attribute; received vocabulary=None.")
        single = isinstance(texts, str)
        lines = [texts] if single else list(texts)
        if not all(isinstance(line, str) for line in lines):
            raise ValueError(
                "`texts` must be a string or a list of strings, received "
                f"texts={texts!r}.")
        _validation.check_bool("jit_compile", jit_compile)
        translations = translate_lines(
            self, vocabulary, lines, batch_size=batch_size,
            beam_width=beam_width, length_penalty=length_penalty,
            max_source_length=max_source_length, jit_compile=jit_compile)
        return translations[0] if single else translations

    def _search(self, source_ids, kind, max_length, beam_width=1,
                length_penalty=0.0, return_all_beams=False):
        memory, mask = self.encode(source_ids, training=False)
        batch_size = ops.shape(source_ids)[0]
        if kind == "beam":
            memory, mask = (ops.repeat(memory, beam_width, axis=0),
                            ops.repeat(mask, beam_width, axis=0))
        keys = self.attention.memory_keys(memory)

        def step_fn(token_ids, state):
            return self.decode_step(token_ids, state, memory, mask, keys)

        state = self._zero_decoder_state(batch_size)
        if kind == "greedy":
            return search.greedy_search(
                step_fn, state, batch_size, max_length, self.bos_id,
                self.eos_id, padding_id=PADDING_ID)
        return search.beam_search(
            step_fn, state, batch_size, beam_width, max_length,
            self.bos_id, self.eos_id, length_penalty=length_penalty,
            padding_id=PADDING_ID, return_all_beams=return_all_beams)

    def _decode(self, kind, source_ids, max_length, jit_compile, **options):
        if not self.built:
            self.build()
        source_ids = ops.convert_to_numpy(source_ids)
        if source_ids.ndim != 2 or source_ids.dtype.kind not in "iu":
            raise ValueError(
                "`source_ids` must be int [batch, source_length], received "
                f"{source_ids.dtype} of shape {source_ids.shape}.")
        batch_size, source_length = source_ids.shape
        if max_length is None:
            max_length = 2 * source_length
        # Padded to a bucket of rows and of source positions, so the
        # compiled search is traced once per bucket, not once per batch.
        # Filler rows are the one-token sentence `eos_id`.
        padded = np.zeros((batch_bucket(batch_size),
                           multiple_bucket(source_length, 8)), "int32")
        padded[:, 0] = self.eos_id
        padded[:batch_size, :source_length] = source_ids
        key = (kind, max_length, bool(jit_compile),
               tuple(sorted(options.items())))
        if key not in self._decoders:
            self._decoders[key] = self._make_decoder(
                kind, max_length, bool(jit_compile), options)
        outputs = self._decoders[key](ops.convert_to_tensor(padded))
        return {name: ops.convert_to_numpy(value)[:batch_size]
                for name, value in outputs.items()}

    def _make_decoder(self, kind, max_length, jit_compile, options):
        """A function source_ids -> outputs that leaves the model's
        variables (the MoE statistics) untouched."""

        def search_fn(source_ids):
            return self._search(source_ids, kind, max_length, **options)

        return stateless_function(self, search_fn, jit_compile)


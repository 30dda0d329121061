"""Greedy and beam decoding of the translation model, compiled once per
output length."""

import keras
from keras import ops

from sgmoe.models import beam_search as search

PADDING_ID = 0


class TranslationDecoding:
    """`greedy_decode` and `beam_search` for an encoder-decoder model.

    A mixin of `MoETranslationModel`, which provides what the search
    needs: `encode(source_ids, training)` -> (memory, mask),
    `attention.memory_keys(memory)`, `decode_step(token_ids, state,
    memory, mask, keys)` -> (log-probabilities, state),
    `_zero_decoder_state(batch_size)`, `bos_id`, `eos_id`, and a dict
    `_decoders` (the compiled searches, one per output length, kind and
    options). The searches read the model's variables and change none
    (the MoE statistics included): on JAX under a `StatelessScope` with
    the variables' values as inputs, on TensorFlow in a `tf.function`
    under a `StatelessScope`.
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
        source_ids = ops.convert_to_tensor(source_ids, "int32")
        if len(source_ids.shape) != 2:
            raise ValueError(
                "`source_ids` must be [batch, source_length], received "
                f"shape {tuple(source_ids.shape)}.")
        if max_length is None:
            max_length = 2 * int(source_ids.shape[1])
        key = (kind, max_length, bool(jit_compile),
               tuple(sorted(options.items())))
        if key not in self._decoders:
            self._decoders[key] = self._make_decoder(
                kind, max_length, bool(jit_compile), options)
        outputs = self._decoders[key](source_ids)
        return {name: ops.convert_to_numpy(value)
                for name, value in outputs.items()}

    def _make_decoder(self, kind, max_length, jit_compile, options):
        """A function source_ids -> outputs that leaves the model's
        variables (the MoE statistics) untouched."""

        def search_fn(source_ids):
            return self._search(source_ids, kind, max_length, **options)

        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            def stateless(variable_values, source_ids):
                with keras.StatelessScope(state_mapping=list(
                        zip(self.variables, variable_values))):
                    return search_fn(source_ids)

            compiled = jax.jit(stateless) if jit_compile else stateless
            return lambda source_ids: compiled(
                [v.value for v in self.variables], source_ids)
        if backend == "tensorflow":
            import tensorflow as tf

            def scoped(source_ids):
                with keras.StatelessScope():
                    return search_fn(source_ids)

            return tf.function(scoped, jit_compile=jit_compile)

        def scoped_eager(source_ids):
            with keras.StatelessScope():
                return search_fn(source_ids)

        return scoped_eager

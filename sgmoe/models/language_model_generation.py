"""Generation for the language model: prompts (token ids or text) continued
token by token, in one compiled loop per length and batch bucket."""

import numbers

import numpy as np
from keras import ops

from sgmoe import _validation
from sgmoe.models import samplers
from sgmoe.models.attention_decoder_cell import state_sizes
from sgmoe.models.buckets import batch_bucket
from sgmoe.models.buckets import length_bucket
from sgmoe.models.stateless_function import stateless_function

# The logit of the padding id before sampling: it is never generated.
# Finite, so that a softmax over it never gives NaN.
NEGATIVE_LOGIT = -1e9


class LanguageModelGeneration:
    """`generate` for a recurrent language model.

    A mixin of `MoELanguageModel`, which provides `embedding`, `blocks`
    with their `layer_types` ("lstm" layers are a `keras.layers.RNN` or
    `LSTM`, whose `.cell` is stepped; the other layers act on each token
    alone), `softmax`, `vocabulary_size`, `padding_id`, a `vocabulary`
    attribute (None or the tokenizer of text prompts) and a dict
    `_generators` (the compiled loops, one per sampler configuration and
    bucket).

    Decoding carries a recurrent-state cache: each step feeds one token
    per row through the embedding, the LSTM cells (their states carried
    from step to step), the MoE and feed-forward layers (on that token
    only, as at inference: no dropout, no gating noise, nothing dropped)
    and the softmax, so a prefix is never computed again. The loop reads
    the model's variables and changes none (see `stateless_function`).
    """

    def initial_generation_state(self, batch_size):
        """The zero recurrent state: for each LSTM layer in order, its
        cell's states, each [batch_size, size]."""
        state = []
        for layer_type, layer in zip(self.layer_types, self.blocks):
            if layer_type == "lstm":
                state.extend(ops.zeros((batch_size, size), self.compute_dtype)
                             for size in state_sizes(layer.cell))
        return state

    def generation_step(self, token_ids, state):
        """One token per row through the model, the LSTM states carried.

        Inference: no dropout, no gating noise, and the MoE layers keep
        every token. Stepping through a sequence from
        `initial_generation_state` gives, position by position, the logits
        of the model's call on the whole sequence.

        Args:
            token_ids: int [N], each row's current token.
            state: the list `initial_generation_state(N)` or the previous
                step returned.

        Returns:
            (logits [N, V] float32 of each row's next token, the new
            state).
        """
        hidden, state = self._generation_hidden(token_ids, state)
        return ops.cast(self.softmax(hidden), "float32"), state

    def _generation_hidden(self, token_ids, state):
        x = self.embedding(ops.convert_to_tensor(token_ids, "int32"))
        new_state, position = [], 0
        for layer_type, layer in zip(self.layer_types, self.blocks):
            if layer_type == "lstm":
                size = len(state_sizes(layer.cell))
                output, layer_state = layer.cell(
                    x, list(state[position:position + size]), training=False)
                new_state.extend(layer_state)
                position += size
            else:
                output = layer(x, training=False)
            x = x + output
        return x, new_state

    def generate(self, prompts, max_length, sampler="greedy", seed=None,
                 eos_id=None, vocabulary=None, return_log_probs=False,
                 jit_compile=True):
        """Continues prompts up to `max_length` tokens.

        Each row starts from its prompt and adds one token per step, chosen
        by `sampler` from the model's next-token logits, until it has
        `max_length` tokens or has generated `eos_id`; the positions after
        it hold the padding id. The padding id (`padding_id` of the model,
        else the vocabulary's `pad_id`, else 0) is never generated.
        Prompts of different lengths share one batch: each is written
        right-padded into a [batch, max_length] buffer and, as in KerasHub,
        every position before the end of a row's prompt is that prompt's
        token, so a row's result does not depend on the other rows.

        Compilation: the buffer is padded to a power-of-two length (at
        least 16) and the batch to a power-of-two number of rows; the loop
        is compiled with XLA once per such bucket and sampler configuration
        and reused for every call that falls in it (other lengths, batch
        sizes, prompts, seeds and end ids).

        Args:
            prompts: token ids, a list of id sequences (any lengths) or an
                int array [batch, length] whose rows are right-padded with
                the padding id; one sequence of ids is one prompt. Or text:
                a string or a list of strings, tokenized with the
                vocabulary and started with its `bos_id` (a
                `WordVocabulary`, or anything with `encode`/`decode` or
                `tokenize`/`detokenize`, `bos_id` and `eos_id`).
            max_length: the length of each output, prompt included; at
                least the longest prompt.
            sampler: a `sgmoe.models.samplers.Sampler`, or its name
                ("greedy", "top_k", "top_p", "random") or config (see
                `sgmoe.models.samplers.get`).
            seed: an int: the draws of a random sampler are a function of
                it (the same call gives the same output); None: they come
                from the sampler's seed generator, which each call
                advances.
            eos_id: the token that ends a row; None means the vocabulary's
                `eos_id` when there is a vocabulary, else no end token.
            vocabulary: the tokenizer of text prompts; None uses the
                model's `vocabulary` attribute.
            return_log_probs: also return the log-probabilities of the
                generated tokens.
            jit_compile: compile the loop with XLA.

        Returns:
            For ids, int32 NumPy [batch, max_length] (or [max_length] for
            one prompt): the prompt, the generated tokens (`eos_id`
            included) and padding. For text, the decoded strings, prompt
            included (a string for one string). With `return_log_probs`,
            a dict of that ("token_ids" or "text") and NumPy
            "token_ids", "log_probs" (float32 [batch, max_length]: the
            natural-log probability of each generated token under the
            model's softmax at temperature 1, as in a teacher-forced pass;
            0 at prompt and padding positions) and "lengths" ([batch],
            tokens before the padding).

        Example:

        >>> model = MoELanguageModel.from_preset("tiny_moe")
        >>> prompts = [[1, 5, 7], [1, 9]]
        >>> token_ids = model.generate(prompts, max_length=6)
        >>> token_ids.shape
        (2, 6)
        >>> token_ids[0, :3].tolist(), token_ids[1, :2].tolist()
        ([1, 5, 7], [1, 9])
        >>> top_k = samplers.TopKSampler(k=4, temperature=0.8)
        >>> sampled = model.generate(prompts, max_length=6, sampler=top_k,
        ...                          seed=3)
        >>> again = model.generate(prompts, max_length=6, sampler=top_k,
        ...                        seed=3)
        >>> bool((sampled == again).all())
        True
        """
        if not self.built:
            self.build((None, None))
        max_length = _validation.check_positive_int("max_length", max_length)
        sampler = samplers.get(sampler)
        if seed is not None and (isinstance(seed, bool)
                                 or not isinstance(seed, numbers.Integral)):
            raise ValueError(
                f"`seed` must be None or an integer, received seed={seed!r}.")
        seed = None if seed is None else int(seed)
        _validation.check_bool("return_log_probs", return_log_probs)
        _validation.check_bool("jit_compile", jit_compile)
        if vocabulary is None:
            vocabulary = getattr(self, "vocabulary", None)
        padding_id = self._generation_padding_id(vocabulary)
        single, is_text, rows = _read_prompts(prompts, padding_id)
        if is_text:
            rows = _encode_text(vocabulary, rows, self.vocabulary_size)
        if eos_id is None and vocabulary is not None:
            eos_id = vocabulary.eos_id
        if eos_id is not None:
            self._check_token("eos_id", eos_id)
            if eos_id == padding_id:
                raise ValueError(
                    f"`eos_id` must differ from the padding id {padding_id}, "
                    f"received eos_id={eos_id}.")
            eos_id = int(eos_id)
        for row in rows:
            if row.min() < 0 or row.max() >= self.vocabulary_size:
                raise ValueError(
                    "`prompts` must hold token ids in [0, "
                    f"{self.vocabulary_size}), received {row.tolist()}.")
        longest = max(len(row) for row in rows)
        if longest > max_length:
            raise ValueError(
                f"`max_length` must be at least the longest prompt "
                f"({longest} tokens), received max_length={max_length}.")

        batch_size = len(rows)
        padded_rows = batch_bucket(batch_size)
        buffer_length = length_bucket(max_length)
        token_ids = np.full((padded_rows, buffer_length), padding_id,
                            "int32")
        prompt_lengths = np.zeros((padded_rows,), "int32")  # fillers: 0
        for i, row in enumerate(rows):
            token_ids[i, :len(row)] = row
            prompt_lengths[i] = len(row)
        uniform = sampler.draw_uniform((padded_rows, buffer_length), seed)
        key = (sampler._compile_key(), padded_rows, buffer_length,
               padding_id, jit_compile)
        if key not in self._generators:
            self._generators[key] = self._make_generator(
                sampler, padding_id, jit_compile)
        outputs = self._generators[key](
            ops.convert_to_tensor(token_ids),
            ops.convert_to_tensor(prompt_lengths),
            ops.convert_to_tensor(uniform, "float32"),
            ops.convert_to_tensor(max_length, "int32"),
            ops.convert_to_tensor(-1 if eos_id is None else eos_id, "int32"))
        token_ids, log_probs, lengths = (
            ops.convert_to_numpy(value)[:batch_size] for value in outputs)
        token_ids = token_ids[:, :max_length]
        log_probs = log_probs[:, :max_length]
        result = {"token_ids": token_ids, "log_probs": log_probs,
                  "lengths": lengths}
        if is_text:
            result["text"] = _decode_text(vocabulary, token_ids)
        if single:
            result = {name: value[0] for name, value in result.items()}
        if return_log_probs:
            return result
        return result["text" if is_text else "token_ids"]

    def _generation_padding_id(self, vocabulary):
        if self.padding_id is not None:
            return self.padding_id
        return int(getattr(vocabulary, "pad_id", 0))

    def _check_token(self, name, value):
        if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                or not 0 <= value < self.vocabulary_size):
            raise ValueError(
                f"`{name}` must be a token id in [0, {self.vocabulary_size}),"
                f" received {name}={value!r}.")

    def _make_generator(self, sampler, padding_id, jit_compile):
        def loop(token_ids, prompt_lengths, uniform, max_length, eos_id):
            return self._generation_loop(token_ids, prompt_lengths, uniform,
                                         max_length, eos_id, sampler,
                                         padding_id)

        return stateless_function(self, loop, jit_compile)

    def _generation_loop(self, token_ids, prompt_lengths, uniform,
                         max_length, eos_id, sampler, padding_id):
        """The compiled loop.

        Args:
            token_ids: int32 [B, L], the prompts right-padded with
                `padding_id`.
            prompt_lengths: int32 [B]; 0 marks a filler row.
            uniform: float32 [B, L], the sampler's draw for each position.
            max_length: int32 scalar <= L, the positions to fill.
            eos_id: int32 scalar, the end token (-1: none).

        Returns:
            (token_ids [B, L], log_probs [B, L], lengths [B]).
        """
        batch_size = ops.shape(token_ids)[0]
        is_padding = ops.equal(
            ops.arange(self.vocabulary_size, dtype="int32"), padding_id)
        no_log_probs = ops.zeros((batch_size,), "float32")

        def choose(hidden, emitting, prompt_tokens, draws):
            logits = ops.cast(self.softmax(hidden), "float32")
            sampled = sampler(ops.where(is_padding, NEGATIVE_LOGIT, logits),
                              draws)
            chosen = ops.where(emitting, sampled, prompt_tokens)
            log_probs = ops.take_along_axis(
                ops.log_softmax(logits, axis=-1),
                ops.expand_dims(chosen, -1), axis=-1)[:, 0]
            return chosen, ops.where(emitting, log_probs, 0.0)

        def cond(step, tokens, log_probs, lengths, finished, *state):
            return ops.logical_and(ops.less(step + 1, max_length),
                                   ops.logical_not(ops.all(finished)))

        def body(step, tokens, log_probs, lengths, finished, *state):
            hidden, state = self._generation_hidden(
                ops.take(tokens, step, axis=1), list(state))
            position = step + 1
            emitting = ops.logical_and(
                ops.greater_equal(position, prompt_lengths),
                ops.logical_not(finished))
            # The prompt's token, or padding after the prompt.
            prompt_tokens = ops.take(tokens, position, axis=1)
            chosen, chosen_log_probs = ops.cond(
                ops.any(emitting),
                lambda: choose(hidden, emitting, prompt_tokens,
                               ops.take(uniform, position, axis=1)),
                lambda: (prompt_tokens, no_log_probs))
            tokens = _write_column(tokens, position, chosen)
            log_probs = _write_column(log_probs, position, chosen_log_probs)
            lengths = lengths + ops.cast(emitting, "int32")
            finished = ops.logical_or(finished, ops.logical_and(
                emitting, ops.equal(chosen, eos_id)))
            return (position, tokens, log_probs, lengths, finished, *state)

        finished = ops.logical_or(ops.equal(prompt_lengths, 0),
                                  ops.greater_equal(prompt_lengths,
                                                    max_length))
        loop_vars = (
            ops.convert_to_tensor(0, "int32"),
            token_ids,
            ops.zeros(ops.shape(token_ids), "float32"),
            ops.minimum(prompt_lengths, max_length),
            finished,
            *self.initial_generation_state(batch_size),
        )
        _, tokens, log_probs, lengths, *_ = ops.while_loop(cond, body,
                                                           loop_vars)
        return tokens, log_probs, lengths


def _write_column(buffer, step, values):
    """buffer[:, step] = values [B], as a select (static shapes)."""
    column = ops.equal(ops.arange(ops.shape(buffer)[1], dtype="int32"), step)
    return ops.where(column, ops.expand_dims(values, -1), buffer)


def _read_prompts(prompts, padding_id):
    """(one prompt?, text?, the prompts: str or 1-D int arrays)."""
    if isinstance(prompts, str):
        return True, True, [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(
            isinstance(prompt, str) for prompt in prompts):
        return False, True, list(prompts)
    if isinstance(prompts, (list, tuple)) and prompts and all(
            isinstance(prompt, (list, tuple, np.ndarray))
            for prompt in prompts):
        single, rows = False, [np.asarray(prompt) for prompt in prompts]
    else:
        try:
            array = np.asarray(ops.convert_to_numpy(prompts))
        except (TypeError, ValueError):
            array = np.asarray([])
        if array.ndim == 1:
            single, rows = True, [array]
        elif array.ndim == 2:
            single, rows = False, [_strip_padding(row, padding_id)
                                   for row in array]
        else:
            single, rows = False, []
    if not rows or not all(
            row.ndim == 1 and row.size and np.issubdtype(row.dtype,
                                                         np.integer)
            for row in rows):
        raise ValueError(
            "`prompts` must be text (a string or a non-empty list of "
            "strings) or token ids (a non-empty sequence of ids, a list "
            "of them or an int array [batch, length]), each prompt at "
            f"least one token; received prompts={prompts!r}.")
    return single, False, [row.astype("int32") for row in rows]


def _strip_padding(row, padding_id):
    """A right-padded row without its trailing padding ids."""
    content = np.flatnonzero(row != padding_id)
    return row[:content[-1] + 1] if content.size else row[:0]


def _encode_text(vocabulary, texts, vocabulary_size):
    """Token ids of each text, `bos_id` first."""
    if vocabulary is None:
        raise ValueError(
            "Text prompts need a `vocabulary` (e.g. the WordVocabulary the "
            "model was trained with), given to `generate` or as the "
            "model's `vocabulary` attribute; received vocabulary=None.")
    encode = getattr(vocabulary, "encode", None) or getattr(
        vocabulary, "tokenize", None)
    if encode is None or not hasattr(vocabulary, "bos_id"):
        raise ValueError(
            "`vocabulary` must have `encode` (or `tokenize`) and `bos_id`, "
            f"received a {type(vocabulary).__name__}.")
    if len(vocabulary) > vocabulary_size:
        raise ValueError(
            f"`vocabulary` has {len(vocabulary)} tokens, more than the "
            f"model's vocabulary_size={vocabulary_size}.")
    ids = encode(texts).to_list()
    return [np.asarray([vocabulary.bos_id] + row, "int32") for row in ids]


def _decode_text(vocabulary, token_ids):
    decode = getattr(vocabulary, "decode", None) or vocabulary.detokenize
    return [text.decode("utf-8")
            for text in np.asarray(decode(token_ids)).tolist()]

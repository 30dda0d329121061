"""Translating sentences with a trained translation model."""

import math

import numpy as np

from sgmoe import _validation


def translate_lines(model, vocabulary, lines, *, batch_size=64,
                    beam_width=4, length_penalty=0.6, length_step=16,
                    max_source_length=256, jit_compile=True, print_fn=None):
    """Translates sentences with a `MoETranslationModel`, in their order.

    Sentences are tokenized with the shared `SubwordVocabulary`, ended with
    `</s>`, sorted by length and decoded in batches of `batch_size`, each
    padded to a multiple of `length_step` pieces (so the compiled decoder is
    reused across batches). A translation is at most twice as long as its
    source (in pieces, `</s>` included); greedy translations are thus the
    same however the sentences are batched. The last
    batch is filled up with one-token sentences, so every batch has the
    same shape. Sources longer than `max_source_length` pieces are cut
    there.

    Args:
        model: a built `sgmoe.models.MoETranslationModel`.
        vocabulary: the `sgmoe.data.SubwordVocabulary` it was trained with
            (its `<s>` and `</s>` ids must be the model's `bos_id` and
            `eos_id`).
        lines: source sentences (str).
        batch_size: sentences decoded at once.
        beam_width: hypotheses kept per sentence; 1 decodes greedily.
        length_penalty: GNMT's alpha for beam search.
        length_step: source lengths are padded to a multiple of this.
        max_source_length: longer sources are cut to this many pieces.
        jit_compile: compile the decoder with XLA.
        print_fn: if given, called with one progress line per batch.

    Returns:
        A list of translations (str), one per line, in the order of
        `lines`.
    """
    batch_size = _validation.check_positive_int("batch_size", batch_size)
    beam_width = _validation.check_positive_int("beam_width", beam_width)
    length_step = _validation.check_positive_int("length_step", length_step)
    max_source_length = _validation.check_positive_int(
        "max_source_length", max_source_length)
    if (model.bos_id, model.eos_id) != (vocabulary.bos_id,
                                          vocabulary.eos_id):
        raise ValueError(
            f"The model's bos_id / eos_id ({model.bos_id} / "
            f"{model.eos_id}) must be the vocabulary's <s> / </s> ids "
            f"({vocabulary.bos_id} / {vocabulary.eos_id}): build it with "
            "bos_id=vocabulary.bos_id, eos_id=vocabulary.eos_id.")
    lines = list(lines)
    if not lines:
        return []
    pieces = vocabulary.tokenize(lines).to_list()
    sources = [ids[:max_source_length - 1] + [vocabulary.eos_id]
               for ids in pieces]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    translations = [None] * len(sources)
    num_batches = math.ceil(len(order) / batch_size)
    for batch_index in range(num_batches):
        indices = order[batch_index * batch_size:(batch_index + 1)
                        * batch_size]
        length = length_step * math.ceil(
            max(len(sources[i]) for i in indices) / length_step)
        batch = np.zeros((batch_size, length), "int32")
        batch[:, 0] = vocabulary.eos_id  # filler rows: an empty sentence
        for row, i in enumerate(indices):
            batch[row, :len(sources[i])] = sources[i]
        if beam_width == 1:
            decoded = model.greedy_decode(batch, max_length=2 * length,
                                          jit_compile=jit_compile)
        else:
            decoded = model.beam_search(
                batch, beam_width=beam_width, length_penalty=length_penalty,
                max_length=2 * length, jit_compile=jit_compile)
        # Each translation is cut to twice its own source's length, so it
        # does not depend on the sentences it was batched with.
        token_ids = decoded["token_ids"].copy()
        for row, i in enumerate(indices):
            token_ids[row, 2 * len(sources[i]):] = 0
        texts = vocabulary.detokenize(token_ids).numpy()
        for row, i in enumerate(indices):
            translations[i] = texts[row].decode("utf-8")
        if print_fn is not None:
            print_fn(f"translated batch {batch_index + 1}/{num_batches} "
                     f"(source length {length})")
    return translations

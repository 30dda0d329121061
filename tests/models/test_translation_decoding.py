"""MoETranslationModel.translate (text in, text out) and the decoders'
compilation: once per bucket of rows and source positions."""

import logging

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.data import SubwordVocabulary
from sgmoe.models import MoETranslationModel
from sgmoe.models.stateless_function import stateless_function

SENTENCES = ["Das ist gut.", "Ja.", "Nein, danke."]
# Compiled with XLA on JAX (where an uncompiled loop is traced at every
# call); traced into a graph without XLA on TensorFlow, which is faster.
JIT = keras.backend.backend() == "jax"


@pytest.fixture(scope="module")
def vocabulary():
    return SubwordVocabulary.train(
        ["data/ding.de-en.valid.de.gz", "data/ding.de-en.valid.en.gz"],
        vocabulary_size=400, seed=0, num_threads=1)


@pytest.fixture(scope="module")
def model(vocabulary):
    model = MoETranslationModel.from_preset(
        "tiny", vocabulary_size=len(vocabulary), bos_id=vocabulary.bos_id,
        eos_id=vocabulary.eos_id, seed=3)
    model.build()
    return model


def id_path(model, vocabulary, sentences, beam_width):
    """translate_lines by hand: pieces and </s>, one batch of 4 rows
    padded to a multiple of 16 positions, decoded to twice that and cut
    at twice each source's length."""
    sources = [ids + [vocabulary.eos_id]
               for ids in vocabulary.tokenize(sentences).to_list()]
    width = 16 * -(-max(len(ids) for ids in sources) // 16)
    batch = np.zeros((4, width), "int32")
    batch[:, 0] = vocabulary.eos_id
    for row, ids in enumerate(sources):
        batch[row, :len(ids)] = ids
    if beam_width == 1:
        decoded = model.greedy_decode(batch, max_length=2 * width,
                                      jit_compile=JIT)
    else:
        decoded = model.beam_search(batch, beam_width=beam_width,
                                    length_penalty=0.0, max_length=2 * width,
                                    jit_compile=JIT)
    token_ids = decoded["token_ids"].copy()
    for row, ids in enumerate(sources):
        token_ids[row, 2 * len(ids):] = 0
    texts = vocabulary.detokenize(token_ids).numpy()
    return [text.decode("utf-8") for text in texts[:len(sentences)]]


def test_translate_equals_the_id_path(model, vocabulary):
    translations = model.translate(SENTENCES, vocabulary, beam_width=1,
                                   batch_size=4, jit_compile=JIT)
    assert translations == id_path(model, vocabulary, SENTENCES, 1)
    assert len(set(translations)) > 1  # untrained, still input-dependent
    # The model's vocabulary attribute is the default; one string in,
    # one string out.
    model.vocabulary = vocabulary
    try:
        assert model.translate(SENTENCES[1], beam_width=1, batch_size=4,
                               jit_compile=JIT) == translations[1]
        beams = model.translate(SENTENCES, beam_width=2, batch_size=4,
                                length_penalty=0.0, jit_compile=JIT)
    finally:
        model.vocabulary = None
    assert beams == id_path(model, vocabulary, SENTENCES, 2)


@pytest.mark.parametrize("arguments, name", [
    ({}, "vocabulary"),
    ({"vocabulary": "v", "texts": [1, 2]}, "texts"),
    ({"vocabulary": "v", "jit_compile": "yes"}, "jit_compile"),
])
def test_translate_bad_arguments(model, vocabulary, arguments, name):
    if arguments.get("vocabulary") == "v":
        arguments["vocabulary"] = vocabulary
    arguments = dict({"texts": SENTENCES}, **arguments)
    with pytest.raises(ValueError, match=f"`{name}`"):
        model.translate(**arguments)


def test_decoder_traced_once_per_bucket(model):
    traces = []
    search = model._search

    def counted(*args, **kwargs):
        traces.append(1)
        return search(*args, **kwargs)

    model._search = counted
    try:
        rows = np.random.RandomState(0).randint(4, 300, size=(4, 5))
        rows[:, -1] = model.eos_id
        three = model.greedy_decode(rows[:3], max_length=9,
                                    jit_compile=JIT)
        # 4 rows and 7 source positions (a padded batch): the same bucket
        # of rows (4) and positions (8), one trace, the same translations.
        padded = np.zeros((4, 7), "int32")
        padded[:, :5] = rows
        four = model.greedy_decode(padded, max_length=9, jit_compile=JIT)
        assert len(traces) == 1
        for name in ("token_ids", "log_probs", "lengths"):
            np.testing.assert_allclose(four[name][:3], three[name],
                                       atol=1e-5)
        assert three["token_ids"].shape == (3, 9)
        model.greedy_decode(np.tile(rows, (2, 1)), max_length=9,
                            jit_compile=JIT)  # 8 rows
        assert len(traces) == 2
    finally:
        del model._search


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="TensorFlow's retracing warning")
def test_one_trace_per_function_gives_no_retracing_warning():
    """Functions traced once each, however many, are not 'retracing'."""
    import tensorflow as tf

    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    tf.get_logger().addHandler(handler)
    try:
        for rows in range(1, 8):  # one function per shape, like buckets
            function = stateless_function(layer, layer, jit_compile=False)
            function(ops.ones((rows, 3)))
            function(ops.ones((rows, 3)))
        once_each = list(messages)
        retraced = stateless_function(layer, layer, jit_compile=False)
        for rows in range(1, 8):  # one function, a new shape each call
            retraced(ops.ones((rows, 3)))
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [m for m in once_each if "retracing" in m]
    # The warning itself still works.
    assert [m for m in messages if "retracing" in m]

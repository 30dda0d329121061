"""MoETranslationModel: attention against NumPy, masking, decoding, training,
saving and presets (tiny presets only are built)."""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import HierarchicalMixtureOfExperts
from sgmoe.layers import MixtureOfExperts
from sgmoe.layers import StrictlyBalancedRouter
from sgmoe.models import MoETranslationModel
from sgmoe.models import TanhProductAttention
from sgmoe.models import beam_search as search
from sgmoe.models import count_translation_parameters

ROOT = pathlib.Path(__file__).resolve().parents[2]
START, END = 1, 2
# Two sentences padded with 0 to length 6.
SOURCE = np.array([[5, 6, 7, 8, 2, 0], [9, 4, 2, 0, 0, 0]], "int32")
TARGET_INPUT = np.array([[1, 8, 7, 6, 5], [1, 4, 9, 0, 0]], "int32")


# XLA-compiled decoding is fast to compile on JAX, slow on TensorFlow's
# CPU: tests compile it there once (the width-4 beam search below).
JIT = keras.backend.backend() == "jax"


def logits_of(model, source, target_input):
    """Inference logits; compiled on JAX, whose op-by-op calls are slow."""
    if keras.backend.backend() == "jax":
        return np.asarray(model.predict((source, target_input), verbose=0,
                                        batch_size=len(source)))
    return ops.convert_to_numpy(model((source, target_input),
                                      training=False))




def log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def teacher_forced_log_probs(model, source, tokens):
    """log P(tokens | source), summed up to and including the end token,
    by one teacher-forced pass: independent of the decoder's incremental
    step."""
    target_input = np.concatenate(
        [np.full((len(tokens), 1), START), tokens[:, :-1]], axis=1)
    log_probs = log_softmax(logits_of(model, source, target_input))
    chosen = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    return (chosen * (tokens != 0)).sum(axis=1)


def tiny_model(preset="tiny", **overrides):
    model = MoETranslationModel.from_preset(preset, seed=7, **overrides)
    model.build()
    return model


def randomize(model, scale=0.5, seed=0):
    """The same random weights on every backend, gates included (they start
    at zero), large enough for peaked next-token distributions."""
    rng = np.random.RandomState(seed)
    for weight in model.trainable_weights:
        weight.assign(scale * rng.randn(*weight.shape).astype("float32"))


# Attention (Appendix G).


def test_attention_matches_numpy():
    """A(x_i, y) = sum_d V_d tanh((x_i U)_d) tanh((y W)_d), softmax over the
    unmasked source positions, context = weighted sum of the memory."""
    rng = np.random.RandomState(0)
    attention = TanhProductAttention(attention_dim=8)
    query = rng.randn(2, 3, 16).astype("float32")  # [batch, T, d]
    memory = rng.randn(2, 5, 12).astype("float32")  # [batch, S, d_mem]
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    context, weights = attention(query, memory, memory_mask=mask,
                                 return_attention_scores=True)
    u = ops.convert_to_numpy(attention.memory_kernel)
    w = ops.convert_to_numpy(attention.query_kernel)
    v = ops.convert_to_numpy(attention.score_vector)
    assert u.shape == (12, 8) and w.shape == (16, 8) and v.shape == (8,)

    expected_scores = np.zeros((2, 3, 5))
    for b in range(2):
        for t in range(3):
            for i in range(5):
                expected_scores[b, t, i] = sum(
                    v[d] * np.tanh(memory[b, i] @ u[:, d])
                    * np.tanh(query[b, t] @ w[:, d]) for d in range(8))
    scores = ops.convert_to_numpy(attention.scores(
        query, attention.memory_keys(memory)))
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)

    masked = np.where(mask[:, None, :], expected_scores, -np.inf)
    expected_weights = np.exp(masked - masked.max(-1, keepdims=True))
    expected_weights /= expected_weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(ops.convert_to_numpy(weights),
                               expected_weights, rtol=1e-5, atol=1e-6)
    assert np.all(ops.convert_to_numpy(weights)[1, :, 3:] == 0)
    np.testing.assert_allclose(ops.convert_to_numpy(context),
                               expected_weights @ memory, rtol=1e-5,
                               atol=1e-5)
    # One decoder step: a [batch, d] query gives [batch, d_mem].
    step_context = attention(query[:, 1], memory, memory_mask=mask)
    np.testing.assert_allclose(ops.convert_to_numpy(step_context),
                               (expected_weights @ memory)[:, 1], rtol=1e-5,
                               atol=1e-5)


# Architecture.


def test_shapes_layers_and_parameter_count():
    model = tiny_model()
    assert logits_of(model, SOURCE, TARGET_INPUT).shape == (2, 5, 32)
    moes = model.moe_layers()
    assert [m.name for m in moes] == ["encoder_moe", "decoder_moe"]
    for moe in moes:
        assert isinstance(moe, MixtureOfExperts)
        assert isinstance(moe.router, StrictlyBalancedRouter)
        assert (moe.num_experts, moe.k, moe.expert_hidden_dim) == (4, 2, 32)
        assert moe.output_activation is keras.activations.sigmoid
    assert model.attention.attention_dim == 16
    assert [layer.name for layer in model.encoder_lstms] == [
        "encoder_lstm_1", "encoder_lstm_2", "encoder_lstm_3"]
    assert isinstance(model.encoder_lstms[0], keras.layers.Bidirectional)
    built = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert built == count_translation_parameters(model)["total"] == 22392


def test_source_padding_does_not_change_outputs():
    """Extra padding after the source changes nothing (masked LSTMs,
    masked attention, MoEs that drop nothing); real tokens there do."""
    model = tiny_model()
    expected = logits_of(model, SOURCE, TARGET_INPUT)
    padded = np.pad(SOURCE, ((0, 0), (0, 3)))
    np.testing.assert_allclose(logits_of(model, padded, TARGET_INPUT),
                               expected, rtol=1e-5, atol=1e-5)
    filled = np.where(padded == 0, 9, padded)
    assert np.abs(logits_of(model, filled, TARGET_INPUT) - expected).max() > (
        1e-3)


def test_pyramid_and_hierarchical_configurations():
    """Per-layer MoE configurations: DeepSpeed's pyramid (more experts in
    the later MoE) and the hierarchical MoE, counted without building."""
    pyramid = MoETranslationModel.from_preset("tiny_pyramid")
    assert (pyramid.encoder_moe_layer.num_experts,
            pyramid.decoder_moe_layer.num_experts) == (4, 8)
    mixed = MoETranslationModel.from_preset(
        "tiny", encoder_moe={"expert_groups": 2, "experts_per_group": 4,
                             "expert_hidden_dim": 8},
        decoder_moe={"num_experts": 16, "k": 4, "expert_hidden_dim": 8})
    assert isinstance(mixed.encoder_moe_layer, HierarchicalMixtureOfExperts)
    assert mixed.encoder_moe_layer.num_experts == 8
    assert mixed.decoder_moe_layer.num_experts == 16
    assert (mixed.decoder_moe_layer.router.__class__.__name__
            == "NoisyTopKRouter")
    assert count_translation_parameters(pyramid)["experts"] == (
        (4 + 8) * (16 * 32 * 2 + 32 + 16))
    pyramid.build()
    built = sum(int(np.prod(w.shape)) for w in pyramid.trainable_weights)
    assert built == count_translation_parameters(pyramid)["total"]


def test_paper_presets_construct_and_count():
    """The paper's configurations, constructed but never built."""
    expected_experts = {"gnmt_baseline": 0, "moe_32": 2 * 32,
                        "moe_512_h": 2 * 512, "moe_2048_h": 2 * 2048}
    per_expert = 512 * 2048 + 2048 * 512  # "2M parameters" (Appendix E)
    for name, experts in expected_experts.items():
        model = MoETranslationModel.from_preset(name)
        assert not model.built
        counts = count_translation_parameters(name)
        assert counts["experts"] == experts * per_expert
        assert counts["total"] == sum(
            value for key, value in counts.items() if key != "total")
        if experts:
            assert model.encoder_moe_layer.num_experts == experts // 2
    moe_32 = MoETranslationModel.from_preset("moe_32")
    assert moe_32.encoder_moe_layer.k == 4
    assert isinstance(moe_32.decoder_moe_layer.router, StrictlyBalancedRouter)
    moe_2048 = MoETranslationModel.from_preset("moe_2048_h")
    assert (moe_2048.decoder_moe_layer.k_primary,
            moe_2048.decoder_moe_layer.k_secondary) == (2, 2)
    # The paper's "8.7B" parameters for its MoE-2048 translation models.
    assert 8.6e9 < count_translation_parameters("moe_2048_h")["total"] < 8.8e9
    assert sorted(MoETranslationModel.presets()) == sorted(
        ["gnmt_baseline", "moe_32", "moe_512_h", "moe_2048_h", "tiny",
         "tiny_h", "tiny_pyramid", "tiny_baseline", "small_moe",
         "small_baseline"])
    small = count_translation_parameters("small_moe")
    baseline = count_translation_parameters("small_baseline")
    # Two MoEs of 16 experts 128 -> 256 -> 128 (with biases) and gates.
    assert small["total"] - baseline["total"] == 2 * (
        16 * (128 * 256 + 256 + 256 * 128 + 128) + 2 * 128 * 16)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="encoder_layers"):
        MoETranslationModel(32, model_dim=16, encoder_layers=1)
    with pytest.raises(ValueError, match="decoder_moe"):
        MoETranslationModel(32, model_dim=16, decoder_moe={"experts": 4})
    with pytest.raises(ValueError, match="eos_id"):
        MoETranslationModel(32, model_dim=16, eos_id=32)
    with pytest.raises(ValueError, match="even"):
        MoETranslationModel(32, model_dim=15, lstm_units=16)
    with pytest.raises(ValueError, match="Unknown preset"):
        MoETranslationModel.from_preset("moe_64")


# Decoding.


def markov_step(table):
    """A step function whose next-token distribution depends on the last
    token only: log-probabilities `table[last]`."""
    logits = ops.convert_to_tensor(np.log(np.maximum(table, 1e-30)),
                                   "float32")

    def step_fn(token_ids, state):
        return ops.take(logits, token_ids, axis=0), state

    return step_fn


# Tokens: 0 padding, 1 start, 2 end, 3 "a". After the start: end 0.4,
# "a" 0.6; after "a": end 0.6, "a" 0.4.
MARKOV = np.array([[0, 0, 1.0, 0], [0, 0, 0.4, 0.6], [0, 0, 1.0, 0],
                   [0, 0, 0.6, 0.4]])


def test_length_penalty_factor():
    """lp(Y) = ((5 + |Y|) / 6) ** alpha and scores log P / lp: alpha = 0
    prefers the likelier short sentence, alpha = 1 the longer one."""
    np.testing.assert_allclose(
        ops.convert_to_numpy(search.length_penalty_factor(np.array([1, 3, 10]),
                                                   0.6)),
        ((5 + np.array([1, 3, 10])) / 6) ** 0.6, rtol=1e-6)
    assert float(search.length_penalty_factor(7, 0.0)) == 1.0

    step_fn = markov_step(MARKOV)
    state = ops.zeros((1, 1))
    short = np.log(0.4)  # [end]
    long = np.log(0.6) + np.log(0.6)  # [a, end]
    assert short > long and short < long / (7 / 6)

    raw = search.beam_search(step_fn, state, 1, 2, 6, START, END,
                             length_penalty=0.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(raw["token_ids"]),
                                  [[2, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(ops.convert_to_numpy(raw["scores"]), [short],
                               rtol=1e-5)
    normalised = search.beam_search(step_fn, state, 1, 2, 6, START, END,
                                    length_penalty=1.0,
                                    return_all_beams=True)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(normalised["token_ids"])[0, :, :3],
        [[3, 2, 0], [2, 0, 0]])
    np.testing.assert_allclose(ops.convert_to_numpy(normalised["scores"]),
                               [[long / (7 / 6), short / 1.0]], rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(normalised["log_probs"]),
                               [[long, short]], rtol=1e-5)
    # Greedy takes "a" first, and ends with a lower log-probability.
    greedy = search.greedy_search(step_fn, state, 1, 6, START, END)
    np.testing.assert_array_equal(ops.convert_to_numpy(greedy["token_ids"]),
                                  [[3, 2, 0, 0, 0, 0]])
    np.testing.assert_allclose(ops.convert_to_numpy(greedy["log_probs"]),
                               [long], rtol=1e-5)


def test_beam_width_one_is_greedy_and_beam_scores_higher():
    """On the tiny model: a width-1 beam is greedy (any length penalty);
    a width-4 beam finds sentences at least as likely as greedy's, more
    likely for some, and every returned log-probability equals the one a
    teacher-forced pass gives the returned tokens."""
    model = tiny_model()
    randomize(model)
    rng = np.random.RandomState(3)
    source = rng.randint(3, 32, (6, 5)).astype("int32")
    source[:, -1] = END
    source[1, 3:] = 0
    statistics = ops.convert_to_numpy(model.decoder_moe_layer.expert_load)

    greedy = model.greedy_decode(source, max_length=7, jit_compile=JIT)
    narrow = model.beam_search(source, beam_width=1, length_penalty=0.6,
                               max_length=7, jit_compile=JIT)
    np.testing.assert_array_equal(narrow["token_ids"], greedy["token_ids"])
    np.testing.assert_allclose(narrow["log_probs"], greedy["log_probs"],
                               rtol=1e-5, atol=1e-5)
    lengths = greedy["lengths"]
    np.testing.assert_allclose(
        narrow["scores"],
        greedy["log_probs"] / ((5.0 + lengths) / 6.0) ** 0.6, rtol=1e-5)

    beam = model.beam_search(source, beam_width=4, length_penalty=0.0,
                             max_length=7, jit_compile=True)
    # Decoding leaves the MoE statistics alone.
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model.decoder_moe_layer.expert_load), statistics)
    for result in (greedy, beam):
        np.testing.assert_allclose(
            teacher_forced_log_probs(model, source, result["token_ids"]),
            result["log_probs"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(beam["scores"], beam["log_probs"], rtol=1e-6)
    assert np.all(beam["log_probs"] >= greedy["log_probs"] - 1e-5)
    assert np.any(beam["log_probs"] > greedy["log_probs"] + 1e-3)


def copy_task(num_examples, length, seed):
    """Random sentences of tokens 3..10; the target is the source."""
    sentences = np.random.RandomState(seed).randint(3, 11,
                                                    (num_examples, length))
    end = np.full((num_examples, 1), END)
    source = np.concatenate([sentences, end], axis=1).astype("int32")
    target_input = np.concatenate(
        [np.full((num_examples, 1), START), sentences], axis=1)
    return source, target_input.astype("int32"), source.copy()


def test_fit_copy_task_and_greedy_decode():
    """jit-compiled fit on a copy task: the loss falls clearly and greedy
    decoding then copies sentences."""
    source, target_input, target = copy_task(256, 4, seed=0)
    model = MoETranslationModel.from_preset("tiny", seed=1)
    # The metric is the cross-entropy alone; the loss adds the MoE losses.
    model.compile(optimizer=keras.optimizers.Adam(0.03), jit_compile=True,
                  metrics=[keras.metrics.SparseCategoricalCrossentropy(
                      from_logits=True, name="cross_entropy")])
    history = model.fit((source, target_input), target, batch_size=32,
                        epochs=60, verbose=0).history
    first, last = history["cross_entropy"][0], history["cross_entropy"][-1]
    assert last < 0.25 * first, (first, last)
    assert history["loss"][-1] > last
    # The balancing losses were part of the training loss.
    assert float(model.encoder_moe_layer.auxiliary_losses[
        "batchwise_threshold_loss"]) != 0.0

    decoded = model.greedy_decode(source[:32], max_length=6,
                                  jit_compile=JIT)
    tokens = decoded["token_ids"][:, :5]
    token_accuracy = (tokens == target[:32]).mean()
    copied = (tokens == target[:32]).all(axis=1).mean()
    assert token_accuracy > 0.5 and copied > 0.1, (token_accuracy, copied)


# Saving.

LOAD_SCRIPT = """
import sys
import keras
import numpy as np
import sgmoe.models.moe_translation_model  # registers the classes

path, inputs_path, outputs_path = sys.argv[1:4]
inputs = np.load(inputs_path)
model = keras.saving.load_model(path, safe_mode=True)
logits = model.predict((inputs["source"], inputs["target_input"]),
                       verbose=0)
np.savez(outputs_path, logits=logits,
         config=str(sorted(model.get_config().items())))
"""


@pytest.mark.subprocess
def test_keras_save_and_reload_in_fresh_process(tmp_path):
    model = tiny_model("tiny_h")
    # Random gates too, so that a round trip that lost any weight shows.
    randomize(model)
    built = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert built == count_translation_parameters(model)["total"]
    expected = logits_of(model, SOURCE, TARGET_INPUT)
    path = tmp_path / "translation.keras"
    model.save(path)
    np.savez(tmp_path / "inputs.npz", source=SOURCE,
             target_input=TARGET_INPUT)

    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(),
               PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(path),
         str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5,
                               atol=1e-5)
    assert str(outputs["config"]) == str(sorted(model.get_config().items()))


def test_preset_directory_round_trip_and_summary(tmp_path):
    model = tiny_model("tiny_pyramid")
    randomize(model)
    expected = logits_of(model, SOURCE, TARGET_INPUT)
    model.save_to_preset(str(tmp_path / "preset"))
    restored = MoETranslationModel.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(logits_of(restored, SOURCE, TARGET_INPUT),
                               expected, rtol=1e-5, atol=1e-5)
    printed = []
    model.summary(print_fn=lambda text, **kwargs: printed.append(text))
    moe_lines = printed[-1].splitlines()
    assert moe_lines[0] == "Mixture-of-Experts layers:"
    # The pyramid: 4 experts in the encoder's MoE, 8 in the decoder's.
    assert [" 4 experts" in moe_lines[1], " 8 experts" in moe_lines[2]] == [
        True, True]

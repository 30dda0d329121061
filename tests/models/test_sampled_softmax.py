"""SampledSoftmax: exact logits, and the importance-sampled loss against the
exact cross-entropy."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.models import SampledSoftmax
from sgmoe.models.sampled_softmax import log_uniform_probability
from tests.models import numpy_reference as ref

VOCABULARY, DIM, TOKENS = 40, 8, 10


def built_layer(**kwargs):
    layer = SampledSoftmax(VOCABULARY, seed=7, **kwargs)
    layer.build((None, DIM))
    rng = np.random.RandomState(0)
    layer.kernel.assign(0.5 * rng.randn(VOCABULARY, DIM).astype("float32"))
    layer.bias.assign(0.5 * rng.randn(VOCABULARY).astype("float32"))
    return layer


def hidden_and_targets(seed=1):
    rng = np.random.RandomState(seed)
    return (rng.randn(TOKENS, DIM).astype("float32"),
            rng.randint(0, VOCABULARY, (TOKENS,)))


def exact_losses(layer, hidden, targets):
    logits = hidden @ ops.convert_to_numpy(layer.kernel).T + (
        ops.convert_to_numpy(layer.bias))
    log_probs = ref.log_softmax(logits.astype(np.float64))
    return -log_probs[np.arange(len(targets)), targets]


def gradient_wrt_hidden(loss_fn, hidden):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        hidden = tf.constant(hidden)
        with tf.GradientTape() as tape:
            tape.watch(hidden)
            loss = loss_fn(hidden)
        return np.asarray(tape.gradient(loss, hidden))
    import jax

    return np.asarray(jax.jit(jax.grad(loss_fn))(hidden))


def test_call_gives_exact_logits():
    layer = built_layer()
    hidden, targets = hidden_and_targets()
    logits = ops.convert_to_numpy(layer(hidden.reshape(2, 5, DIM)))
    assert logits.shape == (2, 5, VOCABULARY)
    expected = hidden @ ops.convert_to_numpy(layer.kernel).T + (
        ops.convert_to_numpy(layer.bias))
    np.testing.assert_allclose(logits.reshape(TOKENS, -1), expected,
                               rtol=1e-5, atol=1e-5)


def test_all_words_sampled_once_gives_exact_loss_and_gradient():
    """Uniform without replacement, S = V: every word is a candidate with
    expected count 1, the target's own candidate is removed as an
    accidental hit, and the loss is the exact cross-entropy."""
    layer = built_layer(num_sampled=VOCABULARY, candidate_sampler="uniform")
    hidden, targets = hidden_and_targets()
    candidates = layer.sample_candidates()
    ids = ops.convert_to_numpy(candidates[0])
    assert sorted(ids.tolist()) == list(range(VOCABULARY))
    np.testing.assert_allclose(ops.convert_to_numpy(candidates[1]), 1.0)
    losses = ops.convert_to_numpy(layer.sampled_loss(
        hidden.reshape(2, 5, DIM), targets.reshape(2, 5), candidates))
    assert losses.shape == (2, 5)
    np.testing.assert_allclose(losses.reshape(-1),
                               exact_losses(layer, hidden, targets),
                               rtol=1e-5)

    def sampled(h):
        return ops.mean(layer.sampled_loss(h, targets, candidates))

    def exact(h):
        return ops.mean(keras.losses.sparse_categorical_crossentropy(
            targets, layer(h), from_logits=True))

    np.testing.assert_allclose(gradient_wrt_hidden(sampled, hidden),
                               gradient_wrt_hidden(exact, hidden),
                               rtol=1e-4, atol=1e-6)


def test_partition_estimate_is_unbiased_and_loss_converges():
    """Log-uniform draws with replacement: E[exp(loss)] = exp(exact loss)
    (Z_hat is unbiased), and the loss itself approaches the exact one as S
    grows (its Jensen gap shrinks)."""
    hidden, targets = hidden_and_targets(seed=2)
    exact = exact_losses(built_layer(), hidden, targets)
    layer = built_layer(num_sampled=30)
    draws = np.stack([ops.convert_to_numpy(layer.sampled_loss(
        hidden, targets)) for _ in range(150)])
    ratio = np.exp(draws).mean(axis=0) / np.exp(exact)
    np.testing.assert_allclose(ratio.mean(), 1.0, atol=0.05)
    assert np.abs(ratio - 1.0).max() < 0.2

    many = built_layer(num_sampled=100000)
    gaps = [np.abs(ops.convert_to_numpy(many.sampled_loss(hidden, targets))
                   - exact).mean() for _ in range(3)]
    assert max(gaps) < 0.02
    small_gap = np.abs(draws.mean(axis=0) - exact).mean()
    assert max(gaps) < small_gap


def test_log_uniform_sampler_draws_zipfian_ids():
    layer = SampledSoftmax(10, num_sampled=50000, seed=3)
    ids, expected = layer.sample_candidates()
    ids = ops.convert_to_numpy(ids)
    q = np.array([math.log((c + 2) / (c + 1)) / math.log(11)
                  for c in range(10)])
    np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.bincount(ids, minlength=10) / len(ids), q,
                               atol=0.01)
    np.testing.assert_allclose(ops.convert_to_numpy(expected),
                               50000 * q[ids], rtol=1e-5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(log_uniform_probability(np.arange(10), 10)), q,
        rtol=1e-5)


def test_arguments_and_config():
    with pytest.raises(ValueError, match="candidate_sampler"):
        SampledSoftmax(10, num_sampled=5, candidate_sampler="zipf")
    with pytest.raises(ValueError, match="at most vocabulary_size"):
        SampledSoftmax(10, num_sampled=11, candidate_sampler="uniform")
    with pytest.raises(ValueError, match="num_sampled=None"):
        built_layer().sample_candidates()
    layer = SampledSoftmax(10, num_sampled=5, candidate_sampler="uniform",
                           seed=1)
    assert SampledSoftmax.from_config(layer.get_config()).get_config() == (
        layer.get_config())


def test_configs_saved_with_the_former_name_sampler_load():
    config = SampledSoftmax(10, num_sampled=5,
                            candidate_sampler="uniform").get_config()
    config["sampler"] = config.pop("candidate_sampler")
    assert SampledSoftmax.from_config(config).candidate_sampler == "uniform"
    from sgmoe.models import MoELanguageModel

    config = MoELanguageModel.from_preset(
        "tiny_moe", candidate_sampler="uniform", num_sampled=8).get_config()
    config["sampler"] = config.pop("candidate_sampler")
    model = MoELanguageModel.from_config(config)
    assert model.candidate_sampler == model.softmax.candidate_sampler
    assert model.candidate_sampler == "uniform"

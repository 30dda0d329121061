"""Token samplers against NumPy: the tokens each can choose, and how often."""

import numpy as np
import pytest
from keras import ops

from sgmoe.models import samplers
from sgmoe.models.samplers.sampler import sample_from_weights

ROWS, VOCABULARY = 4, 12
# u = (i + 0.5) / DRAWS for i < DRAWS: every quantile of [0, 1) once, so
# the count of each token is its probability * DRAWS, to rounding.
DRAWS = 2000


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


def random_logits(seed=0, rows=ROWS, scale=2.0):
    return scale * np.random.RandomState(seed).randn(
        rows, VOCABULARY).astype("float32")


def counts_over_quantiles(sampler, logits_row):
    """How often `sampler` picks each token when u runs over [0, 1)."""
    logits = np.repeat(logits_row[None], DRAWS, axis=0)
    uniform = (np.arange(DRAWS) + 0.5) / DRAWS
    chosen = ops.convert_to_numpy(sampler(logits, uniform))
    return np.bincount(chosen, minlength=VOCABULARY) / DRAWS


def top_k_probabilities(probabilities, k):
    kept = np.zeros_like(probabilities)
    top = np.argsort(-probabilities)[:k]
    kept[top] = probabilities[top]
    return kept / kept.sum()


def nucleus_probabilities(probabilities, p):
    order = np.argsort(-probabilities)
    before = np.cumsum(probabilities[order]) - probabilities[order]
    kept = np.zeros_like(probabilities)
    kept[order[before < p]] = probabilities[order[before < p]]
    return kept / kept.sum()


def test_inverse_cdf_draws_each_index_by_its_weight():
    weights = np.array([[0.0, 3.0, 0.0, 1.0, 4.0, 0.0]] * DRAWS, "float32")
    uniform = (np.arange(DRAWS) + 0.5) / DRAWS
    chosen = ops.convert_to_numpy(sample_from_weights(weights, uniform))
    frequencies = np.bincount(chosen, minlength=6) / DRAWS
    np.testing.assert_allclose(frequencies, weights[0] / 8.0, atol=1e-3)
    # u at the top of [0, 1), and u * total rounded up to the total: the
    # last positive weight, never the zero weights after it.
    edge = ops.convert_to_numpy(sample_from_weights(
        weights[:2], np.array([0.0, 1.0], "float32")))
    assert edge.tolist() == [1, 4]


def test_greedy_is_the_argmax_at_any_temperature():
    logits = random_logits()
    for temperature in (1.0, 0.3, 5.0):
        chosen = samplers.GreedySampler(temperature=temperature)(logits)
        np.testing.assert_array_equal(ops.convert_to_numpy(chosen),
                                      logits.argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_k_draws_from_the_k_most_probable(temperature):
    logits = random_logits(1)
    sampler = samplers.TopKSampler(k=3, temperature=temperature)
    for row in logits:
        probabilities = softmax(row / temperature)
        expected = top_k_probabilities(probabilities, 3)
        frequencies = counts_over_quantiles(sampler, row)
        assert set(np.flatnonzero(frequencies)) <= set(
            np.argsort(-probabilities)[:3])
        np.testing.assert_allclose(frequencies, expected, atol=2e-3)


@pytest.mark.parametrize("p, k", [(0.5, None), (0.9, None), (0.9, 2)])
def test_top_p_draws_from_the_nucleus(p, k):
    logits = random_logits(2)
    sampler = samplers.TopPSampler(p=p, k=k, temperature=0.8)
    for row in logits:
        probabilities = softmax(row / 0.8)
        cut = probabilities
        if k is not None:  # only the k most probable can be kept
            cut = np.where(probabilities >= np.sort(probabilities)[-k],
                           probabilities, 0.0)
        expected = nucleus_probabilities(cut, p)
        frequencies = counts_over_quantiles(sampler, row)
        assert set(np.flatnonzero(frequencies)) <= set(
            np.flatnonzero(expected))
        np.testing.assert_allclose(frequencies, expected, atol=2e-3)
    # The most probable token alone once it reaches p.
    peaked = np.log(np.array([0.05, 0.8, 0.15], "float32"))
    chosen = samplers.TopPSampler(p=0.5)(np.stack([peaked] * 50),
                                         np.linspace(0, 0.99, 50))
    assert set(ops.convert_to_numpy(chosen).tolist()) == {1}


def test_random_sampler_draws_from_the_tempered_softmax():
    row = random_logits(3)[0]
    for temperature in (1.0, 2.0):
        frequencies = counts_over_quantiles(
            samplers.RandomSampler(temperature=temperature), row)
        np.testing.assert_allclose(frequencies, softmax(row / temperature),
                                   atol=2e-3)


def test_temperature_near_zero_is_greedy():
    logits = random_logits(4, rows=64)
    uniform = np.random.RandomState(5).uniform(size=64)
    for sampler in (samplers.TopKSampler(k=4, temperature=1e-4),
                    samplers.TopPSampler(p=0.9, temperature=1e-4),
                    samplers.RandomSampler(temperature=1e-4)):
        np.testing.assert_array_equal(
            ops.convert_to_numpy(sampler(logits, uniform)),
            logits.argmax(-1))


def test_seeds_reproduce_and_differ():
    first = samplers.TopKSampler(k=3, seed=7)
    again = samplers.TopKSampler(k=3, seed=7)
    other = samplers.TopKSampler(k=3, seed=8)
    draws = [ops.convert_to_numpy(s.draw_uniform((3, 20)))
             for s in (first, again, other)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.allclose(draws[0], draws[2])
    assert ((draws[0] >= 0) & (draws[0] < 1)).all()
    # The generator advances: the next draw is new.
    assert not np.allclose(draws[0],
                           ops.convert_to_numpy(first.draw_uniform((3, 20))))
    # An explicit seed gives the same numbers whatever the sampler's state.
    np.testing.assert_array_equal(
        ops.convert_to_numpy(first.draw_uniform((3, 20), seed=11)),
        ops.convert_to_numpy(other.draw_uniform((3, 20), seed=11)))
    # Greedy draws nothing.
    assert not ops.convert_to_numpy(
        samplers.GreedySampler().draw_uniform((2, 3), seed=1)).any()


def test_get_serialize_and_deserialize():
    assert isinstance(samplers.get("greedy"), samplers.GreedySampler)
    assert samplers.get("top_k").k == 5
    assert samplers.get("top_p").p == 0.1
    sampler = samplers.TopPSampler(p=0.8, k=10, seed=3, temperature=0.5)
    assert samplers.get(sampler) is sampler
    for config in (samplers.serialize(sampler),
                   {"class_name": "top_p", "config": sampler.get_config()}):
        restored = samplers.get(config)
        assert type(restored) is samplers.TopPSampler
        assert restored.get_config() == {"p": 0.8, "k": 10, "seed": 3,
                                         "temperature": 0.5}
    restored = samplers.deserialize(samplers.serialize(
        samplers.RandomSampler(seed=1, temperature=2.0)))
    assert restored.get_config() == {"seed": 1, "temperature": 2.0}


@pytest.mark.parametrize("make, name", [
    (lambda: samplers.GreedySampler(temperature=0.0), "temperature"),
    (lambda: samplers.RandomSampler(temperature=-1.0), "temperature"),
    (lambda: samplers.TopKSampler(k=0), "k"),
    (lambda: samplers.TopKSampler(k=2.5), "k"),
    (lambda: samplers.TopPSampler(p=0.0), "p"),
    (lambda: samplers.TopPSampler(p=1.5), "p"),
    (lambda: samplers.TopPSampler(p=0.5, k=0), "k"),
    (lambda: samplers.TopKSampler(seed="one"), "seed"),
    (lambda: samplers.get("beam"), "sampler"),
    (lambda: samplers.get({"class_name": "top_k",
                           "config": {"k": -1}}), "sampler"),
    (lambda: samplers.get(3), "sampler"),
])
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        make()

"""FactoredAdam against a NumPy transcription of Appendix D."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import MixtureOfExperts
from sgmoe.optimizers import FactoredAdam


def numpy_factored_adam(weight, gradients, lr=0.1, beta_2=0.999, eps=1e-8):
    """Row/column averages of g^2, outer product / mean, bias-corrected."""
    w = weight.astype(np.float64).copy()
    rows = np.zeros(w.shape[:-1])
    cols = np.zeros(w.shape[:-2] + w.shape[-1:])
    for t, g in enumerate(gradients, start=1):
        g2 = g.astype(np.float64) ** 2
        rows = beta_2 * rows + (1 - beta_2) * g2.mean(axis=-1)
        cols = beta_2 * cols + (1 - beta_2) * g2.mean(axis=-2)
        v = (rows[..., :, None] * cols[..., None, :]
             / rows.mean(axis=-1)[..., None, None])
        w -= lr * g / (np.sqrt(v / (1 - beta_2 ** t)) + eps)
    return w


def numpy_adam(weight, gradients, lr=0.1, beta_1=0.0, beta_2=0.999, eps=1e-8):
    w = weight.astype(np.float64).copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(gradients, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g.astype(np.float64) ** 2
        m_hat = m / (1 - beta_1 ** t) if beta_1 else g
        w -= lr * m_hat / (np.sqrt(v / (1 - beta_2 ** t)) + eps)
    return w


def apply_steps(optimizer, variables, gradient_steps):
    for gradients in gradient_steps:
        optimizer.apply_gradients(
            [(ops.convert_to_tensor(g), v)
             for g, v in zip(gradients, variables)])
    return [ops.convert_to_numpy(v) for v in variables]


def test_two_steps_match_reference():
    rng = np.random.RandomState(0)
    shapes = {"matrix": (3, 4), "experts": (2, 3, 5), "vector": (4,)}
    initial = {n: rng.randn(*s).astype("float32") for n, s in shapes.items()}
    variables = [keras.Variable(initial[n], name=n) for n in shapes]
    steps = [[rng.randn(*shapes[n]).astype("float32") for n in shapes]
             for _ in range(2)]
    optimizer = FactoredAdam(learning_rate=0.1, beta_2=0.9)
    result = dict(zip(shapes, apply_steps(optimizer, variables, steps)))
    for i, name in enumerate(shapes):
        grads = [step[i] for step in steps]
        if name == "vector":
            expected = numpy_adam(initial[name], grads, beta_2=0.9)
        else:
            expected = numpy_factored_adam(initial[name], grads, beta_2=0.9)
        np.testing.assert_allclose(result[name], expected, rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_factored_estimate_differs_from_full_adam():
    """The test above could not pass with a full second moment."""
    rng = np.random.RandomState(1)
    w = rng.randn(3, 4)
    grads = [rng.randn(3, 4) * np.array([[1.0], [10.0], [0.1]])
             for _ in range(2)]
    assert np.abs(numpy_factored_adam(w, grads)
                  - numpy_adam(w, grads)).max() > 1e-3


def test_expert_only_mode_gives_plain_adam_elsewhere():
    rng = np.random.RandomState(2)
    expert = keras.Variable(rng.randn(2, 3, 4).astype("float32"),
                            name="kernel_in")
    dense = keras.Variable(rng.randn(3, 4).astype("float32"), name="dense")
    initial = [ops.convert_to_numpy(v) for v in (expert, dense)]
    steps = [[rng.randn(2, 3, 4).astype("float32"),
              rng.randn(3, 4).astype("float32")] for _ in range(3)]
    optimizer = FactoredAdam(learning_rate=0.05, factored_variables="kernel_in",
                             adam_beta_1=0.9)
    result = apply_steps(optimizer, [expert, dense], steps)
    np.testing.assert_allclose(
        result[0], numpy_factored_adam(initial[0], [s[0] for s in steps],
                                       lr=0.05), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        result[1], numpy_adam(initial[1], [s[1] for s in steps], lr=0.05,
                              beta_1=0.9), rtol=1e-5, atol=1e-6)
    assert optimizer.is_factored(expert) and not optimizer.is_factored(dense)


def state_size(optimizer):
    return sum(int(np.prod(v.shape)) for v in optimizer.variables
               if len(v.shape) > 0)


def test_state_is_under_one_percent_of_an_expert_kernel():
    kernel = keras.Variable(np.zeros((64, 512, 1024), "float32"),
                            name="kernel_in")
    optimizer = FactoredAdam()
    optimizer.build([kernel])
    kernel_size = 64 * 512 * 1024
    assert state_size(optimizer) <= 0.01 * kernel_size
    assert state_size(optimizer) == 64 * 512 + 64 * 1024
    assert all(tuple(v.shape) != tuple(kernel.shape)
               for v in optimizer.variables)


def small_model():
    inputs = keras.Input((5, 16))
    hidden = keras.layers.Dense(16)(inputs)
    hidden = hidden + MixtureOfExperts(4, 24, k=2, seed=0, name="moe")(hidden)
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


def test_keras_round_trip_keeps_optimizer_state(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randn(32, 5, 16).astype("float32")
    y = rng.randn(32, 5, 1).astype("float32")
    model = small_model()
    model.compile(optimizer=FactoredAdam(1e-2, factored_variables="experts/"),
                  loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert isinstance(restored.optimizer, FactoredAdam)
    assert restored.optimizer.get_config() == model.optimizer.get_config()
    before = [ops.convert_to_numpy(v) for v in model.optimizer.variables]
    after = [ops.convert_to_numpy(v) for v in restored.optimizer.variables]
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a).max() > 0 for a in before if a.ndim > 0)


def test_config_round_trip():
    optimizer = FactoredAdam(2e-3, beta_2=0.99, epsilon=1e-6,
                             factored_variables="experts/", adam_beta_1=0.8)
    clone = FactoredAdam.from_config(optimizer.get_config())
    assert clone.get_config() == optimizer.get_config()


@pytest.mark.parametrize("kwargs, argument", [
    (dict(beta_2=1.0), "beta_2"),
    (dict(beta_2=-0.1), "beta_2"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(adam_beta_1=1.5), "adam_beta_1"),
    (dict(factored_variables="experts/("), "factored_variables"),
])
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        FactoredAdam(**kwargs)


def brown_windows(num_windows, length=20, vocab_size=1000):
    """The first windows of the bundled training text, as word ids."""
    import collections
    import gzip
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "data",
                        "brown.train.txt.gz")
    words = []
    with gzip.open(path, "rt", encoding="utf-8") as text:
        for line in text:
            words.extend(["<S>"] + line.split())
            if len(words) > num_windows * length + 1:
                break
    vocabulary = {w: i + 1 for i, (w, _) in enumerate(
        collections.Counter(words).most_common(vocab_size - 1))}
    ids = np.array([vocabulary.get(w, 0) for w in words], "int32")
    ids = ids[:num_windows * length + 1]
    return (ids[:-1].reshape(num_windows, length),
            ids[1:].reshape(num_windows, length))


def train_language_model(optimizer, x, y):
    keras.utils.set_random_seed(3)
    tokens = keras.Input((x.shape[1],), dtype="int32")
    hidden = keras.layers.Embedding(1000, 48)(tokens)
    hidden = keras.layers.LSTM(48, return_sequences=True)(hidden)
    hidden = hidden + MixtureOfExperts(8, 48, k=2, seed=0,
                                       output_activation="sigmoid")(hidden)
    logits = keras.layers.Dense(1000)(hidden)
    model = keras.Model(tokens, logits)
    model.compile(optimizer=optimizer, jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    model.fit(x[:-320], y[:-320], batch_size=32, epochs=1, verbose=0,
              shuffle=False)
    return model.evaluate(x[-320:], y[-320:], verbose=0)


def test_trains_a_moe_language_model_as_well_as_adam():
    x, y = brown_windows(32 * 120 + 320)
    adam = train_language_model(keras.optimizers.Adam(3e-3), x, y)
    factored = train_language_model(FactoredAdam(3e-3), x, y)
    # Both learn (untrained loss is log(1000) = 6.9) ...
    assert adam < 5.5
    # ... and the factored update stays within 3% of Adam's held-out loss.
    assert factored < 1.03 * adam, (factored, adam)

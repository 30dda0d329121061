"""ProjectedLSTMCell and DeepFeedForward against NumPy, and a .keras round
trip of every sgmoe.models layer in a functional model."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.models import DeepFeedForward
from sgmoe.models import ProjectedLSTMCell
from sgmoe.models import SampledSoftmax
from tests.models import numpy_reference as ref


def test_projected_lstm_cell_matches_numpy():
    cell = ProjectedLSTMCell(12, 5)
    lstm = keras.layers.RNN(cell, return_sequences=True)
    x = np.random.RandomState(0).randn(2, 6, 7).astype("float32")
    outputs = ops.convert_to_numpy(lstm(x))
    assert outputs.shape == (2, 6, 5)
    assert tuple(cell.recurrent_kernel.shape) == (5, 48)
    # Forget-gate biases start at 1.
    np.testing.assert_array_equal(ops.convert_to_numpy(cell.bias)[12:24], 1.0)
    expected = ref.lstm(x, *(ops.convert_to_numpy(w) for w in (
        cell.kernel, cell.recurrent_kernel, cell.bias,
        cell.projection_kernel)))
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)


def test_deep_feed_forward_matches_numpy():
    network = DeepFeedForward(hidden_dim=9, num_hidden_layers=4,
                              output_activation="sigmoid")
    x = np.random.RandomState(1).randn(2, 3, 6).astype("float32")
    network.build(x.shape)
    kernels = [ops.convert_to_numpy(w) for w in network.kernels]
    assert [k.shape for k in kernels] == [(6, 9), (9, 9), (9, 9), (9, 9),
                                          (9, 6)]
    rng = np.random.RandomState(2)
    for bias in network.biases:
        bias.assign(rng.randn(*bias.shape).astype("float32"))
    outputs = ops.convert_to_numpy(network(x))
    expected = ref.sigmoid(ref.feed_forward(
        x, kernels, [ops.convert_to_numpy(b) for b in network.biases]))
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        DeepFeedForward(8, num_hidden_layers=0)


def test_layers_round_trip_through_a_keras_file(tmp_path):
    inputs = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(20, 8)(inputs)
    x = keras.layers.RNN(ProjectedLSTMCell(16, 8), return_sequences=True)(x)
    x = DeepFeedForward(12, num_hidden_layers=2)(x)
    outputs = SampledSoftmax(20, num_sampled=5)(x)
    model = keras.Model(inputs, outputs)
    ids = np.random.RandomState(3).randint(0, 20, (2, 4))
    expected = ops.convert_to_numpy(model(ids))
    model.save(tmp_path / "layers.keras")
    restored = keras.models.load_model(tmp_path / "layers.keras",
                                       safe_mode=True)
    np.testing.assert_allclose(ops.convert_to_numpy(restored(ids)), expected,
                               rtol=1e-6, atol=1e-6)
    assert [type(layer).__name__ for layer in restored.layers[2:]] == [
        "RNN", "DeepFeedForward", "SampledSoftmax"]
    assert isinstance(restored.layers[2].cell, ProjectedLSTMCell)

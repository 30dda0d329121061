"""grouped_matmul: a buffer's batched matmul plus blocks of overflow rows,
each with its own expert's weights, against NumPy (values and gradients);
grouped_feed_forward, the fused expert network, against two of them."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers._grouped_matmul import Blocks
from sgmoe.layers._grouped_matmul import grouped_feed_forward
from sgmoe.layers._grouped_matmul import grouped_matmul
from tests.layers.test_expert_matmul import value_and_grads

NUM_EXPERTS, CAPACITY, IN_DIM, OUT_DIM, BLOCK = 3, 2, 5, 4, 3
# Overflow rows 0-3 belong to expert 0 and rows 4-5 to expert 2; rows 6-8
# are padding. Blocks: (expert 0, rows 0-2), (0, row 3), (2, rows 4-5);
# the table's last two entries are past the count.
ROW_EXPERT = np.array([0, 0, 0, 0, 2, 2])
BLOCK_TABLES = {"expert": [0, 0, 2, 1, 1], "start": [0, 3, 4, 0, 0],
                "length": [3, 1, 2, 0, 0]}


def blocks():
    return Blocks(**{name: ops.convert_to_tensor(np.array(values, "int32"))
                     for name, values in BLOCK_TABLES.items()},
                  count=ops.convert_to_tensor(np.int32(3)), size=BLOCK)


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("capacity", [CAPACITY, 70])
def test_value_and_gradients_match_numpy(jit, capacity):
    # Capacity 70 takes expert_matmul's automatic-differentiation layout.
    rng = np.random.RandomState(capacity)
    inputs = rng.randn(NUM_EXPERTS, capacity, IN_DIM).astype("float32")
    rows = rng.randn(6 + BLOCK, IN_DIM).astype("float32")
    kernel = rng.randn(NUM_EXPERTS, IN_DIM, OUT_DIM).astype("float32")
    upstream = rng.randn(NUM_EXPERTS, capacity, OUT_DIM).astype("float32")
    row_upstream = rng.randn(6 + BLOCK, OUT_DIM).astype("float32")
    row_upstream[6:] = 0.0  # callers read only the rows of blocks

    def weighted_sum(x, r, w):
        outputs, row_outputs = grouped_matmul(x, r, w, blocks())
        return (ops.sum(outputs * upstream)
                + ops.sum(row_outputs * row_upstream))

    value, (inputs_grad, rows_grad, kernel_grad) = value_and_grads(
        weighted_sum, inputs, rows, kernel, jit=jit)

    row_kernels = kernel[ROW_EXPERT]  # [6, a, b]
    row_outputs = np.einsum("ra,rab->rb", rows[:6], row_kernels)
    np.testing.assert_allclose(
        value, np.sum(np.matmul(inputs, kernel) * upstream)
        + np.sum(row_outputs * row_upstream[:6]), rtol=1e-5)
    np.testing.assert_allclose(
        inputs_grad, np.matmul(upstream, kernel.transpose(0, 2, 1)),
        rtol=1e-5, atol=1e-5)
    expected_rows_grad = np.zeros_like(rows)
    expected_rows_grad[:6] = np.einsum("rb,rab->ra", row_upstream[:6],
                                       row_kernels)
    np.testing.assert_allclose(rows_grad, expected_rows_grad, rtol=1e-5,
                               atol=1e-5)
    expected_kernel_grad = np.matmul(inputs.transpose(0, 2, 1), upstream)
    for row, expert in enumerate(ROW_EXPERT):
        expected_kernel_grad[expert] += np.outer(rows[row], row_upstream[row])
    np.testing.assert_allclose(kernel_grad, expected_kernel_grad, rtol=1e-5,
                               atol=1e-5)


def test_no_blocks_is_the_batched_matmul():
    rng = np.random.RandomState(0)
    inputs = rng.randn(NUM_EXPERTS, CAPACITY, IN_DIM).astype("float32")
    kernel = rng.randn(NUM_EXPERTS, IN_DIM, OUT_DIM).astype("float32")
    empty = blocks()._replace(count=ops.convert_to_tensor(np.int32(0)))
    outputs, row_outputs = grouped_matmul(
        inputs, np.zeros((BLOCK, IN_DIM), "float32"), kernel, empty)
    np.testing.assert_allclose(ops.convert_to_numpy(outputs),
                               np.matmul(inputs, kernel), rtol=1e-5)
    np.testing.assert_array_equal(ops.convert_to_numpy(row_outputs), 0.0)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("rematerialize", [False, True])
@pytest.mark.parametrize("jit", [True, False])
def test_fused_feed_forward_matches_two_grouped_matmuls(activation,
                                                        rematerialize, jit):
    activation_fn = keras.activations.get(activation)
    hidden_dim = 6
    rng = np.random.RandomState(7)
    inputs = rng.randn(NUM_EXPERTS, CAPACITY, IN_DIM).astype("float32")
    rows = rng.randn(6 + BLOCK, IN_DIM).astype("float32")
    weights = [rng.randn(*shape).astype("float32") for shape in (
        (NUM_EXPERTS, IN_DIM, hidden_dim), (NUM_EXPERTS, hidden_dim, OUT_DIM),
        (NUM_EXPERTS, hidden_dim), (NUM_EXPERTS, OUT_DIM))]
    upstream = rng.randn(NUM_EXPERTS, CAPACITY, OUT_DIM).astype("float32")
    row_upstream = rng.randn(6 + BLOCK, OUT_DIM).astype("float32")
    row_upstream[6:] = 0.0
    row_expert = ops.convert_to_tensor(
        np.concatenate([ROW_EXPERT, np.full(BLOCK, 2)]).astype("int32"))

    def weighted_sum(outputs, row_outputs):
        return (ops.sum(outputs * upstream)
                + ops.sum(row_outputs * row_upstream))

    def fused(x, r, kernel_in, kernel_out, bias_in, bias_out):
        return weighted_sum(*grouped_feed_forward(
            x, r, (kernel_in, kernel_out, bias_in, bias_out), blocks(),
            activation_fn, rematerialize=rematerialize))

    def unfused(x, r, kernel_in, kernel_out, bias_in, bias_out):
        hidden, row_hidden = grouped_matmul(x, r, kernel_in, blocks())
        hidden = activation_fn(hidden + ops.expand_dims(bias_in, 1))
        row_hidden = activation_fn(
            row_hidden + ops.take(bias_in, row_expert, axis=0))
        outputs, row_outputs = grouped_matmul(hidden, row_hidden, kernel_out,
                                              blocks())
        return weighted_sum(
            outputs + ops.expand_dims(bias_out, 1),
            row_outputs + ops.take(bias_out, row_expert, axis=0))

    value, grads = value_and_grads(fused, inputs, rows, *weights, jit=jit)
    expected, expected_grads = value_and_grads(unfused, inputs, rows,
                                               *weights, jit=jit)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for name, grad, expected_grad in zip(
            ("inputs", "rows", "kernel_in", "kernel_out", "bias_in",
             "bias_out"), grads, expected_grads):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-4,
                                   atol=1e-4, err_msg=name)

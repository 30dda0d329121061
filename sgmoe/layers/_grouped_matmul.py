"""The experts' grouped matmul: a capacity buffer plus overflow rows.

`grouped_matmul(inputs, rows, kernel, blocks)` multiplies

* an [E, C, a] buffer by [E, a, b] expert weights, one batched matmul
  (its gradient laid out as `expert_matmul`'s), and
* overflow rows [R, a], sorted by expert, by the weights of their expert:
  `blocks` cuts them into blocks of at most `blocks.size` rows of one
  expert, and a loop whose trip count is the number of blocks actually used
  multiplies each block by its expert's [a, b] slice of the weights.

This is dropless dispatch in XLA terms (MegaBlocks' grouped GEMM, Gale et
al. 2022): every shape is static, the rows computed are the buffer's E * C
plus the overflow actually present (rounded up to blocks), and no expert's
weights are gathered into a [blocks, a, b] copy. Each block reads its
expert's weights in place; the gradient adds each block's weight gradient
into the buffer's weight gradient in place, so no second [E, a, b]
gradient is ever summed.
"""

from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from sgmoe.layers._expert_matmul import matmul_gradients


class Blocks(NamedTuple):
    """Blocks of overflow rows that belong to one expert each.

    Attributes:
        expert: int32 [M], the expert of each block.
        start: int32 [M], its first row.
        length: int32 [M], its number of rows, 1 to `size` for the first
            `count` blocks.
        count: int32 scalar, the blocks in use (blocks past it are ignored).
        size: static int, the most rows in a block. The rows buffer must
            have at least `size` rows after the last block's start: a block
            is read and written as a window of `size` rows.
    """

    expert: Any
    start: Any
    length: Any
    count: Any
    size: int


# Windows and expert slices are read with gathers, not `ops.slice`: under
# XLA, TensorFlow's Slice takes its start as a compile-time constant and
# recompiles for every new start.


def _window(values, start, size):
    """values[start:start + size] for a tensor start (values is [R, a])."""
    return ops.take(values, start + ops.arange(size, dtype="int32"), axis=0)


def _expert_slice(values, expert):
    """values[expert] for a tensor expert (values is [E, ...])."""
    return ops.take(values, expert, axis=0)


def _add_to_expert(values, expert, update):
    """values [E, ...] with `update` added to values[expert], in place."""
    start = (expert,) + (0,) * (len(values.shape) - 1)
    return ops.slice_update(
        values, start,
        ops.expand_dims(_expert_slice(values, expert) + update, 0))


def _rows_forward(rows, kernel, blocks):
    """rows [R, a] -> [R, b], block i multiplied by kernel[blocks.expert[i]].

    Blocks are written in order as whole windows: rows of a window past the
    block's end belong to the next block (or to no block), which overwrites
    them later, so every row of a block ends up with its own expert's
    product.
    """
    def body(i, outputs):
        start = blocks.start[i]
        product = ops.matmul(_window(rows, start, blocks.size),
                             _expert_slice(kernel, blocks.expert[i]))
        return ops.slice_update(outputs, (start, 0), product)

    outputs = ops.zeros((ops.shape(rows)[0], kernel.shape[2]), rows.dtype)
    return ops.fori_loop(0, blocks.count, body, outputs)


def _rows_backward(rows, kernel, blocks, upstream, kernel_grad):
    """Adds the blocks' gradients: (rows gradient [R, a], kernel_grad)."""
    row_index = ops.arange(blocks.size, dtype="int32")

    def body(i, carry):
        rows_grad, kernel_grad = carry
        start, expert = blocks.start[i], blocks.expert[i]
        # Rows of the window past the block's end are another block's.
        in_block = ops.expand_dims(ops.less(row_index, blocks.length[i]), 1)
        block_upstream = ops.where(
            in_block, _window(upstream, start, blocks.size), 0.0)
        weights = _expert_slice(kernel, expert)
        block_inputs = _window(rows, start, blocks.size)
        kernel_grad = _add_to_expert(
            kernel_grad, expert,
            ops.matmul(ops.transpose(block_inputs), block_upstream))
        rows_grad = ops.slice_update(
            rows_grad, (start, 0),
            ops.matmul(block_upstream, ops.transpose(weights)))
        return rows_grad, kernel_grad

    return ops.fori_loop(0, blocks.count, body,
                         (ops.zeros_like(rows), kernel_grad))


def grouped_matmul(inputs, rows, kernel, blocks):
    """(inputs [E, C, a] @ kernel, rows [R, a] @ kernel[block expert]).

    Returns ([E, C, b], [R, b]). Rows in no block get unspecified values
    and no gradient; callers read only the rows of blocks.
    """
    # The tables are integers and carry no gradient: closed over, not
    # arguments of the differentiated function.

    @ops.custom_gradient
    def multiply(inputs, rows, kernel):
        outputs = ops.matmul(inputs, kernel)
        row_outputs = _rows_forward(rows, kernel, blocks)

        def grad(*args, upstream=None):
            if upstream is None:
                upstream = args if len(args) == 2 else args[0]
            outputs_upstream, rows_upstream = upstream
            inputs_grad, kernel_grad = matmul_gradients(
                inputs, kernel, outputs_upstream)
            rows_grad, kernel_grad = _rows_backward(
                rows, kernel, blocks, rows_upstream, kernel_grad)
            return inputs_grad, rows_grad, kernel_grad

        return (outputs, row_outputs), grad

    # Variables read as tensors: TensorFlow's custom gradient would
    # otherwise ask for the variables' gradients separately.
    return multiply(*(ops.cast(value, value.dtype)
                      for value in (inputs, rows, kernel)))



def activation_gradient(activation, pre_activation, upstream):
    """upstream * activation'(pre_activation), by the backend's autodiff.

    keras.ops has no vector-Jacobian product; the backward passes below need
    one for any elementwise activation a user gives the experts.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.vjp(activation, pre_activation)[1](upstream)[0]
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(pre_activation)
            outputs = activation(pre_activation)
        return tape.gradient(outputs, pre_activation,
                             output_gradients=upstream)
    raise ValueError(
        "grouped_feed_forward supports the tensorflow and jax backends, "
        f"received {backend!r}.")


def _bias_rows(bias):
    return ops.expand_dims(bias, 1)


def grouped_feed_forward(inputs, rows, weights, blocks, activation,
                         rematerialize=False):
    """The experts' network on a buffer and on overflow rows, fused.

    activation(x W_in[e] + b_in[e]) W_out[e] + b_out[e] for the buffer
    inputs [E, C, d] (expert e on row e) and for the overflow rows [R, d]
    (block by block, with the block's expert), as two `grouped_matmul`s
    would give, but each block runs the whole network in the loop, so no
    [R, h] hidden rows are ever stored, and one custom gradient adds the
    blocks' weight gradients into the buffer's in place.

    Args:
        inputs: [E, C, d].
        rows: [R, d].
        weights: (kernel_in [E, d, h], kernel_out [E, h, d_out], bias_in
            [E, h], bias_out [E, d_out]).
        blocks: the rows' `Blocks`.
        activation: an elementwise function.
        rematerialize: recompute the buffer's hidden activations in the
            backward pass instead of keeping them.

    Returns:
        ([E, C, d_out], [R, d_out]); rows in no block have unspecified
        values and get no gradient.
    """

    def block_forward(x, kernel_in, kernel_out, bias_in, bias_out, expert):
        pre = (ops.matmul(x, _expert_slice(kernel_in, expert))
               + _expert_slice(bias_in, expert))
        hidden = activation(pre)
        return pre, hidden, (ops.matmul(hidden,
                                        _expert_slice(kernel_out, expert))
                             + _expert_slice(bias_out, expert))

    def rows_forward(rows, kernel_in, kernel_out, bias_in, bias_out):
        def body(i, outputs):
            start = blocks.start[i]
            _, _, block_outputs = block_forward(
                _window(rows, start, blocks.size), kernel_in, kernel_out,
                bias_in, bias_out, blocks.expert[i])
            return ops.slice_update(outputs, (start, 0), block_outputs)

        outputs = ops.zeros((ops.shape(rows)[0], kernel_out.shape[2]),
                            rows.dtype)
        return ops.fori_loop(0, blocks.count, body, outputs)

    def rows_backward(rows, kernel_in, kernel_out, bias_in, bias_out,
                      upstream, grads):
        row_index = ops.arange(blocks.size, dtype="int32")

        def body(i, carry):
            rows_grad, kernel_in_grad, kernel_out_grad, bias_in_grad, \
                bias_out_grad = carry
            start, expert = blocks.start[i], blocks.expert[i]
            x = _window(rows, start, blocks.size)
            # Rows of the window past the block's end are another block's.
            in_block = ops.expand_dims(
                ops.less(row_index, blocks.length[i]), 1)
            block_upstream = ops.where(
                in_block, _window(upstream, start, blocks.size), 0.0)
            pre, hidden, _ = block_forward(x, kernel_in, kernel_out,
                                           bias_in, bias_out, expert)
            hidden_grad = activation_gradient(
                activation, pre, ops.matmul(
                    block_upstream,
                    ops.transpose(_expert_slice(kernel_out, expert))))
            kernel_out_grad = _add_to_expert(
                kernel_out_grad, expert,
                ops.matmul(ops.transpose(hidden), block_upstream))
            kernel_in_grad = _add_to_expert(
                kernel_in_grad, expert,
                ops.matmul(ops.transpose(x), hidden_grad))
            bias_out_grad = _add_to_expert(
                bias_out_grad, expert, ops.sum(block_upstream, axis=0))
            bias_in_grad = _add_to_expert(
                bias_in_grad, expert, ops.sum(hidden_grad, axis=0))
            rows_grad = ops.slice_update(
                rows_grad, (start, 0),
                ops.matmul(hidden_grad, ops.transpose(
                    _expert_slice(kernel_in, expert))))
            return (rows_grad, kernel_in_grad, kernel_out_grad,
                    bias_in_grad, bias_out_grad)

        return ops.fori_loop(0, blocks.count, body,
                             (ops.zeros_like(rows),) + tuple(grads))

    @ops.custom_gradient
    def feed_forward(inputs, rows, kernel_in, kernel_out, bias_in,
                     bias_out):
        pre = ops.matmul(inputs, kernel_in) + _bias_rows(bias_in)
        hidden = activation(pre)
        outputs = ops.matmul(hidden, kernel_out) + _bias_rows(bias_out)
        row_outputs = rows_forward(rows, kernel_in, kernel_out, bias_in,
                                   bias_out)
        if rematerialize:
            pre = hidden = None

        def grad(*args, upstream=None):
            if upstream is None:
                upstream = args if len(args) == 2 else args[0]
            outputs_upstream, rows_upstream = upstream
            buffer_pre, buffer_hidden = pre, hidden
            if buffer_pre is None:
                buffer_pre = (ops.matmul(inputs, kernel_in)
                              + _bias_rows(bias_in))
                buffer_hidden = activation(buffer_pre)
            hidden_upstream, kernel_out_grad = matmul_gradients(
                buffer_hidden, kernel_out, outputs_upstream)
            pre_grad = activation_gradient(activation, buffer_pre,
                                           hidden_upstream)
            inputs_grad, kernel_in_grad = matmul_gradients(
                inputs, kernel_in, pre_grad)
            grads = rows_backward(
                rows, kernel_in, kernel_out, bias_in, bias_out,
                rows_upstream,
                (kernel_in_grad, kernel_out_grad, ops.sum(pre_grad, axis=1),
                 ops.sum(outputs_upstream, axis=1)))
            rows_grad, kernel_in_grad, kernel_out_grad, bias_in_grad, \
                bias_out_grad = grads
            return (inputs_grad, rows_grad, kernel_in_grad, kernel_out_grad,
                    bias_in_grad, bias_out_grad)

        return (outputs, row_outputs), grad

    return feed_forward(*(ops.cast(value, value.dtype)
                          for value in (inputs, rows) + tuple(weights)))

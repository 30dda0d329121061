"""The experts' batched matmul, with a gradient laid out for small capacities.

`expert_matmul(inputs, kernel)` is `ops.matmul` of an [E, C, a] buffer with
[E, a, b] expert weights. Its value is exactly that; what differs is how the
backward pass is laid out when C, the slots per expert, is small.

The gradients are computed feature-major when C <=
`FEATURE_MAJOR_MAX_CAPACITY`:

* input gradient: (kernel @ upstream^T) [E, a, C], then transposed to
  [E, C, a], instead of upstream @ kernel^T;
* kernel gradient: inputs^T [E, a, C] materialised, then @ upstream
  [E, C, b] -> [E, a, b].

On XLA's CPU backend (TensorFlow and JAX alike) the products as automatic
differentiation writes them run far below memory speed at small C; the
measurements are in `bench/README.md` (`bench/expert_matmul.py`).

XLA's simplifier folds transposes into the dots they feed or come from, and
sinks them through elementwise ops with a broadcast operand, which would undo
both layouts. `_pinned` adds 0 * (a dot's output) to a value, which XLA
cannot simplify away (0 * v is NaN for an infinite v), so the value is
materialised in the layout asked for; each pin is an elementwise pass over a
small [E, C, a] buffer.

Above `FEATURE_MAJOR_MAX_CAPACITY`, where the token-major products are as
fast or faster, this is plain `ops.matmul` with automatic differentiation.
"""

from keras import ops

# Largest C whose gradient takes the feature-major layout.
FEATURE_MAJOR_MAX_CAPACITY = 64


def expert_matmul(inputs, kernel):
    """inputs [E, C, a] @ kernel [E, a, b] -> [E, C, b], one matmul per e."""
    capacity = inputs.shape[1]
    if capacity is None or capacity > FEATURE_MAJOR_MAX_CAPACITY:
        return ops.matmul(inputs, kernel)
    return _feature_major_gradient_matmul(inputs, kernel)


def _transpose(x):
    return ops.transpose(x, (0, 2, 1))


def _pinned(x, anchor):
    """x + 0 * anchor: x, kept in its layout (see the module docstring).

    Equal to x where anchor is finite; NaN where anchor is not, which the
    gradient holding anchor's value is in any case.
    """
    return x + 0.0 * anchor


def matmul_gradients(inputs, kernel, upstream):
    """(inputs gradient, kernel gradient) of `expert_matmul` for `upstream`.

    inputs [E, C, a], kernel [E, a, b], upstream [E, C, b]; feature-major
    up to `FEATURE_MAJOR_MAX_CAPACITY` slots, as automatic differentiation
    writes them above.
    """
    capacity = inputs.shape[1]
    if capacity is None or capacity > FEATURE_MAJOR_MAX_CAPACITY:
        return (ops.matmul(upstream, _transpose(kernel)),
                ops.matmul(_transpose(inputs), upstream))
    # [E, a, b] @ [E, b, C] -> [E, a, C].
    inputs_grad_t = ops.matmul(kernel, _transpose(upstream))
    inputs_grad = _transpose(_pinned(inputs_grad_t, inputs_grad_t))
    inputs_t = _pinned(_transpose(inputs), inputs_grad_t)  # [E, a, C]
    return inputs_grad, ops.matmul(inputs_t, upstream)


@ops.custom_gradient
def _feature_major_gradient_matmul(inputs, kernel):
    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args  # [E, C, b]
        return matmul_gradients(inputs, kernel, upstream)

    return ops.matmul(inputs, kernel), grad

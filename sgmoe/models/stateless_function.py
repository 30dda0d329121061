"""Compiled functions that read a model's variables and change none."""

import keras


class _InStatelessScope:
    """`function(*args)` under a `keras.StatelessScope`.

    An object rather than a closure: TensorFlow's frequent-retracing
    warning counts traces per Python code object, which every closure of
    one `def` shares, so the traces of all compiled functions (one per
    shape bucket, each traced once) would add up to a false warning. An
    object without `__code__` is counted on its own.
    """

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        with keras.StatelessScope():
            return self.function(*args)


def stateless_function(model, function, jit_compile=True):
    """`function(*tensors)` compiled, reading `model`'s variables and
    changing none of them (MoE statistics, seed generators).

    On JAX, `jax.jit` of `function` under a `StatelessScope` that maps the
    model's variables to their current values, passed as arguments at every
    call (so new weights are used without recompiling). On TensorFlow, a
    `tf.function` (compiled with XLA under `jit_compile`) run under a
    `StatelessScope`. Either is traced once per shapes and dtypes of its
    arguments.

    Args:
        model: the `keras.Model` whose variables `function` reads.
        function: tensors -> nested tensors, built from `keras.ops`.
        jit_compile: compile with XLA.

    Returns:
        A callable with `function`'s positional arguments.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def stateless(variable_values, *args):
            with keras.StatelessScope(state_mapping=list(
                    zip(model.variables, variable_values))):
                return function(*args)

        compiled = jax.jit(stateless) if jit_compile else stateless
        return lambda *args: compiled([v.value for v in model.variables],
                                      *args)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(_InStatelessScope(function),
                           jit_compile=jit_compile)
    return _InStatelessScope(function)

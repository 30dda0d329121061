"""Seeded random draws for layers, with Philox on TensorFlow (see
`standard_normal`)."""

import keras


def standard_normal(shape, seed_generator):
    """float32 N(0, 1) samples of `shape`, drawn from a `SeedGenerator`.

    Same contract as `keras.random.normal(shape, seed=seed_generator)`: each
    call advances `seed_generator` once. On TensorFlow the draw is
    `tf.random.stateless_normal` with the Philox algorithm, which Keras
    offers no way to pick: TensorFlow's default choice compiles to a much
    slower XLA kernel on CPU (`bench/README.md`, router hot spots). On CPU
    the values are those `keras.random.normal` gives, whose auto-selected
    algorithm is Philox there too; only the XLA lowering differs. Other
    backends call `keras.random.normal`.

    Args:
        shape: the output shape.
        seed_generator: a `keras.random.SeedGenerator`.

    Returns:
        float32 tensor of `shape`.
    """
    if keras.backend.backend() != "tensorflow":
        return keras.random.normal(shape, seed=seed_generator)
    import tensorflow as tf

    return tf.random.stateless_normal(shape, seed=_tf_seed(seed_generator),
                                      dtype="float32", alg="philox")


def uniform(shape, minval, maxval, seed_generator):
    """float32 samples uniform in [minval, maxval), like
    `keras.random.uniform(shape, minval, maxval, seed=seed_generator)`;
    Philox on TensorFlow for the reason given in `standard_normal`."""
    if keras.backend.backend() != "tensorflow":
        return keras.random.uniform(shape, minval=minval, maxval=maxval,
                                    seed=seed_generator)
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, seed=_tf_seed(seed_generator),
                                       minval=minval, maxval=maxval,
                                       dtype="float32", alg="philox")


def _tf_seed(seed_generator):
    import tensorflow as tf

    seed = seed_generator.next()
    # Seed states are int64 variables; XLA's stateless ops want int32 seeds.
    return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), "int32")

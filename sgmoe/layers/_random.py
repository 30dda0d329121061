"""Random draws for layers, fast under XLA on every backend."""

import keras


def standard_normal(shape, seed_generator):
    """float32 N(0, 1) samples of `shape`, drawn from a `SeedGenerator`.

    Same contract as `keras.random.normal(shape, seed=seed_generator)`. On
    TensorFlow it asks for the Philox algorithm: TensorFlow's default choice
    under XLA on CPU took 750-1090 ms for a [4096, 1024] draw where Philox
    took 25 ms (bench/moe_layer.py, 1024 experts), which made the noise the
    most expensive part of a noisy gate. Keras offers no way to pick it.
    On CPU the draws are the same values keras.random.normal gives (its
    auto-selected algorithm is Philox there too); only the XLA lowering
    differs.
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

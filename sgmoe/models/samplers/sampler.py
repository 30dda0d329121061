"""The base class of the token samplers of `generate`."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config


@keras.saving.register_keras_serializable(package="sgmoe")
class Sampler:
    """Chooses the next token of each row from a model's logits.

    The semantics of KerasHub's samplers (`keras_hub.samplers`): the logits
    [batch, V] are divided by `temperature` and turned into probabilities
    with a softmax (`compute_probabilities`); a subclass's
    `get_next_token` then picks one token per row. Random samplers pick by
    inverse-CDF sampling: one uniform number u in [0, 1) per row, and the
    token where u falls in the cumulative distribution of the tokens they
    keep, renormalised (`sample_from_weights`), which draws from exactly
    that distribution. The uniform numbers are inputs, so a compiled
    generation loop is a pure function of them; `draw_uniform` makes them
    from an integer seed (reproducible) or from the sampler's
    `keras.random.SeedGenerator` (a new draw every call).

    Args:
        temperature: > 0; the logits are divided by it. Below 1 sharpens
            the distribution, above 1 flattens it.

    Call arguments:
        logits: float [batch, V].
        uniform: float [batch] in [0, 1), or None to draw it with
            `draw_uniform`.

    Returns:
        int32 [batch], the chosen token ids.
    """

    # Whether `get_next_token` reads its `uniform` argument.
    is_random = False

    def __init__(self, temperature=1.0):
        self.temperature = _validation.check_positive_float("temperature",
                                                            temperature)

    def compute_probabilities(self, logits):
        """softmax(logits / temperature) in float32, [batch, V]."""
        logits = ops.cast(logits, "float32")
        return ops.softmax(logits / self.temperature, axis=-1)

    def get_next_token(self, probabilities, uniform):
        """int32 [batch] from probabilities [batch, V] and uniform
        [batch]."""
        raise NotImplementedError

    def draw_uniform(self, shape, seed=None):
        """Uniform numbers in [0, 1) for `get_next_token`.

        Args:
            shape: the shape to draw, e.g. [batch, steps].
            seed: an int (the same numbers for the same seed and shape) or
                None (the sampler's seed generator, advanced by the draw).
                Samplers that are not random return zeros.
        """
        if not self.is_random:
            return ops.zeros(shape, "float32")
        if seed is None:
            seed = self.seed_generator
        return keras.random.uniform(shape, seed=seed)

    def __call__(self, logits, uniform=None):
        if uniform is None:
            uniform = self.draw_uniform(tuple(ops.shape(logits)[:1]))
        return self.get_next_token(self.compute_probabilities(logits),
                                   uniform)

    def get_config(self):
        return constructor_config(self, type(self))

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _compile_key(self):
        """What a compiled loop depends on: the class and the config but
        the seed (the uniform numbers are the loop's input)."""
        config = {name: value for name, value in self.get_config().items()
                  if name != "seed"}
        return (type(self).__name__, tuple(sorted(config.items())))


def make_seed_generator(seed):
    """A `keras.random.SeedGenerator` of an int or None `seed`, checked."""
    if seed is not None and (isinstance(seed, bool)
                             or not isinstance(seed, int)):
        raise ValueError(
            f"`seed` must be None or an integer, received seed={seed!r}.")
    return keras.random.SeedGenerator(seed)


def sample_from_weights(weights, uniform):
    """Inverse-CDF sampling of one index per row.

    Index i of row b is drawn with probability weights[b, i] / sum_j
    weights[b, j]: the chosen index is the first whose cumulative weight
    exceeds uniform[b] * (total weight). Indices of zero weight are never
    chosen (if rounding puts u * total at the total, the last positive
    weight is taken instead).

    Args:
        weights: float [batch, n], >= 0, each row with a positive weight.
        uniform: float [batch] in [0, 1).

    Returns:
        int32 [batch] indices into the last axis of `weights`.
    """
    weights = ops.cast(weights, "float32")
    cumulative = ops.cumsum(weights, axis=-1)
    threshold = ops.expand_dims(
        ops.cast(uniform, "float32") * cumulative[:, -1], -1)
    index = ops.sum(ops.cast(ops.less_equal(cumulative, threshold), "int32"),
                    axis=-1)
    size = ops.shape(weights)[-1]
    positions = ops.arange(size, dtype="int32")
    last_positive = ops.max(
        ops.where(ops.greater(weights, 0.0), positions, -1), axis=-1)
    return ops.minimum(index, last_positive)

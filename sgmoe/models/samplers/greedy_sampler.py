"""Greedy sampling: the most probable token."""

import keras
from keras import ops

from sgmoe.models.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="sgmoe")
class GreedySampler(Sampler):
    """The most probable token of each row (KerasHub's `GreedySampler`).

    Deterministic; `temperature` does not change the choice.

    Args:
        temperature: > 0, kept for a uniform sampler interface.

    Example:

    >>> logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    >>> ops.convert_to_numpy(GreedySampler()(logits))
    array([1, 0], dtype=int32)
    """

    def get_next_token(self, probabilities, uniform):
        del uniform
        return ops.cast(ops.argmax(probabilities, axis=-1), "int32")

"""Sampling from the whole distribution."""

import keras

from sgmoe.models.samplers.sampler import Sampler
from sgmoe.models.samplers.sampler import make_seed_generator
from sgmoe.models.samplers.sampler import sample_from_weights


@keras.saving.register_keras_serializable(package="sgmoe")
class RandomSampler(Sampler):
    """A token drawn from softmax(logits / temperature) over the whole
    vocabulary (KerasHub's `RandomSampler`): plain temperature sampling.

    Args:
        seed: an int or None, the seed of the sampler's
            `keras.random.SeedGenerator` (used when a call gives no
            uniform numbers, and by `generate` without a `seed`).
        temperature: > 0; the logits are divided by it.

    Example:

    >>> sampler = RandomSampler(temperature=0.5)
    >>> logits = np.log(np.array([[0.25, 0.25, 0.5]]))
    >>> chosen = sampler(logits, uniform=np.array([0.2]))
    >>> ops.convert_to_numpy(chosen).tolist()
    [1]
    """

    is_random = True

    def __init__(self, seed=None, temperature=1.0):
        super().__init__(temperature=temperature)
        self.seed = seed
        self.seed_generator = make_seed_generator(seed)

    def get_next_token(self, probabilities, uniform):
        return sample_from_weights(probabilities, uniform)

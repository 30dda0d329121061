"""Top-k sampling."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe.models.samplers.sampler import Sampler
from sgmoe.models.samplers.sampler import make_seed_generator
from sgmoe.models.samplers.sampler import sample_from_weights


@keras.saving.register_keras_serializable(package="sgmoe")
class TopKSampler(Sampler):
    """A token drawn from the k most probable (KerasHub's `TopKSampler`).

    Fan et al. 2018, "Hierarchical Neural Story Generation"
    (arXiv:1805.04833): the probabilities softmax(logits / temperature) are
    cut to each row's k largest and renormalised, and one token is drawn
    from them. k larger than the vocabulary keeps every token.

    Args:
        k: tokens kept per row, a positive integer.
        seed: an int or None, the seed of the sampler's
            `keras.random.SeedGenerator` (used when a call gives no
            uniform numbers, and by `generate` without a `seed`).
        temperature: > 0; the logits are divided by it.

    Example:

    >>> sampler = TopKSampler(k=2, seed=0)
    >>> logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    >>> chosen = sampler(logits, uniform=np.array([0.7]))
    >>> ops.convert_to_numpy(chosen).tolist()
    [1]
    """

    is_random = True

    def __init__(self, k=5, seed=None, temperature=1.0):
        super().__init__(temperature=temperature)
        self.k = _validation.check_positive_int("k", k)
        self.seed = seed
        self.seed_generator = make_seed_generator(seed)

    def get_next_token(self, probabilities, uniform):
        k = min(self.k, probabilities.shape[-1])
        top_probabilities, top_indices = ops.top_k(probabilities, k)
        chosen = sample_from_weights(top_probabilities, uniform)
        return ops.cast(ops.take_along_axis(
            top_indices, ops.expand_dims(chosen, -1), axis=-1)[:, 0],
            "int32")

    def get_config(self):
        config = super().get_config()
        config.update({"k": self.k, "seed": self.seed})
        return config

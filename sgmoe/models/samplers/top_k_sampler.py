"""Top-k sampling."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe.models.samplers.random_sampler import RandomSampler
from sgmoe.models.samplers.sampler import sample_from_weights


@keras.saving.register_keras_serializable(package="sgmoe")
class TopKSampler(RandomSampler):
    """A token drawn from the k most probable (KerasHub's `TopKSampler`).

    Fan et al. 2018, "Hierarchical Neural Story Generation"
    (arXiv:1805.04833): the probabilities softmax(logits / temperature) are
    cut to each row's k largest and renormalised, and one token is drawn
    from them. k larger than the vocabulary keeps every token.

    Args:
        k: tokens kept per row, a positive integer.
        seed, temperature: as in `RandomSampler`.

    Example:

    >>> sampler = TopKSampler(k=2, seed=0)
    >>> logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    >>> chosen = sampler(logits, uniform=np.array([0.7]))
    >>> ops.convert_to_numpy(chosen).tolist()
    [1]
    """

    def __init__(self, k=5, seed=None, temperature=1.0):
        super().__init__(seed=seed, temperature=temperature)
        self.k = _validation.check_positive_int("k", k)

    def get_next_token(self, probabilities, uniform):
        k = min(self.k, probabilities.shape[-1])
        top_probabilities, top_indices = ops.top_k(probabilities, k)
        chosen = sample_from_weights(top_probabilities, uniform)
        return ops.cast(ops.take_along_axis(
            top_indices, ops.expand_dims(chosen, -1), axis=-1)[:, 0],
            "int32")

"""Top-p (nucleus) sampling."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe.models.samplers.random_sampler import RandomSampler
from sgmoe.models.samplers.sampler import sample_from_weights


@keras.saving.register_keras_serializable(package="sgmoe")
class TopPSampler(RandomSampler):
    """A token drawn from the nucleus of probability p (KerasHub's
    `TopPSampler`).

    Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"
    (arXiv:1904.09751): with the probabilities softmax(logits /
    temperature) sorted in decreasing order, a token is kept while the
    probability of the tokens before it is below p, so the nucleus is the
    smallest set of most probable tokens whose probability reaches p (at
    least the most probable token). One token is drawn from the nucleus,
    renormalised. With `k`, only the k most probable tokens are sorted and
    can be kept (cheaper for large vocabularies; the probabilities are
    not renormalised before the cut).

    Args:
        p: the nucleus probability, in (0, 1].
        k: None (every token can be kept) or a positive integer.
        seed, temperature: as in `RandomSampler`.

    Example:

    >>> sampler = TopPSampler(p=0.7, seed=0)
    >>> logits = np.log(np.array([[0.2, 0.5, 0.3]]))
    >>> chosen = sampler(logits, uniform=np.array([0.9]))
    >>> ops.convert_to_numpy(chosen).tolist()
    [2]
    """

    def __init__(self, p=0.1, k=None, seed=None, temperature=1.0):
        super().__init__(seed=seed, temperature=temperature)
        p = _validation.check_positive_float("p", p)
        if p > 1.0:
            raise ValueError(f"`p` must be in (0, 1], received p={p!r}.")
        self.p = p
        self.k = _validation.check_optional_positive_int("k", k)

    def get_next_token(self, probabilities, uniform):
        size = probabilities.shape[-1]
        cutoff = size if self.k is None else min(self.k, size)
        sorted_probabilities, sorted_indices = ops.top_k(probabilities,
                                                         cutoff)
        before = ops.cumsum(sorted_probabilities, axis=-1) - (
            sorted_probabilities)
        kept = ops.where(ops.less(before, self.p), sorted_probabilities, 0.0)
        chosen = sample_from_weights(kept, uniform)
        return ops.cast(ops.take_along_axis(
            sorted_indices, ops.expand_dims(chosen, -1), axis=-1)[:, 0],
            "int32")

"""Softmax output layer with an importance-sampled training loss."""

import math

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe._renamed_arguments import renamed_arguments

SAMPLERS = ("log_uniform", "uniform")


def log_uniform_probability(ids, vocabulary_size):
    """Q(c) = log((c + 2) / (c + 1)) / log(V + 1), the Zipfian proposal.

    Ids must be ordered by decreasing frequency (id 0 the most frequent), as
    in vocabularies built by counting.
    """
    ids = ops.cast(ids, "float32")
    return ops.log1p(1.0 / (ids + 1.0)) / math.log(vocabulary_size + 1.0)


@keras.saving.register_keras_serializable(package="sgmoe")
class SampledSoftmax(keras.layers.Layer):
    """The vocabulary projection: exact logits, or an importance-sampled loss.

    Called, the layer gives the exact logits h W^T + b over all V words (for
    evaluation, prediction and perplexity). `sampled_loss` gives the training
    loss of Shazeer et al. 2017 (Appendix C.1: "the softmax output layer was
    trained efficiently using importance sampling", after Jozefowicz et al.
    2016) at a cost of S + 1 rows of W per token instead of V.

    S candidate words c_1..c_S are drawn once per batch from a proposal Q and
    shared by all tokens. With m(c) the expected number of times c is among
    the candidates, the partition function Z = sum_c exp(s_c) of a token with
    target y is estimated by importance sampling as

        Z_hat = exp(s_y) + sum_j [c_j != y] exp(s_{c_j}) / m(c_j),

    which is unbiased: E[Z_hat] = Z. The loss is log Z_hat - s_y; its
    expectation approaches the exact cross-entropy log Z - s_y as S grows,
    and it equals it when every word is a candidate with m = 1.

    Samplers:
        "log_uniform": S draws with replacement from the Zipfian
            Q(c) = log((c + 2) / (c + 1)) / log(V + 1) (ids sorted by
            decreasing frequency), m(c) = S * Q(c).
        "uniform": S distinct words drawn uniformly without replacement,
            m(c) = S / V. With S = V every word is a candidate exactly once
            and the loss is the exact cross-entropy.

    Args:
        vocabulary_size: V.
        num_sampled: S, candidates per batch for `sampled_loss`; None means
            `sampled_loss` is not available (exact softmax only).
        candidate_sampler: "log_uniform" (default) or "uniform".
        kernel_initializer: initializer of the [V, d] output embedding.
        seed: seed of the candidate draws.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: hidden states [..., d].

    Returns:
        logits [..., V], float32.

    Example:

    >>> softmax = SampledSoftmax(1000, num_sampled=64)
    >>> hidden = keras.random.normal((2, 5, 16))
    >>> tuple(softmax(hidden).shape)
    (2, 5, 1000)
    >>> tuple(softmax.sampled_loss(hidden, ops.ones((2, 5), "int32")).shape)
    (2, 5)
    """

    def __init__(self, vocabulary_size, num_sampled=None,
                 candidate_sampler="log_uniform",
                 kernel_initializer="glorot_uniform",
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = _validation.check_positive_int(
            "vocabulary_size", vocabulary_size)
        if num_sampled is not None:
            num_sampled = _validation.check_positive_int("num_sampled",
                                                         num_sampled)
        self.num_sampled = num_sampled
        if candidate_sampler not in SAMPLERS:
            raise ValueError(
                f"`candidate_sampler` must be one of {list(SAMPLERS)}, "
                f"received candidate_sampler={candidate_sampler!r}.")
        if (candidate_sampler == "uniform" and num_sampled is not None
                and num_sampled > self.vocabulary_size):
            raise ValueError(
                "The 'uniform' sampler draws without replacement, so "
                f"`num_sampled` must be at most vocabulary_size="
                f"{self.vocabulary_size}, received num_sampled={num_sampled}.")
        self.candidate_sampler = candidate_sampler
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        # [V, d]: a word's weights are one row, so the sampled loss gathers
        # rows (sparse gradients) instead of columns.
        self.kernel = self.add_weight(
            name="kernel", shape=(self.vocabulary_size, input_dim),
            initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.vocabulary_size,),
                                    initializer="zeros")

    def call(self, inputs):
        logits = ops.matmul(inputs, ops.transpose(self.kernel)) + self.bias
        return ops.cast(logits, "float32")

    def sample_candidates(self):
        """(candidate ids [S] int32, expected counts m(c) [S] float32)."""
        if self.num_sampled is None:
            raise ValueError(
                "SampledSoftmax was built with num_sampled=None; give "
                "num_sampled to use the sampled loss.")
        size, count = self.vocabulary_size, self.num_sampled
        if self.candidate_sampler == "uniform":
            noise = keras.random.uniform((size,), seed=self.seed_generator)
            _, candidates = ops.top_k(noise, count)
            expected = ops.full((count,), count / size, dtype="float32")
            return ops.cast(candidates, "int32"), expected
        # Inverse CDF of the log-uniform: P(C <= c) = log(c + 2) / log(V + 1).
        uniform = keras.random.uniform((count,), seed=self.seed_generator)
        candidates = ops.floor(ops.exp(uniform * math.log(size + 1.0))) - 1.0
        candidates = ops.cast(ops.clip(candidates, 0, size - 1), "int32")
        expected = count * log_uniform_probability(candidates, size)
        return candidates, expected

    def sampled_loss(self, inputs, targets, candidates=None):
        """Per-token loss log Z_hat - s_y [...], float32.

        Args:
            inputs: hidden states [..., d].
            targets: int word ids [...].
            candidates: optional (ids [S], expected counts [S]); drawn with
                `sample_candidates` if None.
        """
        if candidates is None:
            candidates = self.sample_candidates()
        candidate_ids, expected = candidates
        leading_shape = tuple(ops.shape(targets))
        hidden = ops.cast(ops.reshape(inputs, (-1, inputs.shape[-1])),
                          "float32")
        targets = ops.reshape(ops.cast(targets, "int32"), (-1,))
        kernel = ops.cast(self.kernel, "float32")
        bias = ops.cast(self.bias, "float32")
        # s_y: [N].
        target_logits = (ops.sum(hidden * ops.take(kernel, targets, axis=0),
                                 axis=-1) + ops.take(bias, targets))
        # s_c - log m(c): [N, S].
        sampled_logits = (
            ops.matmul(hidden, ops.transpose(ops.take(kernel, candidate_ids,
                                                      axis=0)))
            + ops.take(bias, candidate_ids) - ops.log(expected))
        # A candidate equal to the target is already counted by exp(s_y).
        accidental_hit = (ops.expand_dims(targets, 1)
                          == ops.expand_dims(candidate_ids, 0))
        sampled_logits = ops.where(accidental_hit, -1e30, sampled_logits)
        all_logits = ops.concatenate(
            [ops.expand_dims(target_logits, 1), sampled_logits], axis=1)
        losses = ops.logsumexp(all_logits, axis=1) - target_logits
        return ops.reshape(losses, leading_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.vocabulary_size,)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, SampledSoftmax)}

    @classmethod
    def from_config(cls, config):
        # Saved before `sampler` was renamed.
        return cls(**renamed_arguments(config,
                                       {"sampler": "candidate_sampler"}))

"""What routers share: the gate kernel, the z-loss and adding the losses."""

import keras
from keras import ops

from sgmoe.layers import balancing

# Above this k, `top_k_per_token` calls ops.top_k instead of taking k maxima.
MAX_PASSES = 8


def gate_kernel(router, name, input_dim, initializer=None):
    """A float32 [d, E] gate kernel that is never autocast.

    The default initializer is the truncated normal of standard deviation
    sqrt(0.1 / d) of Switch Transformer (Fedus et al. 2021, §2.4), seeded
    with the router's seed. `autocast=False`: a router called on its own
    under a mixed-precision policy would otherwise read its weights in the
    compute dtype.
    """
    if initializer is None:
        initializer = keras.initializers.TruncatedNormal(
            stddev=(0.1 / input_dim) ** 0.5, seed=router.seed)
    return router.add_weight(
        name=name, shape=(input_dim, router.num_experts),
        initializer=initializer, dtype="float32", autocast=False)


def loss_names(router, names):
    """The names of a router's losses: `names`, plus "z_loss" if weighted."""
    return list(names) + (["z_loss"] if router.z_loss_weight > 0 else [])


def add_losses(router, auxiliary_losses, logits, training):
    """Adds the z-loss of `logits` when weighted; in training, `add_loss`.

    Returns `auxiliary_losses`, now with "z_loss" when the router's
    `z_loss_weight` > 0.
    """
    if router.z_loss_weight > 0:
        auxiliary_losses["z_loss"] = balancing.z_loss(logits,
                                                      router.z_loss_weight)
    if training and auxiliary_losses:
        router.add_loss(sum(auxiliary_losses.values()))
    return auxiliary_losses


def top_k_per_token(values, k):
    """The k largest values of each row [..., E] and their indices.

    The same result as `ops.top_k(values, k)` (descending, the lower index
    first among equal values) for finite values, computed for k <=
    `MAX_PASSES` as k passes of an argmax over E, each masking the entry it
    chose. A max reduction splits over a sharded token axis, so under a
    `keras.distribution` every device routes its own tokens; XLA's SPMD
    partitioner cannot split the TopK custom call JAX lowers `top_k` to and
    gathers the whole batch's [N, E] logits onto every device for it.
    The passes cost O(k N E), no more than the gate's own [N, E] matmul
    for the k of token-choice routing.

    Returns:
        (top values [..., k], top indices int32 [..., k]).
    """
    if k > MAX_PASSES:
        top_values, top_indices = ops.top_k(values, k)
        return top_values, ops.cast(top_indices, "int32")
    expert = ops.arange(values.shape[-1], dtype="int32")
    remaining = values
    indices = []
    for _ in range(k):
        index = ops.cast(ops.argmax(remaining, axis=-1), "int32")
        indices.append(index)
        remaining = ops.where(
            ops.equal(expert, ops.expand_dims(index, -1)),
            ops.cast(float("-inf"), remaining.dtype), remaining)
    indices = ops.stack(indices, axis=-1)
    return ops.take_along_axis(values, indices, axis=-1), indices

"""The routers' top-k over experts, which splits over a sharded token axis."""

from keras import ops

# Above this k, `top_k_per_token` calls ops.top_k instead of taking k maxima.
MAX_PASSES = 8


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

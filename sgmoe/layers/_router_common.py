"""What routers share: the gate kernel, the z-loss and adding the losses."""

import keras

from sgmoe.layers import balancing


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

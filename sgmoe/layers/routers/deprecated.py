"""The routers' names before the `Router` base class, for saved models only.

`.keras` files written before the rename name the router classes
"sgmoe>NoisyTopKGating" and "sgmoe>StrictlyBalancedGating"; these aliases
let them load. New code uses `NoisyTopKRouter` and `StrictlyBalancedRouter`.
"""

import warnings

import keras

from sgmoe.layers.routers.noisy_top_k_router import NoisyTopKRouter
from sgmoe.layers.routers.strictly_balanced_router import (
    StrictlyBalancedRouter)


def _warn(old, new):
    warnings.warn(f"{old} is deprecated; use {new}.", DeprecationWarning,
                  stacklevel=3)


@keras.saving.register_keras_serializable(package="sgmoe")
class NoisyTopKGating(NoisyTopKRouter):
    """Deprecated name of `NoisyTopKRouter`."""

    def __init__(self, *args, **kwargs):
        _warn("NoisyTopKGating", "NoisyTopKRouter")
        super().__init__(*args, **kwargs)


@keras.saving.register_keras_serializable(package="sgmoe")
class StrictlyBalancedGating(StrictlyBalancedRouter):
    """Deprecated name of `StrictlyBalancedRouter`."""

    def __init__(self, *args, **kwargs):
        _warn("StrictlyBalancedGating", "StrictlyBalancedRouter")
        super().__init__(*args, **kwargs)

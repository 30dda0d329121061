"""sgmoe: sparsely-gated Mixture-of-Experts layers and models for Keras 3."""

from sgmoe import evaluation
from sgmoe import layers
from sgmoe import models
from sgmoe import optimizers

__version__ = "0.1.0"

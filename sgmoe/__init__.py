"""sgmoe: sparsely-gated Mixture-of-Experts layers and models for Keras 3.

`import sgmoe` loads `sgmoe.layers`, `sgmoe.models` and
`sgmoe.optimizers`, which need Keras only (they work on the JAX backend
without TensorFlow installed), and registers their classes for `.keras`
loading. `sgmoe.data`, `sgmoe.training`, `sgmoe.evaluation` and
`sgmoe.distribute` load on first use as attributes of `sgmoe` or by
import; the first three need TensorFlow (the `[tf]` extra).
"""

import importlib

from sgmoe import layers
from sgmoe import models
from sgmoe import optimizers

__version__ = "0.1.0"

_LAZY_SUBPACKAGES = ("data", "distribute", "evaluation", "training")


def __getattr__(name):
    """`sgmoe.<name>` for a subpackage that is not loaded yet."""
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"sgmoe.{name}")
    raise AttributeError(f"module 'sgmoe' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))

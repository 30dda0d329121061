"""The paper's memory-saving optimizer and learning-rate schedules."""

from sgmoe.optimizers.factored_adam import FactoredAdam
from sgmoe.optimizers.warmup_inverse_square_root import WarmupInverseSquareRoot

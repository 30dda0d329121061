"""Optimizer state size for one expert kernel: FactoredAdam, Adafactor, Adam.

Builds each optimizer on a single [E, d, h] weight (default the issue's
[64, 512, 1024]) and prints the number of state values it allocates, as a
fraction of the weight's size. Nothing is trained.

    python bench/optimizer_state.py
    python bench/optimizer_state.py --shape=1024,512,1024
    python bench/optimizer_state.py --quick   # a [4, 8, 16] weight
"""

import math

from absl import app
from absl import flags
import keras

from sgmoe.optimizers import FactoredAdam

FLAGS = flags.FLAGS
flags.DEFINE_list("shape", ["64", "512", "1024"], "Shape of the weight.")
flags.DEFINE_bool("quick", False, "A [4, 8, 16] weight (overrides --shape).")


def state_values(optimizer):
    """Values held in the optimizer's slots (scalars such as the step excluded)."""
    return sum(math.prod(v.shape) for v in optimizer.variables
               if len(v.shape) > 0)


def main(argv):
    del argv
    shape = (4, 8, 16) if FLAGS.quick else tuple(int(s) for s in FLAGS.shape)
    weight = keras.Variable(keras.ops.zeros(shape), name="kernel_in")
    size = math.prod(shape)
    print(f"weight {list(shape)}: {size:,} values "
          f"({size * 4 / 2**20:.0f} MiB in float32)")
    print(f"{'optimizer':<28}{'state values':>16}{'state / weight':>16}")
    for name, optimizer in [
        ("sgmoe FactoredAdam", FactoredAdam()),
        ("keras Adafactor", keras.optimizers.Adafactor()),
        ("keras Adam", keras.optimizers.Adam()),
    ]:
        optimizer.build([weight])
        values = state_values(optimizer)
        print(f"{name:<28}{values:>16,}{values / size:>15.2%}")


if __name__ == "__main__":
    app.run(main)

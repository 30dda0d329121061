"""Checkpoints across processes: two JAX processes of 4 CPU devices each.

Run by test_multihost_checkpoints.py in three stages, each its own process
(device and process counts are fixed when JAX starts):

- "single DIR": one device. The tiny language model takes step 1 on batch
  A and writes a checkpoint to DIR/single, then takes step 2 on batch B;
  prints step 2's loss and saves the weights after it to DIR/expected.npz.
- "multihost DIR PROCESS PORT": process PROCESS of 2 (jax.distributed on
  localhost:PORT, Gloo collectives), mesh model:8 over the 8 devices, so
  each process holds half of the experts. Restores DIR/single, takes step
  2 on batch B (every process feeds it: the batch is not split), and
  writes a checkpoint to DIR/multihost; prints the loss, the restored step,
  and the sharding of the expert kernel and which experts this process
  holds.
- "restore DIR": one device. Restores DIR/multihost and prints the largest
  difference of every weight from DIR/expected.npz and how far it moved
  from DIR/single's.

With no "batch" axis the mesh dispatches one token group, as one device
does, so the runs compute the same step (capacity factor 0.5: experts drop
assignments).
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
STAGE = sys.argv[1]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", ".."))
from tests.xla_flags import with_devices  # noqa: E402

os.environ["XLA_FLAGS"] = with_devices(4 if STAGE == "multihost" else 1)

import jax  # noqa: E402

if STAGE == "multihost":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{sys.argv[4]}", num_processes=2,
                               process_id=int(sys.argv[3]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sgmoe.distribute import model_parallel  # noqa: E402
from sgmoe.models import MoELanguageModel  # noqa: E402
from sgmoe.training import Checkpointer  # noqa: E402

VOCAB, LENGTH, BATCH = 50, 5, 8


def batches():
    rng = np.random.RandomState(0)
    return [(rng.randint(1, VOCAB, (BATCH, LENGTH)).astype("int32"),
             rng.randint(1, VOCAB, (BATCH, LENGTH)).astype("int32"))
            for _ in range(2)]


def language_model():
    keras.utils.set_random_seed(0)
    model = MoELanguageModel.from_preset(
        "tiny_moe", vocabulary_size=VOCAB,
        moe={"num_experts": 8, "k": 2, "expert_hidden_dim": 32,
             "capacity_factor": 0.5}, seed=0)
    model.build((None, LENGTH))
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
    return model


def fit_step(model, x, y):
    history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False,
                        verbose=0)
    return history.history["loss"][0]


def weights(model):
    return [np.array(v.value) for v in model.trainable_variables]


def single(directory):
    (xa, ya), (xb, yb) = batches()
    model = language_model()
    fit_step(model, xa, ya)
    writer = Checkpointer(os.path.join(directory, "single"))
    writer.set_model(model)
    writer.save()
    loss = fit_step(model, xb, yb)
    np.savez(os.path.join(directory, "expected.npz"), *weights(model))
    return {"loss": loss}


def multihost(directory):
    _, (xb, yb) = batches()
    process = jax.process_index()
    distribution = model_parallel("model:8")
    # The batch is not split: each process feeds all of it.
    distribution.auto_shard_dataset = False
    keras.distribution.set_distribution(distribution)
    model = language_model()
    state = Checkpointer(os.path.join(directory, "single")).restore(model)
    loss = fit_step(model, xb, yb)
    writer = Checkpointer(os.path.join(directory, "multihost"))
    writer.set_model(model)
    writer.save()
    kernel = next(v for v in model.trainable_variables
                  if v.path.endswith("experts/kernel_in")).value
    return {
        "process": process,
        "num_processes": jax.process_count(),
        "num_devices": len(jax.devices()),
        "restored_step": state.step,
        "loss": loss,
        "kernel_spec": list(kernel.sharding.spec),
        "kernel_fully_addressable": kernel.is_fully_addressable,
        "local_experts": sorted(
            {expert for shard in kernel.addressable_shards
             for expert in range(kernel.shape[0])[shard.index[0]]}),
    }


def restore(directory):
    model = language_model()
    start = weights(model)
    Checkpointer(os.path.join(directory, "single")).restore(model)
    after_step_1 = weights(model)
    state = Checkpointer(os.path.join(directory, "multihost")).restore(model)
    restored = weights(model)
    expected = np.load(os.path.join(directory, "expected.npz"))
    expected = [expected[f"arr_{i}"] for i in range(len(restored))]
    paths = [v.path for v in model.trainable_variables]
    return {
        "step": state.step,
        "difference": {p: float(np.abs(a - b).max())
                       for p, a, b in zip(paths, restored, expected)},
        "moved": {p: float(np.abs(a - b).max())
                  for p, a, b in zip(paths, expected, after_step_1)},
        "trained": float(max(np.abs(a - b).max()
                             for a, b in zip(after_step_1, start))),
    }


if __name__ == "__main__":
    stage = {"single": single, "multihost": multihost, "restore": restore}
    print(json.dumps(stage[STAGE](sys.argv[2])))

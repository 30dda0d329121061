"""Weak scaling of a MoE language model over a mesh of (virtual) devices.

For each device count n it trains `MoELanguageModel` (LSTM -> MoE -> LSTM)
with `experts_per_device * n` experts on the mesh `batch:1,model:n` (or
`batch:n/m,model:m` with --model_axis=m; or the paper's layout `batch:n`
with experts split over "batch", --expert_axis=batch) made by
`sgmoe.distribute`, with
`sequences_per_device * n` sequences per step: the batch per expert stays
constant, as in Shazeer et al. 2017, §3.1. Each device count runs in its own
process, since JAX fixes the device count when it starts
(XLA_FLAGS=--xla_force_host_platform_device_count=n gives n CPU devices;
on a GPU/TPU host, --platform=gpu uses the real devices, up to their count).

Printed per device count: expert parameters (total and per device), the
step time (median of --repeats compiled Keras train steps: forward,
backward, Adam), the per-device memory of the compiled step as XLA assigns
it (`memory_analysis()`: arguments, i.e. weights, Adam slots and the batch,
plus temporaries, i.e. activations), the expert weights and slots actually
held by device 0, and the bytes the step's collectives move per device, from
the compiled HLO: all of them, the gradient sync of weights replicated over
"batch" (collectives of a weight's per-device shape), and those carrying
token vectors (other [..., d] floats), next to N k d (one copy of every
dispatched token) and to the N E C d that one-hot dispatch/combine einsums
would move.

On CPU the n virtual devices share the host's cores, so the step time grows
with the total work (about n times); on real devices weak scaling means a
flat step time. The memory and communication columns mean the same on both.

    python bench/mesh_scaling.py                  # 1, 2, 4, 8 devices
    python bench/mesh_scaling.py --quick          # tiny sizes, seconds
    python bench/mesh_scaling.py --model_axis=2   # batch:n/2 x model:2
    python bench/mesh_scaling.py --expert_axis=batch   # batch:n, paper's
"""

import json
import math
import os
import subprocess
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts.")
flags.DEFINE_integer("model_axis", 0,
                     "Size of the mesh's model axis; 0 means every device.")
flags.DEFINE_enum("expert_axis", "model", ["model", "batch"],
                  "Axis the experts are split over; 'batch' uses the mesh "
                  "batch:n (the paper's layout) and ignores --model_axis.")
flags.DEFINE_integer("experts_per_device", 4, "Experts per device.")
flags.DEFINE_integer("sequences_per_device", 8,
                     "Sequences per step and device.")
flags.DEFINE_integer("sequence_length", 20, "Timesteps per sequence.")
flags.DEFINE_integer("model_dim", 128, "d: embedding, LSTM and MoE width.")
flags.DEFINE_integer("expert_hidden_dim", 512, "h of each expert.")
flags.DEFINE_integer("k", 2, "Experts per token.")
flags.DEFINE_integer("vocabulary_size", 1000, "V.")
flags.DEFINE_integer("repeats", 10, "Timed steps (after 2 warm-up steps).")
flags.DEFINE_string("platform", "cpu",
                    "cpu: n virtual CPU devices; gpu or tpu: real ones.")
flags.DEFINE_bool("quick", False, "Tiny sizes and 3 repeats: a smoke run.")
flags.DEFINE_bool("show_collectives", False,
                  "Also list every collective of each step (op, shape).")
flags.DEFINE_integer("child", 0, "Internal: measure this device count.")

MIB = 2**20


def mesh_spec(num_devices):
    if FLAGS.expert_axis == "batch":
        return f"batch:{num_devices}"
    model = FLAGS.model_axis or num_devices
    if num_devices % model:
        raise ValueError(f"--model_axis={model} must divide the device "
                         f"count {num_devices}.")
    return f"batch:{num_devices // model},model:{model}"


def measure(num_devices):
    """Runs in the child process: one device count, one JSON line."""
    import time

    import jax
    import keras
    import numpy as np

    from sgmoe.distribute import model_parallel
    from collectives import collectives  # bench/collectives.py
    from sgmoe.models import MoELanguageModel

    devices = jax.devices(FLAGS.platform)[:num_devices]
    mesh = mesh_spec(num_devices)
    distribution = model_parallel(mesh, devices=devices,
                                  expert_axis=FLAGS.expert_axis)
    keras.distribution.set_distribution(distribution)
    num_experts = FLAGS.experts_per_device * num_devices
    batch = FLAGS.sequences_per_device * num_devices
    shape = (batch, FLAGS.sequence_length)
    keras.utils.set_random_seed(0)
    model = MoELanguageModel(
        vocabulary_size=FLAGS.vocabulary_size, model_dim=FLAGS.model_dim,
        moe={"num_experts": num_experts, "k": FLAGS.k,
             "expert_hidden_dim": FLAGS.expert_hidden_dim}, seed=0)
    model.build((None, FLAGS.sequence_length))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)

    rng = np.random.RandomState(0)
    data_layout = distribution.get_data_layout(shape).backend_layout
    x, y = (jax.device_put(rng.randint(1, FLAGS.vocabulary_size, shape)
                           .astype("int32"), data_layout) for _ in range(2))
    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables],
             [v.value for v in model.optimizer.variables],
             [v.value for v in model.metrics_variables])
    replicated = jax.sharding.NamedSharding(data_layout.mesh,
                                            jax.sharding.PartitionSpec())
    state_shardings = jax.tree.map(lambda value: value.sharding, state)
    step = jax.jit(model.train_step, donate_argnums=0,
                   out_shardings=(replicated, state_shardings))
    compiled = step.lower(state, (x, y)).compile()

    times = []
    for repeat in range(FLAGS.repeats + 2):
        start = time.perf_counter()
        logs, state = compiled(state, (x, y))
        jax.block_until_ready(logs)
        if repeat >= 2:
            times.append(time.perf_counter() - start)

    expert_variables = [
        i for i, v in enumerate(model.trainable_variables)
        if "/experts/" in v.path]
    expert_slots = [
        i for i, v in enumerate(model.optimizer.variables)
        if "_experts_" in v.path]
    device = devices[0]

    def bytes_on_device(values):
        return sum(shard.data.nbytes for value in values
                   for shard in value.addressable_shards
                   if shard.device == device)

    expert_parameters = sum(
        math.prod(model.trainable_variables[i].shape)
        for i in expert_variables)
    # Collectives of a weight's per-device shape (in any axis order: XLA
    # may reduce a transposed gradient) sum its gradient over the batch axis
    # (data-parallel gradient sync); they move no tokens.
    weight_shapes = {tuple(sorted(value.addressable_shards[0].data.shape))
                     for value in state[0]}
    memory = compiled.memory_analysis()
    found = collectives(compiled.as_text())
    num_tokens = batch * FLAGS.sequence_length
    capacity = math.ceil(1.25 * num_tokens * FLAGS.k / num_experts)
    if FLAGS.show_collectives:
        for op, dtype, shape, size in found:
            kind = ("gradient" if tuple(sorted(shape)) in weight_shapes else "")
            print(f"  {op} {dtype}{list(shape)} {size / MIB:.3f} MiB {kind}",
                  file=sys.stderr)
    return {
        "devices": num_devices,
        "mesh": mesh,
        "experts": num_experts,
        # Devices the experts are split over.
        "expert_axis_size": distribution.device_mesh.shape[
            0 if FLAGS.expert_axis == "batch" else 1],
        "expert_parameters": expert_parameters,
        "tokens": num_tokens,
        "step_ms": 1000 * float(np.median(times)),
        "loss": float(logs["loss"]),
        "argument_bytes": memory.argument_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "expert_state_bytes_device0": bytes_on_device(
            [state[0][i] for i in expert_variables]
            + [state[2][i] for i in expert_slots]),
        "collective_bytes": sum(size for *_, size in found),
        "gradient_collective_bytes": sum(
            size for op, dtype, shape, size in found
            if tuple(sorted(shape)) in weight_shapes),
        "token_collective_bytes": sum(
            size for op, dtype, shape, size in found
            if dtype.startswith("f") and shape
            and shape[-1] == FLAGS.model_dim
            and tuple(sorted(shape)) not in weight_shapes),
        "nkd_bytes": 4 * num_tokens * FLAGS.k * FLAGS.model_dim,
        "one_hot_bytes": 4 * num_tokens * num_experts * capacity
                         * FLAGS.model_dim,
    }


def run_child(num_devices):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    if FLAGS.platform == "cpu":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_"
                            f"platform_device_count={num_devices}").strip()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")]))
    arguments = [a for a in sys.argv[1:] if not a.startswith("--child")]
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *arguments,
         f"--child={num_devices}"],
        env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{num_devices} devices failed:\n"
                         f"{result.stderr[-4000:]}")
    if FLAGS.show_collectives:
        print(f"{num_devices} devices:\n" + "\n".join(
            line for line in result.stderr.splitlines()
            if line.startswith("  ")))
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.quick:
        FLAGS.model_dim, FLAGS.expert_hidden_dim = 16, 32
        FLAGS.vocabulary_size, FLAGS.sequence_length = 100, 5
        FLAGS.sequences_per_device, FLAGS.repeats = 4, 3
    if FLAGS.child:
        print(json.dumps(measure(FLAGS.child)))
        return
    print(f"MoELanguageModel d={FLAGS.model_dim} h={FLAGS.expert_hidden_dim}"
          f" k={FLAGS.k} V={FLAGS.vocabulary_size}, "
          f"{FLAGS.experts_per_device} experts and "
          f"{FLAGS.sequences_per_device}x{FLAGS.sequence_length} tokens per "
          f"device, Adam; platform {FLAGS.platform}; memory and "
          "collectives per device and step")
    print("| devices | mesh | experts | expert params | per device "
          "| tokens | step ms | args MiB | temp MiB | expert w+slots MiB, "
          "device 0 | collectives MiB | gradient sync MiB | token "
          "collectives MiB | N k d MiB | one-hot N E C d MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
          "|---:|---:|")
    for num_devices in (int(n) for n in FLAGS.devices):
        r = run_child(num_devices)
        print(f"| {r['devices']} | {r['mesh']} | {r['experts']} "
              f"| {r['expert_parameters']:,} "
              f"| {r['expert_parameters'] // r['expert_axis_size']:,} "
              f"| {r['tokens']} | {r['step_ms']:.1f} "
              f"| {r['argument_bytes'] / MIB:.2f} "
              f"| {r['temp_bytes'] / MIB:.2f} "
              f"| {r['expert_state_bytes_device0'] / MIB:.2f} "
              f"| {r['collective_bytes'] / MIB:.2f} "
              f"| {r['gradient_collective_bytes'] / MIB:.2f} "
              f"| {r['token_collective_bytes'] / MIB:.2f} "
              f"| {r['nkd_bytes'] / MIB:.2f} "
              f"| {r['one_hot_bytes'] / MIB:.0f} |", flush=True)


if __name__ == "__main__":
    app.run(main)

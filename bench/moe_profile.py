"""Where a dropless MoE training step spends its time, part by part.

`bench/moe_layer.py --dropless` measures the whole step against the T*k
compute floor. This splits that step, for the same layer (noisy top-k,
k = 2, T = 4096, d = 512, h = 1024, dropless, the gate drawn with N(0, 1)
logits as there), into parts each timed on its own as one compiled
forward+backward pass, round-robin with the floors (medians of --repeats):

* step: the whole layer, as `bench/moe_layer.py` times it;
* router: `NoisyTopKRouter` alone: the clean and noise matmuls, softplus
  noise, top-k, softmax, importance and load losses (gradients to W_g,
  W_noise and the tokens);
* dispatched experts: dispatch, the experts and the combine for a routing
  plan fixed in advance (gradients to the expert weights and the tokens);
* experts: the experts alone on the dispatched rows (buffer plus overflow
  blocks), the part the compute floor stands for;
* compute floor: a dense GEMM pair on the T * k rows;
* batched floor: the same pair as E batched GEMMs of T * k / E rows each
  ([E, m, d] @ [E, d, h] -> relu -> @ [E, h, d]), what the experts would
  cost with perfectly balanced routing and no dispatch at all;
* memory floor: the layer's weights read twice and written once.

Differences give the rest: plan = step - router - dispatched experts (the
sort and the dispatch plan, and what the layer adds around them);
dispatch + combine = dispatched experts - experts.

Usage:
    python bench/moe_profile.py
    python bench/moe_profile.py --num_experts=64 --repeats=3
    python bench/moe_profile.py --quick
    KERAS_BACKEND=jax python bench/moe_profile.py
"""

import gc
import math
import os
import sys

from absl import app
import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moe_layer  # noqa: E402  the timing helpers and the floors

from sgmoe.layers import MixtureOfExperts  # noqa: E402
from sgmoe.layers import dispatch  # noqa: E402

# The flags are bench/moe_layer.py's (--num_tokens, --model_dim,
# --hidden_dim, --k, --num_experts, --repeats, --quick, read through its
# `flag_sizes`); its other flags do not apply here.

PARTS = ("step", "router", "dispatched_experts", "experts",
         "batched_floor", "compute_floor", "memory_floor")


def value_and_grad_step(variables, loss_fn, inputs):
    """A no-argument callable: one compiled forward+backward of
    `loss_fn(inputs)` with respect to `variables` and `inputs`."""
    if moe_layer.backend_name() == "jax":
        import jax

        def stateless_loss(values, x):
            with keras.StatelessScope(
                    state_mapping=list(zip(variables, values))):
                return loss_fn(x)

        step = jax.jit(jax.value_and_grad(stateless_loss, argnums=(0, 1)))
        values = [v.value for v in variables]
        return lambda: step(values, inputs)
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(x)
        return loss, tape.gradient(loss, (variables, x))

    return lambda: step(inputs)


def routing_loss(routing):
    """A scalar that depends on every output of the router."""
    return (moe_layer.output_loss(routing.expert_weights)
            + sum(routing.auxiliary_losses.values(), 0.0))


def batched_floor(num_experts, rows, model_dim, hidden_dim, seed):
    """The dense pair as E batched GEMMs of rows / E rows (rounded up)."""
    per_expert = -(-rows // num_experts)
    weights = [
        keras.random.normal((num_experts, model_dim, hidden_dim), seed=seed)
        / math.sqrt(model_dim),
        keras.random.normal((num_experts, hidden_dim, model_dim), seed=seed)
        / math.sqrt(hidden_dim),
    ]
    inputs = keras.random.normal((num_experts, per_expert, model_dim),
                                 seed=seed)
    step = moe_layer.compile_value_and_grad(moe_layer.dense_pair_loss)
    return lambda: step(weights, inputs)


def profile(num_experts, config):
    """Times the parts for one number of experts; returns {part: ms}."""
    num_tokens, model_dim, hidden_dim, k = (
        config["num_tokens"], config["model_dim"], config["hidden_dim"],
        config["k"])
    seed = keras.random.SeedGenerator(1234)
    inputs = keras.random.normal((num_tokens, model_dim), seed=seed)
    layer = MixtureOfExperts(num_experts, hidden_dim, k=k, dropless=True,
                             seed=0)
    layer.build((num_tokens, model_dim))
    layer.router.kernel.assign(
        keras.random.normal((model_dim, num_experts), seed=seed)
        / math.sqrt(model_dim))
    # The plan of one training-mode routing, fixed for the parts after it.
    routing = layer.router(inputs, training=True)
    plan = dispatch.plan_routing(routing, num_tokens, num_experts,
                                 block_size=layer.block_size)
    expert_inputs = dispatch.dispatch(inputs, plan)
    overflow_rows, row_experts, blocks = dispatch.dispatch_overflow(
        inputs, plan)
    experts = layer.experts

    def run_experts(x):
        return moe_layer.output_loss(
            layer.run_experts(x, plan, training=True, num_tokens=num_tokens))

    def experts_only(buffer):
        outputs, overflow_outputs = experts.call_with_overflow(
            buffer, (overflow_rows, row_experts, blocks), training=True)
        return (moe_layer.output_loss(outputs)
                + moe_layer.output_loss(overflow_outputs))

    runs = {
        "step": moe_layer.layer_train_step(layer, inputs),
        "router": value_and_grad_step(
            layer.router.trainable_variables,
            lambda x: routing_loss(layer.router(x, training=True)), inputs),
        "dispatched_experts": value_and_grad_step(
            experts.trainable_variables, run_experts, inputs),
        "experts": value_and_grad_step(
            experts.trainable_variables, experts_only, expert_inputs),
        "batched_floor": batched_floor(num_experts, num_tokens * k,
                                       model_dim, hidden_dim, seed),
        **moe_layer.floor_runs(layer, num_tokens * k, model_dim, hidden_dim,
                               seed),
    }
    seconds = moe_layer.time_calls(runs, config["repeats"])
    del layer, runs
    gc.collect()
    return {part: seconds[part] * 1e3 for part in PARTS}


HEADERS = ("experts", "step ms", "router ms", "plan ms (rest)",
           "dispatch + combine ms", "experts ms", "batched floor ms",
           "T*k floor ms", "memory floor ms", "step / floor",
           "experts / floor", "experts / batched floor")


def table_row(num_experts, ms):
    floor = max(ms["compute_floor"], ms["memory_floor"])
    plan = ms["step"] - ms["router"] - ms["dispatched_experts"]
    moves = ms["dispatched_experts"] - ms["experts"]
    cells = [num_experts, ms["step"], ms["router"], plan, moves,
             ms["experts"], ms["batched_floor"], ms["compute_floor"],
             ms["memory_floor"], f"{ms['step'] / floor:.2f}x",
             f"{ms['experts'] / floor:.2f}x",
             f"{ms['experts'] / ms['batched_floor']:.2f}x"]
    return "| " + " | ".join(
        f"{cell:.1f}" if isinstance(cell, float) else str(cell)
        for cell in cells) + " |"


def main(argv):
    del argv
    config = moe_layer.flag_sizes()
    num_experts = config.pop("num_experts")
    print(moe_layer.machine_description())
    print(f"T={config['num_tokens']} d={config['model_dim']} "
          f"h={config['hidden_dim']} k={config['k']}, dropless, noisy "
          f"top-k; medians of {config['repeats']} (ms)")
    print("| " + " | ".join(HEADERS) + " |")
    print("|" + "---:|" * len(HEADERS))
    for experts in num_experts:
        print(table_row(experts, profile(experts, config)), flush=True)


if __name__ == "__main__":
    app.run(main)

"""Sharded training on 8 virtual CPU devices, next to the single-device run.

Run as a separate process by test_mesh_sharding.py (XLA_FLAGS must be set
before JAX starts); prints one JSON line with what the test checks:

- "lm": the tiny LSTM-MoE language model (8 experts), one step of SGD with
  momentum on one device and on the mesh batch:2 x model:4: losses, the
  largest difference of each weight, how far each weight moved, and the
  sharding spec of every model and optimizer variable;
- "hierarchical": the same for a small model around a hierarchical MoE of 4
  groups x 2 experts, and which groups each "model" position holds;
- "checkpoints": a checkpoint of the sharded model restored into a
  one-device model and the other way round, then one more step of each;
- "collectives": the collectives XLA inserts into a sharded MoE forward
  pass, for 8 and 32 experts;
- "paper_layout": the "lm" report and the forward collectives on the mesh
  batch:8 with experts split over "batch" (expert_axis="batch");
- "indivisible_experts_error": what creating 2 experts over a "model" axis
  of 4 raises;
- "inference": the sharded tiny LM (capacity factor 0.5, so training
  drops) evaluated on the mesh against the same weights on one device:
  the largest logit difference and each MoE's dropped fraction, whether
  generation (greedy and seeded top-k) gives the same tokens, and whether
  a tiny translation model with sharded experts decodes the same (beam
  search).
"""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", ".."))
from tests.xla_flags import with_devices  # noqa: E402

os.environ["XLA_FLAGS"] = with_devices(8)

import contextlib  # noqa: E402

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from bench.collectives import collectives  # noqa: E402
from sgmoe.distribute import model_parallel  # noqa: E402
from sgmoe.layers import HierarchicalMixtureOfExperts  # noqa: E402
from sgmoe.layers import MixtureOfExperts  # noqa: E402
from sgmoe.models import MoELanguageModel  # noqa: E402
from sgmoe.training import Checkpointer  # noqa: E402

MESH = "batch:2,model:4"
VOCAB, LENGTH, BATCH = 50, 5, 8


def scope(distribution):
    return distribution.scope() if distribution else contextlib.nullcontext()


def spec(variable):
    """The PartitionSpec as a list; None on one device."""
    sharding = variable.value.sharding
    return list(sharding.spec) if hasattr(sharding, "spec") else None


def as_numpy(variables):
    return [np.array(v.value) for v in variables]


def max_differences(variables, values, others):
    """{path: largest |value - other|}, variables matched by position (the
    paths of seed generators differ between models)."""
    return {v.path: float(np.abs(a - b).max(initial=0.0))
            for v, a, b in zip(variables, values, others)}


def optimizer():
    # SGD's first update is -learning_rate * gradient (Adam's first is about
    # -learning_rate * sign(gradient), blind to the gradient's scale), and
    # momentum gives every weight a slot.
    return keras.optimizers.SGD(0.5, momentum=0.9)


def language_model(distribution, token_groups=2):
    """The tiny LM; on one device with the mesh's token groups.

    A capacity factor of 0.5 makes the experts drop assignments, so the
    mesh run matches only if its MoE layer used one token group per
    "batch" shard, as the one-device model is told to.
    """
    keras.utils.set_random_seed(0)
    with scope(distribution):
        model = MoELanguageModel.from_preset(
            "tiny_moe", vocabulary_size=VOCAB,
            moe={"num_experts": 8, "k": 2, "expert_hidden_dim": 32,
                 "capacity_factor": 0.5},
            seed=0)
        if distribution is None:
            moe_layer(model).token_groups = token_groups
        model.build((None, LENGTH))
        model.compile(optimizer=optimizer())
    return model


def moe_layer(model):
    return next(layer for layer in model._flatten_layers()
                if isinstance(layer, MixtureOfExperts))


def hierarchical_model(distribution):
    keras.utils.set_random_seed(0)
    with scope(distribution):
        inputs = keras.Input((LENGTH, 16))
        hidden = keras.layers.Dense(16, name="dense_in")(inputs)
        hidden = hidden + HierarchicalMixtureOfExperts(
            expert_groups=4, experts_per_group=2, k_primary=2, k_secondary=1,
            expert_hidden_dim=32, noisy=False, seed=0, name="moe")(hidden)
        model = keras.Model(inputs,
                            keras.layers.Dense(1, name="dense_out")(hidden))
        model.compile(optimizer=optimizer(), loss="mse")
    return model


def fit_once(model, distribution, x, y):
    with scope(distribution):
        history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False,
                            verbose=0)
    return history.history["loss"][0]


def compare(build, x, y, mesh=MESH, expert_axis="model"):
    """One step on one device and on the mesh: the report and the models."""
    distribution = model_parallel(mesh, expert_axis=expert_axis)
    single, sharded = build(None), build(distribution)
    initial = as_numpy(sharded.trainable_variables)
    losses = [fit_once(single, None, x, y),
              fit_once(sharded, distribution, x, y)]
    report = {
        "losses": losses,
        "difference": max_differences(
            sharded.variables, as_numpy(sharded.variables),
            as_numpy(single.variables)),
        "moved": max_differences(
            sharded.trainable_variables,
            as_numpy(sharded.trainable_variables), initial),
        "dropped_fraction": [
            float(np.array(moe_layer(model).dropped_fraction.value))
            if any(isinstance(layer, MixtureOfExperts)
                   for layer in model._flatten_layers()) else None
            for model in (single, sharded)],
        "specs": {v.path: spec(v) for v in sharded.variables},
        "slot_specs": {v.path: spec(v) for v in sharded.optimizer.variables},
    }
    return report, single, sharded, distribution


def group_placement(layer, distribution):
    """{model position: groups whose experts its shards hold}."""
    mesh = distribution.device_mesh.backend_mesh
    position = {device: (b, m)
                for (b, m), device in np.ndenumerate(mesh.devices)}
    placement = {}
    for shard in layer.experts.kernel_in.value.addressable_shards:
        rows = range(layer.num_experts)[shard.index[0]]
        groups = sorted({row // layer.experts_per_group for row in rows})
        placement.setdefault(str(position[shard.device][1]), []).append(
            groups)
    return placement


def checkpoint_round_trips(single, sharded, distribution, x, y):
    """Sharded -> one device and one device -> sharded, then a step each."""
    report = {}
    with tempfile.TemporaryDirectory() as directory:
        pairs = {"sharded_to_single": (sharded, None),
                 "single_to_sharded": (single, distribution)}
        restored = {}
        for name, (source, target_distribution) in pairs.items():
            writer = Checkpointer(os.path.join(directory, name))
            writer.set_model(source)
            writer.save()
            target = language_model(target_distribution)
            # Outside the distribution's scope, as a script would.
            state = Checkpointer(os.path.join(directory, name)).restore(
                target)
            report[name] = {
                "step": state.step,
                "difference": max_differences(
                    target.variables, as_numpy(target.variables),
                    as_numpy(source.variables)),
                "slot_difference": max_differences(
                    target.optimizer.variables,
                    as_numpy(target.optimizer.variables),
                    as_numpy(source.optimizer.variables)),
                "specs": {v.path: spec(v) for v in target.variables},
                "slot_specs": {v.path: spec(v)
                               for v in target.optimizer.variables},
            }
            restored[name] = (target, target_distribution)
        for name, (model, model_distribution) in restored.items():
            report[name]["next_loss"] = fit_once(model, model_distribution,
                                                 x, y)
            report[name]["iterations"] = int(
                np.array(model.optimizer.iterations.value))
    return report


def forward_collectives(num_experts, num_tokens=512, model_dim=24, k=2,
                        mesh=MESH, expert_axis="model"):
    """Collectives of a jitted MoE forward pass (training) on the mesh, with
    the default (automatic) token groups."""
    distribution = model_parallel(mesh, expert_axis=expert_axis)
    with distribution.scope():
        inputs = keras.Input((model_dim,))
        layer = MixtureOfExperts(num_experts, 40, k=k, seed=0, name="moe",
                                 router_args={"noisy": False})
        model = keras.Model(inputs, layer(inputs))
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        tokens = jax.device_put(
            np.random.RandomState(0).randn(num_tokens, model_dim)
            .astype("float32"),
            distribution.get_data_layout((num_tokens, model_dim))
            .backend_layout)

        def forward(trainable, non_trainable, tokens):
            outputs, _ = model.stateless_call(trainable, non_trainable,
                                              tokens, training=True)
            return ops.sum(outputs)

        text = jax.jit(forward).lower(trainable, non_trainable,
                                      tokens).compile().as_text()
    return [[op, dtype, list(shape), size]
            for op, dtype, shape, size in collectives(text)]


def inference_without_drops(sharded, distribution, ids):
    """Logits, generated tokens and translations of the mesh models and of
    one device with the same weights."""
    training_dropped = float(np.array(moe_layer(sharded).dropped_fraction))
    with distribution.scope():
        sharded_logits = np.array(sharded(ids, training=False))
    single = language_model(None)
    single.set_weights([np.array(w.value) for w in sharded.weights])
    single_logits = np.array(single(ids, training=False))
    prompts = [[1, 7, 3], [1, 9], [1, 4, 4, 8], [1]]
    generated = {}
    for name, sampler in (("greedy", "greedy"), ("top_k", "top_k")):
        with distribution.scope():
            on_mesh = sharded.generate(prompts, max_length=10,
                                       sampler=sampler, seed=3)
        generated[name] = bool(np.array_equal(on_mesh, single.generate(
            prompts, max_length=10, sampler=sampler, seed=3)))
    return {
        "generated_equal": generated,
        "translations_equal": translation_on_the_mesh(distribution),
        "training_dropped": training_dropped,
        "dropped": float(np.array(moe_layer(sharded).dropped_fraction)),
        "single_dropped": float(np.array(moe_layer(single).dropped_fraction)),
        "max_difference": float(np.abs(sharded_logits - single_logits).max()),
        "logit_scale": float(np.abs(single_logits).max()),
    }


def translation_on_the_mesh(distribution):
    """Whether greedy and beam decoding of a tiny translation model with
    sharded experts equal one device's with the same weights."""
    from sgmoe.models import MoETranslationModel

    def build(distribution):
        keras.utils.set_random_seed(1)
        with scope(distribution):
            model = MoETranslationModel.from_preset(
                "tiny", vocabulary_size=VOCAB, seed=1, **{
                    name: {"num_experts": 8, "k": 2, "expert_hidden_dim": 16}
                    for name in ("encoder_moe", "decoder_moe")})
            model.build()
        return model

    sharded, single = build(distribution), build(None)
    equal = {"expert_specs": sorted({
        str(spec(layer.experts.kernel_in)) for layer in sharded.moe_layers()})}
    single.set_weights([np.array(w.value) for w in sharded.weights])
    source = np.random.RandomState(2).randint(4, VOCAB, (4, 6)).astype(
        "int32")
    # Beam search only: its steps are the greedy decoder's, on 3 beams.
    for kind, decode in (("beam", lambda m: m.beam_search(
            source, beam_width=3, max_length=8)),):
        with distribution.scope():
            on_mesh = decode(sharded)["token_ids"]
        equal[kind] = bool(np.array_equal(on_mesh,
                                          decode(single)["token_ids"]))
    return equal


def indivisible_experts_error():
    """The error for 2 experts over a "model" axis of 4."""
    with model_parallel(MESH).scope():
        try:
            MixtureOfExperts(2, 8, k=1, name="moe").build((None, 16))
        except ValueError as error:
            return str(error)
    return None


def main():
    rng = np.random.RandomState(0)
    ids = rng.randint(1, VOCAB, (BATCH, LENGTH)).astype("int32")
    targets = rng.randint(1, VOCAB, (BATCH, LENGTH)).astype("int32")
    lm, single, sharded, distribution = compare(language_model, ids,
                                                targets)

    features = rng.randn(BATCH, LENGTH, 16).astype("float32")
    outputs = rng.randn(BATCH, LENGTH, 1).astype("float32")
    hierarchical, _, sharded_h, distribution_h = compare(
        hierarchical_model, features, outputs)
    hierarchical["placement"] = group_placement(sharded_h.get_layer("moe"),
                                                distribution_h)

    # The paper's layout: batch:8, each device its own experts.
    paper, _, _, _ = compare(
        lambda distribution: language_model(distribution, token_groups=8),
        ids, targets, mesh="batch:8", expert_axis="batch")
    paper["collectives"] = {
        str(e): forward_collectives(e, mesh="batch:8", expert_axis="batch")
        for e in (8, 32)}

    more_ids = rng.randint(1, VOCAB, (BATCH, LENGTH)).astype("int32")
    inference = inference_without_drops(sharded, distribution, more_ids)
    checkpoints = checkpoint_round_trips(single, sharded, distribution,
                                         more_ids, targets)
    print(json.dumps({
        "num_devices": len(jax.devices()),
        "lm": lm,
        "hierarchical": hierarchical,
        "checkpoints": checkpoints,
        "collectives": {str(e): forward_collectives(e) for e in (8, 32)},
        "paper_layout": paper,
        "indivisible_experts_error": indivisible_experts_error(),
        "inference": inference,
    }))


if __name__ == "__main__":
    main()

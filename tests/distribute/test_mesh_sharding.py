"""Mesh parallelism on 8 virtual CPU devices (JAX) and on two TensorFlow
replicas, each in its own process (device counts are fixed when the backend
starts): `mesh_child.py` and `mirrored_child.py`, started together."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHILDREN = ("mesh_child.py", "mirrored_child.py")


@pytest.fixture(scope="module")
def reports():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(
                   filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env.pop("XLA_FLAGS", None)
    running = {name: subprocess.Popen(
        [sys.executable, os.path.join(HERE, name)], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in CHILDREN}
    results = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stdout, stderr)
    return results


def report_of(reports, name):
    returncode, stdout, stderr = reports[name]
    assert returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mesh(reports):
    report = report_of(reports, "mesh_child.py")
    assert report["num_devices"] == 8
    return report


def expected_spec(path, rank):
    """Expert weights split along the expert axis, everything else whole."""
    if "/experts/" in path or "_experts_" in path:
        return ["model"] + [None] * (rank - 1)
    return [None] * rank


def test_expert_weights_and_slots_are_sharded_the_rest_replicated(mesh):
    specs = mesh["lm"]["specs"]
    assert specs["moe_language_model/moe/experts/kernel_in"] == [
        "model", None, None]
    assert specs["moe_language_model/moe/experts/kernel_out"] == [
        "model", None, None]
    assert specs["moe_language_model/moe/experts/bias_in"] == ["model", None]
    assert specs["moe_language_model/moe/router/kernel"] == [None, None]
    assert specs["moe_language_model/lstm_1/lstm_cell/kernel"] == [
        None, None]
    for path, spec in specs.items():
        assert spec == expected_spec(path, len(spec)), path
    # Slot paths are "<optimizer name>/<variable>_momentum".
    slots = {path.split("/", 1)[1]: spec
             for path, spec in mesh["lm"]["slot_specs"].items()}
    assert slots["moe_language_model_moe_experts_kernel_out_momentum"] == [
        "model", None, None]
    assert slots["moe_language_model_lstm_2_lstm_cell_kernel_momentum"] == [
        None, None]
    sharded_slots = [path for path, spec in slots.items()
                     if spec and spec[0] == "model"]
    assert len(sharded_slots) == 4  # kernel_in/out, bias_in/out
    for path, spec in slots.items():
        assert spec == expected_spec(path, len(spec)), path


@pytest.mark.parametrize("model", ["lm", "hierarchical"])
def test_sharded_step_matches_the_single_device_step(mesh, model):
    report = mesh[model]
    np.testing.assert_allclose(report["losses"][1], report["losses"][0],
                               rtol=1e-5)
    for path, difference in report["difference"].items():
        moved = report["moved"].get(path)
        if moved is None:  # non-trainable: statistics, seeds
            assert difference < 1e-5, (path, difference)
        else:
            # Every weight was updated, the same within 0.1% of its update.
            assert moved > 0.0, path
            assert difference <= 1e-3 * moved + 1e-8, (path, difference,
                                                         moved)


def test_mesh_dispatches_one_token_group_per_batch_shard(mesh):
    # The one-device model was given token_groups=2; the mesh model chose
    # its groups itself. Both drop assignments, and drop the same ones, so
    # the step above matching means the mesh grouped its tokens by "batch"
    # shard (one group would drop others).
    single, sharded = mesh["lm"]["dropped_fraction"]
    assert single > 0.0
    assert sharded == single


def test_hierarchical_groups_sit_on_the_model_axis(mesh):
    report = mesh["hierarchical"]
    assert report["specs"]["moe/experts/kernel_in"] == ["model", None, None]
    assert report["specs"]["moe/secondary_w_gate"] == [None, None, None]
    # 4 groups of 2 experts over model:4: position m holds group m, on both
    # "batch" rows of the mesh.
    assert report["placement"] == {str(m): [[m], [m]] for m in range(4)}


@pytest.mark.parametrize("direction",
                         ["sharded_to_single", "single_to_sharded"])
def test_checkpoints_load_across_meshes(mesh, direction):
    report = mesh["checkpoints"][direction]
    assert report["step"] == 1
    for path, difference in report["difference"].items():
        if "seed_generator" not in path:
            assert difference == 0.0, path
    assert max(report["slot_difference"].values()) == 0.0
    sharded = direction == "single_to_sharded"
    kernel = report["specs"]["moe_language_model/moe/experts/kernel_in"]
    slot = report["slot_specs"][
        next(path for path in report["slot_specs"]
             if path.endswith("experts_kernel_in_momentum"))]
    if sharded:
        assert kernel == slot == ["model", None, None]
    else:
        assert kernel is None and slot is None
    # Training continues from step 1, the same on either side.
    assert report["iterations"] == 2
    other = mesh["checkpoints"]["single_to_sharded" if not sharded
                                else "sharded_to_single"]
    np.testing.assert_allclose(report["next_loss"], other["next_loss"],
                               rtol=1e-5)
    assert report["next_loss"] < mesh["lm"]["losses"][0]


def test_dispatch_collectives_move_tokens_k_d_not_experts_capacity(mesh):
    """Forward pass of a MoE layer, N=512 tokens, d=24, k=2, E=8 and 32, on
    batch:2 x model:4.

    Routing is data-parallel (no [N, E] logits move), each device dispatches
    its own "batch" shard's tokens (no tokens move), and the combine reduces
    the N / 2 * k * d values of each shard over "model". What moves per
    device is at most that plus the plan's N * k integers a few times, and
    does not grow with the number of experts.
    """
    num_tokens, model_dim, k, batch_shards = 512, 24, 2, 2
    shard_values = num_tokens // batch_shards * k * model_dim
    token_bytes = {}
    for num_experts, found in mesh["collectives"].items():
        num_experts = int(num_experts)
        assert found, "no collectives: nothing was sharded"
        for op, dtype, shape, size in found:
            assert size <= 4 * shard_values, (op, shape)
            # Neither the logits nor anything else [N, E]-shaped.
            assert list(shape[-2:]) not in (
                [num_tokens, num_experts],
                [num_tokens // batch_shards, num_experts]), (op, shape)
        total = sum(size for *_, size in found)
        assert total <= 4 * shard_values + 3 * 4 * num_tokens * k, found
        token_bytes[num_experts] = sum(
            size for op, dtype, shape, size in found
            if dtype == "f32" and shape and shape[-1] == model_dim)
        capacity = int(np.ceil(1.25 * num_tokens * k / num_experts))
        one_hot_dispatch = 4 * num_tokens * num_experts * capacity * model_dim
        assert token_bytes[num_experts] < one_hot_dispatch / 100
    # What moves the tokens does not grow with the number of experts.
    assert token_bytes[8] == token_bytes[32] == 4 * shard_values


def test_papers_layout_gives_each_device_its_own_experts(mesh):
    report = mesh["paper_layout"]
    specs = report["specs"]
    assert specs["moe_language_model/moe/experts/kernel_in"] == [
        "batch", None, None]
    assert specs["moe_language_model/moe/router/kernel"] == [None, None]
    slots = {path.split("/", 1)[1]: spec
             for path, spec in report["slot_specs"].items()}
    assert slots["moe_language_model_moe_experts_kernel_out_momentum"] == [
        "batch", None, None]
    # One step equals one device's with 8 token groups, drops included.
    np.testing.assert_allclose(report["losses"][1], report["losses"][0],
                               rtol=1e-5)
    single, sharded = report["dropped_fraction"]
    assert single > 0.0 and sharded == single
    for path, difference in report["difference"].items():
        moved = report["moved"].get(path)
        if moved is None:
            assert difference < 1e-5, (path, difference)
        else:
            assert difference <= 1e-3 * moved + 1e-8, (path, difference,
                                                         moved)


def test_papers_layout_dispatches_with_all_to_alls(mesh):
    """Forward pass, N=512 tokens, d=24, k=2, E=8 and 32 on batch:8: each
    device sends its dispatched slots to their experts' devices and gets
    the outputs back, two all-to-alls of its N * k * 1.25 / 8 slots of d
    values; nothing gathers tokens or expert weights."""
    num_tokens, model_dim, k, devices = 512, 24, 2, 8
    slots_per_device = int(np.ceil(1.25 * num_tokens / devices * k))
    moved = {}
    for num_experts, found in mesh["paper_layout"]["collectives"].items():
        carrying_d = [(op, shape, size) for op, dtype, shape, size in found
                      if dtype == "f32" and shape and shape[-1] == model_dim]
        assert carrying_d and all(op == "all-to-all"
                                  for op, _, _ in carrying_d), carrying_d
        moved[num_experts] = sum(size for _, _, size in carrying_d)
        for op, dtype, shape, size in found:
            # Small: routing statistics and the plan's integers.
            assert op == "all-to-all" or size <= 4 * 2 * num_tokens, (
                op, shape)
    assert moved["8"] == moved["32"]
    # Each all-to-all moves the device's slots once (a device keeps 1/8).
    assert moved["8"] <= 2 * 4 * slots_per_device * model_dim


def test_experts_the_model_axis_cannot_split_raise_naming_the_weight(mesh):
    message = mesh["indivisible_experts_error"]
    assert message is not None, "no error"
    assert "'moe/experts/kernel_in' of shape (2, 16, 8) has 2 experts" in (
        message)
    assert "\"model\" axis of size 4 does not divide" in message


def test_tensorflow_data_parallel_step_matches_one_device(reports):
    report = report_of(reports, "mirrored_child.py")
    assert report["strategy"] == "MirroredStrategy"
    assert report["num_replicas"] == 2
    np.testing.assert_allclose(report["losses"][1], report["losses"][0],
                               rtol=1e-5)
    assert report["max_difference"] < 1e-5
    assert report["min_moved"] > 1e-3


def test_inference_on_the_mesh_drops_nothing(mesh):
    # Capacity factor 0.5 drops in training; evaluation on the mesh keeps
    # every assignment and equals one device with the same weights.
    report = mesh["inference"]
    assert report["training_dropped"] > 0.0
    assert report["dropped"] == 0.0 and report["single_dropped"] == 0.0
    assert report["max_difference"] <= 1e-5 * max(1.0, report["logit_scale"])


def test_generation_and_translation_on_the_mesh_equal_one_device(mesh):
    # Expert-parallel inference: experts sharded over "model", the rest
    # replicated; the tokens are those of one device with the same weights.
    report = mesh["inference"]
    assert report["generated_equal"] == {"greedy": True, "top_k": True}
    assert report["translations_equal"] == {
        "beam": True,
        "expert_specs": ["['model', None, None]"]}

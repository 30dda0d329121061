"""FactoredAdam state shards with its variable under keras.distribution.

JAX backend, 8 virtual CPU devices, mesh batch:2 x model:4, expert weights
sharded along the expert axis. Runs `factored_adam_sharded_step.py` in its
own process, since the device count must be set before JAX starts.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess


def test_factored_slots_shard_along_the_expert_axis():
    script = os.path.join(os.path.dirname(__file__),
                          "factored_adam_sharded_step.py")
    # The repository root on the path, so the test does not depend on an
    # installed sgmoe.
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(
                   filter(None, [root, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, script], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["num_devices"] == 8
    assert report["kernel"] == ["model", None, None]
    # [E, d] rows and [E, h] columns keep the kernel's expert sharding.
    assert report["slots"] == {
        "moe_experts_kernel_in_row_second_moment": ["model", None],
        "moe_experts_kernel_in_column_second_moment": ["model", None],
    }
    # One training step gives the single-device weights.
    assert report["max_weight_difference"] < 1e-5

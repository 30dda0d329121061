"""A checkpoint crosses between one device and a two-process JAX run.

`multihost_child.py` runs a one-device step, then the same next step in two
processes (jax.distributed on localhost, 4 CPU devices each, mesh model:8,
so each process holds half of the experts) restored from the one-device
checkpoint, then restores the two-process checkpoint on one device again.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.distribute.launch import communicate_all
from tests.distribute.launch import free_port

pytestmark = pytest.mark.subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHILD = os.path.join(HERE, "multihost_child.py")


def last_json(process_result):
    returncode, stdout, stderr = process_result
    assert returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("multihost"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(
                   filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env.pop("XLA_FLAGS", None)

    def run(*args):
        result = subprocess.run([sys.executable, CHILD, *args], env=env,
                                capture_output=True, text=True, timeout=300)
        return last_json((result.returncode, result.stdout, result.stderr))

    single = run("single", directory)
    port = str(free_port())
    processes = [subprocess.Popen(
        [sys.executable, CHILD, "multihost", directory, str(index), port],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(2)]
    multihost = [last_json(result)
                 for result in communicate_all(processes, timeout=300)]
    restored = run("restore", directory)
    return single, multihost, restored


def test_the_run_spans_two_processes_with_experts_split_across_them(stages):
    _, multihost, _ = stages
    assert [report["process"] for report in multihost] == [0, 1]
    for report in multihost:
        assert report["num_processes"] == 2
        assert report["num_devices"] == 8
        assert report["kernel_spec"] == ["model", None, None]
        # No process holds the whole expert kernel: each saves its shards.
        assert report["kernel_fully_addressable"] is False
    assert multihost[0]["local_experts"] == [0, 1, 2, 3]
    assert multihost[1]["local_experts"] == [4, 5, 6, 7]


def test_a_one_device_checkpoint_resumes_on_two_processes(stages):
    single, multihost, _ = stages
    for report in multihost:
        assert report["restored_step"] == 1
        # Step 2 on the mesh is step 2 on one device.
        np.testing.assert_allclose(report["loss"], single["loss"], rtol=1e-5)


def test_a_two_process_checkpoint_loads_on_one_device(stages):
    _, _, restored = stages
    assert restored["step"] == 2
    assert restored["trained"] > 0.0
    for path, difference in restored["difference"].items():
        moved = restored["moved"][path]
        assert moved > 0.0, path
        # The weights after the two-process step 2, within 0.1% of what
        # the step changed.
        assert difference <= 1e-3 * moved + 1e-8, (path, difference, moved)

"""`train_lm.py --multi_host` in two real JAX processes on this machine.

Two processes (jax.distributed on localhost through Keras's
KERAS_DISTRIBUTION_* variables, Gloo collectives, 2 CPU devices each) train
the tiny model on the mesh batch:2 x model:2, and one process with 4
virtual devices trains it on the same mesh: the same losses, one set of
files in the shared model directory.
"""

import os
import re
import subprocess
import sys

from tests.distribute.test_multihost_checkpoints import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "train_lm.py")
FLAGS = ("--vocabulary_size=500", "--model_dim=32", "--expert_hidden_dim=32",
         "--num_experts=4", "--k=2", "--train_steps=20", "--log_every=10",
         "--checkpoint_every=10", "--mesh=batch:2,model:2")


def environment(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax",
               PYTHONPATH=os.pathsep.join(
                   filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               **extra)
    return env


def results(output):
    """The step losses and the validation perplexity a run printed."""
    losses = re.findall(r"^epoch=\d+ step=(\d+) loss=([\d.]+)", output, re.M)
    perplexity = re.search(r"validation perplexity: ([\d.]+)", output)
    return losses, perplexity and perplexity.group(1)


def test_two_processes_train_like_one(tmp_path):
    port = str(free_port())
    shared = str(tmp_path / "shared")
    processes = [subprocess.Popen(
        [sys.executable, SCRIPT, "--multi_host", f"--model_dir={shared}",
         *FLAGS],
        env=environment(
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES="2",
            KERAS_DISTRIBUTION_PROCESS_ID=str(index)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(2)]
    single = subprocess.run(
        [sys.executable, SCRIPT, f"--model_dir={tmp_path / 'single'}",
         *FLAGS],
        env=environment(
            XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    outputs = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=600)
        finally:
            for other in processes:
                if other.poll() is None and process.returncode != 0:
                    other.kill()
        assert process.returncode == 0, stderr[-3000:]
        outputs.append(stdout)
    assert single.returncode == 0, single.stderr[-3000:]

    expected = results(single.stdout)
    assert len(expected[0]) == 2 and expected[1], single.stdout
    for output in outputs:
        assert results(output) == expected, output
    # One writer: one vocabulary, one TensorBoard log, one saved model.
    assert sorted(os.listdir(shared)) == ["checkpoints", "logs", "model",
                                          "vocabulary.txt"]
    assert len(os.listdir(os.path.join(shared, "logs"))) == 1
    assert sorted(os.listdir(os.path.join(shared, "checkpoints"))) == [
        "latest", "step-10", "step-20"]

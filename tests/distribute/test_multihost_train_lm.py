"""`train_lm.py --multi_host` in two real JAX processes on this machine.

Two processes (jax.distributed on localhost through Keras's
KERAS_DISTRIBUTION_* variables, Gloo collectives, 2 CPU devices each) train
the tiny model on the mesh batch:2 x model:2 into one model directory: both
finish, report the same global losses, and leave one set of files. (That a
multi-process step equals a one-process step is checked, cheaper, by
test_multihost_checkpoints.py.)
"""

import os
import re
import subprocess
import sys

import pytest

from tests.distribute.launch import communicate_all
from tests.distribute.launch import free_port
from tests.helpers import bundled_head
from tests.xla_flags import with_devices

pytestmark = pytest.mark.subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "train_lm.py")
FLAGS = ("--vocabulary_size=500", "--model_dim=32", "--expert_hidden_dim=32",
         "--num_experts=4", "--k=2", "--train_steps=10", "--log_every=5",
         "--checkpoint_every=5", "--mesh=batch:2,model:2")


def environment(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax",
               PYTHONPATH=os.pathsep.join(
                   filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               **extra)
    return env


def results(output):
    """The step losses and the validation perplexity a run printed."""
    losses = re.findall(r"^step=(\d+)/\d+ loss=([\d.]+)", output, re.M)
    perplexity = re.search(r"validation perplexity: ([\d.]+)", output)
    return losses, perplexity and perplexity.group(1)


def test_two_processes_train_together(tmp_path):
    # The first sentences only: with the whole corpus, the vocabulary and
    # the data reads would be most of a tiny run's time.
    flags = FLAGS + (
        f"--train_files={bundled_head(tmp_path, 'train', 4000)}",
        f"--eval_files={bundled_head(tmp_path, 'valid', 64)}")
    port = str(free_port())
    shared = str(tmp_path / "shared")
    processes = [subprocess.Popen(
        [sys.executable, SCRIPT, "--multi_host", f"--model_dir={shared}",
         *flags],
        env=environment(
            XLA_FLAGS=with_devices(2),
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES="2",
            KERAS_DISTRIBUTION_PROCESS_ID=str(index)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(2)]
    outputs = []
    for returncode, stdout, stderr in communicate_all(processes, timeout=600):
        assert returncode == 0, stderr[-3000:]
        outputs.append(stdout)
    # Both report the same global losses and perplexity (a process that
    # had trained alone on its half would not).
    losses, perplexity = results(outputs[0])
    assert len(losses) == 2 and perplexity, outputs[0]
    assert results(outputs[1]) == (losses, perplexity)
    assert float(losses[1][1]) < float(losses[0][1])
    # One writer: one lock, one run manifest, one vocabulary, one
    # TensorBoard log, one saved model.
    assert sorted(os.listdir(shared)) == [
        ".lock", "checkpoints", "logs", "model", "run.json",
        "vocabulary.txt"]
    # One event file of training curves, one of the final validation.
    logs = os.path.join(shared, "logs")
    assert [name for name in os.listdir(logs)
            if name != "validation"] == [
        name for name in os.listdir(logs) if name.startswith("events")]
    assert len(os.listdir(logs)) == 2
    assert len(os.listdir(os.path.join(logs, "validation"))) == 1
    assert sorted(os.listdir(os.path.join(shared, "checkpoints"))) == [
        "latest", "step-10", "step-5"]

"""The demo training script: a short real run that resumes and reloads
(bad input: test_bad_input.py)."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import bundled_head
from tests.training.test_moe_tensorboard import read_events

pytestmark = pytest.mark.subprocess

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCRIPT = os.path.join(ROOT, "scripts", "train_lm.py")
EVALUATE = os.path.join(ROOT, "scripts", "evaluate.py")


def run(*flags, script=SCRIPT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, script, *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


# Without XLA: compiling the train step was 30 of a run's 50 s. The
# compiled step is tested with the models, and the multi-host script test
# runs compiled on JAX.
TINY = ("--vocabulary_size=500", "--model_dim=32", "--expert_hidden_dim=32",
        "--num_experts=4", "--k=2", "--log_every=20", "--checkpoint_every=20",
        "--nojit_compile")


def test_short_run_learns_the_bundled_corpus_and_resumes(tmp_path):
    model_dir = str(tmp_path / "lm")
    valid = bundled_head(tmp_path, "valid", 400)  # evaluated 9 times
    # Validation every 20 steps, the paper's schedule and a changed MoE.
    tiny = TINY + (f"--eval_files={valid}", "--eval_every=20",
                   "--schedule=inverse_sqrt", "--warmup_steps=5",
                   "--learning_rate=5e-3",
                   "--hparams=moe.capacity_factor=2.0,"
                   "moe.eval_capacity_factor=3")
    result = run("--train_steps=40", f"--model_dir={model_dir}", *tiny)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(model_dir, "model", "config.json")) as file:
        moe = json.load(file)["config"]["moe"]
    assert (moe["capacity_factor"], moe["eval_capacity_factor"]) == (2.0, 3)
    assert re.findall(r"^step=(\d+)/40 val_loss=", result.stdout,
                      re.M) == ["20", "40"]
    # The rate applied in step s > 5 is 5e-3 * sqrt(5 / s).
    rates = read_events(os.path.join(model_dir, "logs"))[
        "train/learning_rate"][1]
    assert abs(float(rates[20]) - 5e-3 * (5 / 20) ** 0.5) < 1e-8
    assert abs(float(rates[40]) - 5e-3 * (5 / 40) ** 0.5) < 1e-8
    events = read_events(os.path.join(model_dir, "logs", "validation"))
    assert sorted(events["val/loss"][1]) == [20, 40]
    assert list(events["perplexity"][1]) == [40]  # the final evaluation
    match = re.search(r"validation perplexity: ([\d.]+) \(untrained: ([\d.]+)\)",
                      result.stdout)
    assert match, result.stdout
    trained, untrained = map(float, match.groups())
    # Untrained is about the vocabulary size; 40 steps learn word frequencies.
    assert untrained > 400 and trained < 0.5 * untrained
    assert re.search(r"^step=40/40 loss=", result.stdout, re.M)
    assert sorted(os.listdir(model_dir)) == [
        ".lock", "best", "checkpoints", "logs", "model", "run.json",
        "vocabulary.txt"]

    # The same command with more steps continues from the last checkpoint.
    result = run("--train_steps=60", f"--model_dir={model_dir}", *tiny)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"resumed from .*step-40 at step 40", result.stdout)
    assert "trained 20 steps" in result.stdout
    assert re.search(r"^step=60/60 loss=", result.stdout, re.M)
    resumed = float(re.search(r"validation perplexity: ([\d.]+)",
                              result.stdout).group(1))
    assert resumed < untrained

    # evaluate.py reloads the final model and its vocabulary: the same
    # perplexity on the validation text, and the bundled test split.
    result = run(f"--model_dir={model_dir}", "--nojit_compile",
                 script=EVALUATE)
    assert result.returncode == 0, result.stderr[-2000:]
    test = float(re.search(r"test perplexity: ([\d.]+)",
                           result.stdout).group(1))
    assert test < 0.5 * untrained
    result = run(f"--model_dir={model_dir}", "--max_length=48",
                 f"--eval_files={valid}", "--nojit_compile", script=EVALUATE)
    evaluated = float(re.search(r"test perplexity: ([\d.]+)",
                                result.stdout).group(1))
    assert abs(evaluated - resumed) < 0.051, (evaluated, resumed)

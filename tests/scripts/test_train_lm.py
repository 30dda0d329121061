"""The demo training script: a short real run, and bad input."""

import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCRIPT = os.path.join(ROOT, "scripts", "train_lm.py")


def run(*flags):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, SCRIPT, *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_short_run_learns_the_bundled_corpus():
    result = run("--train_steps=40", "--vocab_size=500", "--model_dim=32",
                 "--expert_hidden_dim=32", "--num_experts=4", "--k=2",
                 "--sequence_length=16")
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r"validation perplexity: ([\d.]+) \(untrained: ([\d.]+)\)",
                      result.stdout)
    assert match, result.stdout
    trained, untrained = map(float, match.groups())
    # Untrained is about the vocabulary size; 40 steps learn word frequencies.
    assert untrained > 400 and trained < 0.5 * untrained


def test_missing_file_exits_with_one_line(tmp_path):
    result = run(f"--train_file={tmp_path}/nothing.txt")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"train_lm: no such file: {tmp_path}/nothing.txt")


def test_empty_and_undecodable_files_exit_with_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    result = run(f"--train_file={empty}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"train_lm: {empty} holds no sentences")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"caf\xe9 au lait\n")
    result = run(f"--train_file={binary}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"train_lm: cannot read {binary}")

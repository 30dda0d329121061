"""scripts/inspect_experts.py on a model that scripts/train_lm.py trained."""

import os
import re

import pytest

from tests.helpers import bundled_head
from tests.scripts.script_runs import SHORT_RUN_JIT
from tests.scripts.script_runs import run_script


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step train_lm run (histograms logged every 2 steps) and text."""
    tmp_path = tmp_path_factory.mktemp("inspect")
    model_dir = str(tmp_path / "lm")
    train = bundled_head(tmp_path, "train", 300)
    result = run_script(
        "train_lm.py", "--preset=tiny_moe", "--vocabulary_size=200",
        "--num_experts=6", "--k=2", "--train_steps=4", "--log_every=2",
        "--batch_size=8", f"--train_files={train}",
        f"--eval_files={bundled_head(tmp_path, 'valid', 20)}",
        f"--model_dir={model_dir}", SHORT_RUN_JIT)
    assert result.returncode == 0, result.stderr[-2000:]
    return model_dir, train


def test_prints_each_experts_words_and_contexts_and_draws_the_load(
        trained, tmp_path):
    model_dir, text = trained
    heatmap = str(tmp_path / "load.png")
    result = run_script("inspect_experts.py", f"--model_dir={model_dir}",
                        f"--text_files={text}", "--max_sentences=100",
                        "--experts=4", "--words=3", "--contexts=2",
                        "--min_count=2", f"--heatmap={heatmap}")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    [header] = re.findall(r"^(\S+): 6 experts, (\d+) assignments of (\d+) "
                          r"tokens in 100 sentences$", out, re.M)
    assert int(header[1]) == 2 * int(header[2])  # k = 2, nothing padded
    experts = re.findall(r"^expert (\d+): ([\d.]+)% of the assignments",
                         out, re.M)
    assert len(experts) == 4 and len({e for e, _ in experts}) == 4
    shares = [float(share) for _, share in experts]
    assert shares == sorted(shares, reverse=True)  # the most used first
    vocabulary = set(open(os.path.join(model_dir, "vocabulary.txt"),
                          encoding="utf-8").read().split())
    for line in re.findall(r"^  words: (.+)$", out, re.M):
        for word, score in re.findall(r"(\S+) ([\d.]+)", line):
            assert word in vocabulary and 0 < float(score) <= 1
    contexts = re.findall(r"^  ([\d.]+)  \.\.\. .*\[(\S+)\]$", out, re.M)
    assert len(contexts) == 4 * 2
    assert all(word in vocabulary for _, word in contexts)
    with open(heatmap, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {heatmap}" in out


def test_bad_input_exits_with_one_line(trained, tmp_path):
    model_dir, text = trained
    missing = run_script("inspect_experts.py",
                         f"--model_dir={tmp_path / 'nothing'}")
    assert missing.returncode != 0
    assert missing.stderr.strip().startswith("inspect_experts: ")
    assert len(missing.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    result = run_script("inspect_experts.py", f"--model_dir={model_dir}",
                        f"--text_files={empty}")
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"inspect_experts: --text_files={empty} holds no sentence")

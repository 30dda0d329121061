"""The text input flags of the scripts: --max_line_length, --on_malformed
and --split_sentences (bad values: test_bad_input.py)."""

import json

from sgmoe import data
from tests.scripts.script_runs import SCRIPTS
from tests.scripts.script_runs import run_script

ANIMALS = ("cat", "dog", "man", "bird", "child")
# A paragraph per line, each longer than --max_length=12 tokens, so only
# its sentences are examples; "tree.The" has a boundary without a space.
PARAGRAPHS = [
    f"the {animal} saw a {thing} . a {thing} saw the {animal} ! "
    f"the {animal} ran to the tree.The {thing} stayed ."
    for animal in ANIMALS for thing in ("tree", "house", "river", "car")]


def test_the_flag_default_is_the_library_default(monkeypatch):
    monkeypatch.syspath_prepend(SCRIPTS)
    import training_flags

    assert (training_flags.DEFAULT_MAX_LINE_LENGTH
            == data.DEFAULT_MAX_LINE_LENGTH)


def test_train_lm_splits_paragraphs_and_skips_malformed_lines(tmp_path):
    text = tmp_path / "paragraphs.txt"
    text.write_bytes("".join(line + "\n" for line in PARAGRAPHS).encode()
                     + b"the cat " * 40 + b"\n" + b"the \xff cat .\n")
    model_dir = tmp_path / "lm"
    result = run_script(
        "train_lm.py", "--preset=tiny_moe", "--vocabulary_size=60",
        "--train_steps=2", "--nojit_compile", f"--train_files={text}",
        f"--eval_files={text}", "--max_length=12", "--split_sentences",
        "--on_malformed=skip", "--max_line_length=200",
        f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    # Checked by the training and the evaluation pipeline, reported once.
    notice = (f"{text}: skipped 2 of 22 lines (1 not UTF-8, 1 longer than "
              "200 bytes)")
    assert result.stdout.splitlines().count(notice) == 1, result.stdout
    words = (model_dir / "vocabulary.txt").read_text().split()
    assert {"tree.", "The", "stayed"} <= set(words)
    assert "tree.The" not in words and "\ufffd" not in words
    with open(model_dir / "run.json") as file:
        setup = json.load(file)["setup"]["data"]
    assert (setup["split_sentences"], setup["on_malformed"],
            setup["max_line_length"]) == (True, "skip", 200)
    assert "validation perplexity: " in result.stdout

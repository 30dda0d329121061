"""The translation training and evaluation scripts: a short real run, BLEU
that evaluate.py reproduces from the saved model, and bad input. The runs
are in this process (`script_runs.run_script`), on the backend the tests
run on."""

import gzip
import math
import os
import re

from tests.scripts.script_runs import ROOT
from tests.scripts.script_runs import run_script

TRAIN = "train_translation.py"
EVALUATE = "evaluate.py"


def run(script, *flags):
    return run_script(script, *flags)


def write_pairs(prefix, pairs):
    for language, side in (("de", 0), ("en", 1)):
        with gzip.open(f"{prefix}.{language}.gz", "wt",
                       encoding="utf-8") as file:
            file.writelines(pair[side] + "\n" for pair in pairs)


def read_pairs(prefix, count):
    sides = []
    for language in ("de", "en"):
        with gzip.open(f"{prefix}.{language}.gz", "rt",
                       encoding="utf-8") as file:
            sides.append([next(file).rstrip("\n") for _ in range(count)])
    return list(zip(*sides))


def bleu(result, kind):
    match = re.search(rf"{kind} BLEU: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr[-2000:]
    return float(match.group(1))


def test_short_run_trains_saves_and_evaluate_reproduces_bleu(tmp_path):
    model_dir = tmp_path / "de_en"
    test_prefix = tmp_path / "test.de-en"
    train_prefix = tmp_path / "train.de-en"
    data = os.path.join(ROOT, "data")
    write_pairs(test_prefix, read_pairs(f"{data}/ding.de-en.valid", 48))
    write_pairs(train_prefix, read_pairs(f"{data}/ding.de-en.train", 2000))
    # No XLA: compiling the recurrent model and its decoder would take
    # longer than the run.
    flags = ("--preset=tiny_pyramid", "--vocabulary_size=400",
             "--train_steps=20", "--log_every=10", "--checkpoint_every=10",
             "--batch_size=32", f"--train_files={train_prefix}",
             f"--model_dir={model_dir}", "--nojit_compile")
    result = run(TRAIN, *flags, f"--test_files={test_prefix}")
    assert result.returncode == 0, result.stderr[-2000:]
    losses = [float(loss) for loss in re.findall(
        r"^step=\d+/\d+ loss=([\d.]+)", result.stdout, re.M)]
    # Two epochs; the second is below the uniform guess over 400 pieces.
    assert len(losses) == 2 and losses[1] < losses[0] < 1.1 * math.log(400)
    assert "translated 48 test pairs" in result.stdout
    assert "nrefs:1|case:mixed|eff:no|tok:13a" in result.stdout
    trained = bleu(result, "test")
    assert sorted(os.listdir(model_dir)) == [
        ".lock", "checkpoints", "logs", "model", "run.json",
        "subwords.model"]
    # BLEU goes to TensorBoard next to the training curves.
    from tests.training.test_moe_tensorboard import read_events

    plugin, values = read_events(model_dir / "logs" / "test")["bleu"]
    assert plugin == "scalars" and list(values) == [20]
    assert abs(float(values[20]) - trained) < 0.006

    # Greedy translations do not depend on the batch, so evaluate.py on the
    # same pairs with the saved model gives the same BLEU.
    result = run(EVALUATE, f"--model_dir={model_dir}", "--beam_width=1",
                 "--nojit_compile",
                 "--batch_size=16", f"--eval_files={test_prefix}",
                 f"--output_file={tmp_path}/hypotheses.en")
    assert result.returncode == 0, result.stderr[-2000:]
    assert bleu(result, "test") == trained
    with open(tmp_path / "hypotheses.en", encoding="utf-8") as file:
        assert len(file.readlines()) == 48

    # Trained on other files than the bundled ones, the run has no default
    # test set (the bundled one would be another corpus, or not exist in
    # its languages): the finished run resumes, and scores nothing.
    result = run(TRAIN, *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stdout and "BLEU" not in result.stdout


def last_line(result):
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


def test_misaligned_files_exit_with_one_line(tmp_path):
    write_pairs(tmp_path / "short.de-en", [("a b", "c d"), ("e", "f")])
    with gzip.open(tmp_path / "short.de-en.en.gz", "wt") as file:
        file.write("c d\n")
    assert last_line(run(
        TRAIN, f"--eval_files={tmp_path}/short.de-en",
        f"--train_files={tmp_path}/short.de-en")) == (
        f"train_translation: {tmp_path}/short.de-en.de.gz: 2 lines, but "
        f"{tmp_path}/short.de-en.en.gz: 1 lines (parallel files must be "
        "line-aligned)")

"""The demo training script: a short real run that resumes and reloads,
--overwrite, and a two-step run that evaluate.py reproduces (bad input:
test_bad_input.py). The runs are in this process
(`script_runs.run_script`), on the backend the tests run on."""

import json
import os
import re

import keras

from tests.helpers import bundled_head
from tests.scripts.script_runs import SHORT_RUN_JIT
from tests.scripts.script_runs import run_script
from tests.scripts.test_bad_input import MANIFEST
from tests.scripts.test_bad_input import TINY_LM
from tests.scripts.test_bad_input import Files
from tests.training.test_moe_tensorboard import read_events


def run(*flags, script="train_lm.py"):
    return run_script(script, *flags)


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
    match = re.search(r"validation perplexity: ([\d.]+) \(untrained: "
                      r"([\d.]+)\)", result.stdout)
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
                 script="evaluate.py")
    assert result.returncode == 0, result.stderr[-2000:]
    test = float(re.search(r"test perplexity: ([\d.]+)",
                           result.stdout).group(1))
    assert test < 0.5 * untrained
    result = run(f"--model_dir={model_dir}", "--max_length=48",
                 f"--eval_files={valid}", "--nojit_compile",
                 script="evaluate.py")
    evaluated = float(re.search(r"test perplexity: ([\d.]+)",
                                result.stdout).group(1))
    assert abs(evaluated - resumed) < 0.051, (evaluated, resumed)


def test_overwrite_deletes_the_old_run_and_starts_afresh(tmp_path):
    files = Files(tmp_path)
    files.run_dir(MANIFEST, checkpoint="checkpoint.json")
    notes = files.write("model_dir/notes.txt", ["the user's own file"])
    result = run(*TINY_LM, f"--train_files={files.train}",
                 f"--eval_files={files.train}",
                 f"--model_dir={files.model_dir}", "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (f"--overwrite: deleted checkpoints, vocabulary.txt, run.json in "
            f"{files.model_dir}") in result.stdout
    with open(os.path.join(files.model_dir, "run.json")) as file:
        assert '"max_length": 48' in file.read()
    assert sorted(os.listdir(os.path.join(files.model_dir, "checkpoints"))
                  ) == ["latest", "step-2"]
    with open(notes) as file:
        assert file.read() == "the user's own file\n"


def test_evaluate_reproduces_the_perplexity_of_a_short_run(tmp_path):
    """Two steps on the backend the tests run on (the JAX pass too):
    train_lm.py saves the model and vocabulary, and evaluate.py reloads
    them to the perplexity train_lm.py reported on the same text."""
    # Every sentence is 7 tokens with <S>: all batches have one shape, so
    # JAX compiles each step once.
    text = Files(tmp_path).train
    model_dir = tmp_path / "lm"
    result = run("--preset=tiny_moe", "--vocabulary_size=60",
                 "--train_steps=2", "--log_every=1", SHORT_RUN_JIT,
                 f"--train_files={text}", f"--eval_files={text}",
                 f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"backend {keras.backend.backend()}," in result.stdout
    assert re.findall(r"^step=(\d+)/2 loss=", result.stdout, re.M) == [
        "1", "2"]
    match = re.search(r"validation perplexity: ([\d.]+) \(untrained: "
                      r"([\d.]+)\)", result.stdout)
    assert match, result.stdout
    trained, untrained = map(float, match.groups())
    # 13 words and 4 special tokens: untrained, about uniform over them.
    assert 12 < untrained < 25 and trained < untrained
    result = run(f"--model_dir={model_dir}", f"--eval_files={text}",
                 SHORT_RUN_JIT, script="evaluate.py")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = float(re.search(r"test perplexity: ([\d.]+)",
                                result.stdout).group(1))
    assert abs(evaluated - trained) < 0.051, (evaluated, trained)


def test_training_shuffles_all_the_training_lines_as_one_block(
        tmp_path, monkeypatch):
    """The bundled corpora are in document order (Brown by genre): by
    default the training stream shuffles every line of --train_files
    together (the library's default block of 10,000 sentences would train
    on one genre after another); --shuffle_block sets the block."""
    from sgmoe import data

    train = bundled_head(tmp_path, "train", 300)
    blocks = []
    dataset = data.language_model_dataset

    def recording(*args, **kwargs):
        if kwargs.get("repeat"):  # the training stream: stop the run here
            blocks.append(kwargs["block_size"])
            raise data.DataError("training stream recorded")
        return dataset(*args, **kwargs)

    monkeypatch.setattr(data, "language_model_dataset", recording)
    for flags in ((), ("--shuffle_block=50",)):
        result = run(*TINY, f"--train_files={train}",
                     f"--eval_files={train}", "--train_steps=2", *flags)
        assert result.returncode == 1
        assert "training stream recorded" in result.stderr
    assert blocks == [300, 50]

"""evaluate.py on bad input, and the output file it writes.

Misaligned parallel files, an unusable --output_file and an evaluation
set that --max_length empties each end the script with one line on
stderr; --output_file is replaced whole. The model directories hold
untrained tiny models, written as the training scripts write them: these
tests need a model evaluate.py can load, not a good one. The runs are in
this process (`script_runs.run_script`), on the backend the tests run on.
"""

import gzip
import os

import pytest

from tests.helpers import bundled_head
from tests.scripts.script_runs import ROOT
from tests.scripts.script_runs import run_script


def run(*flags):
    return run_script("evaluate.py", *flags)


def one_error_line(result):
    """The script's one stderr line."""
    assert result.returncode == 1, (result.returncode, result.stdout)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def ding_lines(split, language, count):
    with gzip.open(os.path.join(ROOT, "data", f"ding.de-en.{split}."
                                f"{language}.gz"), "rt",
                   encoding="utf-8") as file:
        return [next(file) for _ in range(count)]


def write_parallel(prefix, german_lines, english_lines):
    """Writes PREFIX.de and PREFIX.en (plain text); returns PREFIX."""
    for language, count in (("de", german_lines), ("en", english_lines)):
        with open(f"{prefix}.{language}", "w", encoding="utf-8") as file:
            file.writelines(ding_lines("valid", language, count))
    return str(prefix)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """{"translation": dir, "language_model": dir}: MODEL_DIR/model and
    the vocabulary file, as train_translation.py and train_lm.py save
    them."""
    import keras

    from sgmoe import data
    from sgmoe import models
    from sgmoe import training

    directory = tmp_path_factory.mktemp("model_dirs")
    prefix = directory / "train.de-en"
    for language in ("de", "en"):
        (directory / f"train.de-en.{language}").write_text(
            "".join(ding_lines("train", language, 300)), encoding="utf-8")
    subwords = data.SubwordVocabulary.train(
        [f"{prefix}.de", f"{prefix}.en"], vocabulary_size=400,
        character_coverage=0.9995)
    translation_dir = directory / "de_en"
    subwords.save(translation_dir)
    model = models.MoETranslationModel.from_preset(
        "tiny", vocabulary_size=len(subwords), bos_id=subwords.bos_id,
        eos_id=subwords.eos_id)
    model.build()
    training.save_model_preset(model, translation_dir / "model")

    words = data.WordVocabulary.build(bundled_head(directory, "train", 50))
    language_model_dir = directory / "lm"
    words.save(language_model_dir)
    model = models.MoELanguageModel.from_preset(
        "tiny_moe", vocabulary_size=len(words), padding_id=0)
    model(keras.ops.zeros((1, 8), dtype="int32"))
    training.save_model_preset(model, language_model_dir / "model")
    return {"translation": str(translation_dir),
            "language_model": str(language_model_dir)}


def test_misaligned_parallel_files_exit_with_one_line(model_dirs, tmp_path):
    prefix = write_parallel(tmp_path / "eval.de-en", 15, 14)
    line = one_error_line(run(
        f"--model_dir={model_dirs['translation']}", f"--eval_files={prefix}",
        "--beam_width=1", "--nojit_compile"))
    assert line == (f"evaluate: {prefix}.de: 15 lines, but {prefix}.en: 14 "
                    "lines (parallel files must be line-aligned)")


def test_an_unusable_output_file_fails_before_the_model_loads(
        model_dirs, tmp_path):
    prefix = write_parallel(tmp_path / "eval.de-en", 2, 2)
    flags = (f"--model_dir={model_dirs['translation']}",
             f"--eval_files={prefix}", "--beam_width=1", "--nojit_compile")
    missing = tmp_path / "no" / "such" / "dir" / "out.en"
    result = run(*flags, f"--output_file={missing}")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"evaluate: --output_file={missing}: no such directory "
        f"{missing.parent}"]
    result = run(*flags, f"--output_file={tmp_path}")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"evaluate: --output_file={tmp_path} is a directory"]
    if os.geteuid() != 0:  # root may write to any directory
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        result = run(*flags, f"--output_file={locked}/out.en")
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"evaluate: --output_file={locked}/out.en: cannot write to "
            f"{locked} (Permission denied)"]


def test_an_existing_output_file_is_replaced_whole(model_dirs, tmp_path):
    prefix = write_parallel(tmp_path / "eval.de-en", 2, 2)
    output = tmp_path / "out" / "hypotheses.en"
    output.parent.mkdir()
    output.write_text("an older run\n" * 5, encoding="utf-8")
    result = run(f"--model_dir={model_dirs['translation']}",
                 f"--eval_files={prefix}", "--beam_width=1",
                 "--nojit_compile", f"--output_file={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "translated 2 pairs" in result.stdout
    lines = output.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 3 and lines[-1] == ""  # two translations
    assert "an older run" not in lines
    assert os.listdir(output.parent) == ["hypotheses.en"]  # no scratch
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_language_model_refuses_an_output_file(model_dirs, tmp_path):
    line = one_error_line(run(f"--model_dir={model_dirs['language_model']}",
                              f"--output_file={tmp_path}/out.txt"))
    assert line == ("evaluate: --output_file is for translation models; a "
                    "language model writes no text")
    assert os.listdir(tmp_path) == []


def test_no_evaluation_batches_exit_with_one_line(model_dirs, tmp_path):
    text = bundled_head(tmp_path, "valid", 20)
    # Every sentence has a word and <S>: none fits in one token.
    line = one_error_line(run(f"--model_dir={model_dirs['language_model']}",
                              f"--eval_files={text}", "--max_length=1",
                              "--nojit_compile"))
    assert line == ("evaluate: no evaluation batches: every sentence was "
                    "filtered out (by a length limit) or the files are "
                    "empty (--max_length=1 left out 20 sentences)")

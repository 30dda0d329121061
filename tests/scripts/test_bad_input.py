"""Bad input to the scripts, as a new user gives it: every case exits
non-zero with one readable line on stderr, no traceback, and the model
directory exactly as it was (its `.lock` aside, which records the last
process that held it).

The cases run in this process (`script_runs.run_script`: the script's
`main` with its flags parsed from the case's list), on the backend the
tests run on; `test_a_process_exits_with_one_line_and_no_native_logs`
runs three of them as real processes.
"""

import hashlib
import os

import keras
import pytest

from tests.helpers import hold_model_dir_lock
from tests.scripts.script_runs import SCRIPTS
from tests.scripts.script_runs import SHORT_RUN_JIT
from tests.scripts.script_runs import run_process
from tests.scripts.script_runs import run_script

TINY_LM = ("--preset=tiny_moe", "--vocabulary_size=60", "--train_steps=2",
           SHORT_RUN_JIT)
TINY_TRANSLATION = ("--preset=tiny", "--vocabulary_size=290",
                    "--train_steps=2", SHORT_RUN_JIT)
SENTENCES = [f"the {word} saw a {other} ." for word in (
    "cat", "dog", "man", "bird", "child") for other in (
    "tree", "house", "river", "car")]
GERMAN = [f"die {word} sah ein {other} ." for word in (
    "katze", "hund", "frau", "maus", "kind") for other in (
    "baum", "haus", "boot", "auto")]


def tree_digest(path):
    """{relative path: SHA-256 or "dir"} of everything under `path`."""
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        with open(path, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()
    digest = {}
    for root, directories, files in os.walk(path):
        for name in directories:
            digest[os.path.relpath(os.path.join(root, name), path)] = "dir"
        for name in files:
            full = os.path.join(root, name)
            if name != ".lock":
                with open(full, "rb") as file:
                    digest[os.path.relpath(full, path)] = hashlib.sha256(
                        file.read()).hexdigest()
    return digest


class Files:
    """The inputs of one case, under a temporary directory."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.model_dir = str(tmp_path / "model_dir")
        self.train = self.write("train.txt", SENTENCES)
        self.long = self.write("long.txt", [" ".join(["word"] * 30)] * 4)
        for language, lines in (("de", GERMAN), ("en", SENTENCES)):
            self.write(f"pairs.{language}", lines)
        self.pairs = str(tmp_path / "pairs")

    def write(self, name, lines):
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))
        return str(path)

    def run_dir(self, manifest=None, vocabulary=True, checkpoint=None):
        """A model_dir as an earlier LM run left it (vocabulary, run.json,
        a checkpoint), built by hand."""
        os.makedirs(self.model_dir, exist_ok=True)
        if vocabulary:
            self.write("model_dir/vocabulary.txt",
                       ["<pad>", "<S>", "</S>", "<UNK>", "the", "cat"])
        if manifest is not None:
            self.write("model_dir/run.json", [manifest])
        if checkpoint is not None:
            self.write(f"model_dir/checkpoints/step-5/{checkpoint}",
                       ["not a checkpoint"])

    def subword_dir(self, manifest):
        """A model_dir as an earlier translation run left it."""
        from sgmoe.data import SubwordVocabulary

        SubwordVocabulary.train(
            [self.pairs + ".de", self.pairs + ".en"],
            vocabulary_size=290).save(self.model_dir)
        self.write("model_dir/run.json", [manifest])


MANIFEST = ('{"format": "sgmoe-run", "version": 1, "cadence": {}, '
            '"setup": {"data": {"max_length": 7}}}')
LANGUAGES = ('{"format": "sgmoe-run", "version": 1, "cadence": {}, '
             '"setup": {"data": {"languages": ["de", "en"]}}}')

# (id, script, flags (str.format'ed with the Files), prepare, message start
# or {backend: message start})
CASES = [
    # Flags, checked before anything loads.
    ("lm_steps", "train_lm.py", ["--train_steps=0"], None,
     "train_lm: --train_steps must be positive, received 0"),
    ("lm_batch", "train_lm.py", ["--batch_size=-1"], None,
     "train_lm: --batch_size must be positive"),
    ("lm_rate", "train_lm.py", ["--learning_rate=0"], None,
     "train_lm: --learning_rate must be positive"),
    ("lm_vocabulary", "train_lm.py", ["--vocabulary_size=-3"], None,
     "train_lm: --vocabulary_size must be >= 0"),
    ("lm_min_count", "train_lm.py", ["--min_count=-1"], None,
     "train_lm: --min_count must be positive"),
    ("lm_max_length", "train_lm.py", ["--max_length=0"], None,
     "train_lm: --max_length must be positive"),
    ("lm_unknown_flag", "train_lm.py", ["--num_expert=8"], None,
     "train_lm: Unknown command line flag 'num_expert'"),
    ("lm_preset", "train_lm.py", ["--preset=moe_9", "--model_dir={dir}"],
     None, "train_lm: --preset=moe_9: no such preset or directory"),
    ("lm_preset_dir", "train_lm.py", ["--preset={tmp}",
                                      "--model_dir={dir}"],
     None, "train_lm: --preset={tmp}: the directory has no config.json"),
    ("lm_k", "train_lm.py", ["--num_experts=4", "--k=9",
                             "--model_dir={dir}"], None,
     "train_lm: "),
    ("lm_experts", "train_lm.py", ["--num_experts=0", "--model_dir={dir}"],
     None, "train_lm: "),
    ("lm_mesh", "train_lm.py", ["--mesh=model:2"], None,
     {"tensorflow": "train_lm: `mesh`='model:2' asks for expert sharding",
      "jax": "train_lm: `mesh` batch:1,model:2 has 2 devices, but there "
             "are "}),
    ("lm_hparams_key", "train_lm.py", ["--hparams=moe.capacity=2",
                                       "--model_dir={dir}"], "manifest",
     "train_lm: --hparams: Unknown override 'moe.capacity': not an "
     "argument of MixtureOfExperts; valid keys: block_size, "
     "capacity_factor,"),
    ("lm_hparams_data", "train_lm.py", ["--hparams=vocabulary_size=9"],
     None, "train_lm: --hparams: 'vocabulary_size' is set by the script"),
    ("lm_schedule", "train_lm.py", ["--schedule=inverse_sqrt"], None,
     "train_lm: --schedule=inverse_sqrt needs --warmup_steps >= 1"),
    ("lm_eval_every", "train_lm.py", ["--eval_every=-5"], None,
     "train_lm: --eval_every must be >= 0, received -5"),
    ("mt_shuffle_block", "train_translation.py", ["--shuffle_block=-1"],
     None, "train_translation: --shuffle_block must be >= 0, received -1"),
    ("lm_max_line_length", "train_lm.py", ["--max_line_length=0"], None,
     "train_lm: --max_line_length must be positive, received 0"),
    # Data.
    ("lm_missing", "train_lm.py", ["--train_files={tmp}/none.txt"], None,
     "train_lm: {tmp}/none.txt: no such file"),
    ("lm_line_too_long", "train_lm.py", [*TINY_LM, "--train_files={long}",
                                         "--max_line_length=100"], None,
     "train_lm: {long}:1: line longer than --max_line_length=100 bytes "
     "(raise it, or skip such lines with --on_malformed=skip)"),
    ("lm_all_too_long", "train_lm.py", [*TINY_LM, "--train_files={long}",
                                        "--max_length=8"], None,
     "train_lm: {long}: no example with at most max_length=8 tokens"),
    ("lm_eval_too_long", "train_lm.py", [*TINY_LM, "--train_files={train}",
                                         "--eval_files={long}",
                                         "--max_length=8"], None,
     "train_lm: --eval_files={long}: no sentence of at most "
     "--max_length=8 tokens"),
    # The model directory.
    ("lm_dir_is_file", "train_lm.py", [*TINY_LM, "--model_dir={train}"],
     None, "train_lm: --model_dir={train}: not a directory"),
    ("lm_dir_under_file", "train_lm.py",
     [*TINY_LM, "--model_dir={train}/run"], None,
     "train_lm: --model_dir={train}/run: "),
    ("lm_dir_in_use", "train_lm.py", [*TINY_LM, "--train_files={train}",
                                      "--eval_files={train}",
                                      "--model_dir={dir}"], "lock",
     "train_lm: {dir} is in use by another run (pid "),
    ("lm_changed_setup", "train_lm.py",
     [*TINY_LM, "--train_files={train}", "--eval_files={train}",
      "--model_dir={dir}"], "manifest",
     "train_lm: {dir} holds a run started with another setup: "
     "data.max_length was 7, now 48"),
    ("lm_vocabulary_gone", "train_lm.py",
     [*TINY_LM, "--train_files={train}", "--eval_files={train}",
      "--model_dir={dir}"], "no_vocabulary",
     "train_lm: {dir}/vocabulary.txt: no such file, but {dir} holds a run "
     "trained with it"),
    ("lm_bad_manifest", "train_lm.py",
     [*TINY_LM, "--train_files={train}", "--eval_files={train}",
      "--model_dir={dir}"], "bad_manifest",
     "train_lm: {dir}/run.json: not a readable run manifest"),
    ("lm_corrupt_checkpoints", "train_lm.py",
     [*TINY_LM, "--train_files={train}", "--eval_files={train}",
      "--model_dir={dir}"], "corrupt_checkpoint",
     "train_lm: No usable checkpoint in {dir}/checkpoints"),
    # Translation.
    ("mt_steps", "train_translation.py", ["--log_every=0"], None,
     "train_translation: --log_every must be positive"),
    ("mt_same_languages", "train_translation.py",
     ["--source_language=en", "--target_language=en"], None,
     "train_translation: --source_language and --target_language are both "
     "'en'"),
    ("mt_hold", "train_translation.py", ["--hold_steps=8000"], None,
     "train_translation: --hold_steps is for --schedule=inverse_sqrt, not "
     "--schedule=constant"),
    ("mt_hparams_key", "train_translation.py",
     ["--hparams=moe.router_args.foo=1", "--model_dir={dir}"], "manifest",
     "train_translation: --hparams: Unknown override "
     "'moe.router_args.foo': not an argument of NoisyTopKRouter"),
    ("mt_preset", "train_translation.py", ["--preset=huge"], None,
     "train_translation: --preset=huge: no such preset or directory"),
    ("mt_vocabulary", "train_translation.py",
     ["--train_files={pairs}", "--eval_files={pairs}",
      "--vocabulary_size=100"], None,
     "train_translation: {pairs}.de,{pairs}.en: cannot learn 100 subwords: "
     "the characters to cover need 283 pieces (character_coverage=0.9995); "
     "raise vocabulary_size or lower character_coverage"),
    ("mt_missing", "train_translation.py",
     ["--train_files={tmp}/nothing"], None,
     "train_translation: {tmp}/nothing.de[.gz]: no file matches this "
     "pattern"),
    ("mt_line_too_long", "train_translation.py",
     [*TINY_TRANSLATION, "--train_files={pairs}", "--eval_files={pairs}",
      "--max_line_length=20"], None,
     "train_translation: {pairs}.de:1: line longer than "
     "--max_line_length=20 bytes (raise it, or skip such lines with "
     "--on_malformed=skip)"),
    ("mt_all_too_long", "train_translation.py",
     [*TINY_TRANSLATION, "--train_files={pairs}", "--eval_files={pairs}",
      "--max_length=2"], None,
     "train_translation: {pairs}.de, {pairs}.en: no example with at most "
     "max_length=2 tokens"),
    # Evaluation.
    ("ev_beam", "evaluate.py", ["--model_dir={dir}", "--beam_width=0"],
     None, "evaluate: --beam_width must be positive, received 0"),
    ("ev_unknown_flag", "evaluate.py", ["--model_dir={dir}", "--beam=4"],
     None, "evaluate: Unknown command line flag 'beam'"),
    ("ev_no_model", "evaluate.py", ["--model_dir={dir}"], "manifest",
     "evaluate: {dir}/model/config.json: no such file (train with "
     "--model_dir first"),
    ("ev_output_dir", "evaluate.py", ["--model_dir={dir}",
                                      "--output_file={tmp}/no/out.txt"],
     "manifest", "evaluate: --output_file={tmp}/no/out.txt: no such "
     "directory"),
    # Rebuilding the bundled corpora.
    ("pd_corrupt_tarball", "prepare_data.py",
     ["--corpora=brown", "--brown_tarball={long}", "--output_dir={dir}"],
     "manifest", "prepare_data: cannot read {long} (Not a gzipped file"),
    ("pd_not_a_deb", "prepare_data.py",
     ["--corpora=ding", "--ding_deb={long}", "--output_dir={dir}"],
     "manifest", "prepare_data: {long} is not a Debian package"),
    ("pd_missing_deb", "prepare_data.py",
     ["--corpora=ding", "--ding_deb={tmp}/none.deb", "--output_dir={dir}"],
     "manifest", "prepare_data: no such file: {tmp}/none.deb"),
    ("pd_corpus", "prepare_data.py", ["--corpora=wiki"], None,
     "prepare_data: unknown corpora ['wiki']"),
    ("mt_reversed", "train_translation.py",
     [*TINY_TRANSLATION, "--train_files={pairs}", "--eval_files={pairs}",
      "--source_language=en", "--target_language=de",
      "--model_dir={dir}"], "languages",
     "train_translation: {dir} holds a run started with another setup: "
     'data.languages[0] was "de", now "en"'),
]


def prepare(files, kind):
    """Sets up the case's model_dir; returns a process to stop, or None."""
    if kind == "lock":
        return hold_model_dir_lock(files.model_dir)
    if kind == "manifest":
        files.run_dir(MANIFEST)
    elif kind == "no_vocabulary":
        files.run_dir(MANIFEST, vocabulary=False)
    elif kind == "bad_manifest":
        files.run_dir("{not json")
    elif kind == "corrupt_checkpoint":
        files.run_dir(checkpoint="checkpoint.json")
    elif kind == "languages":
        files.subword_dir(LANGUAGES)
    return None


def case_names(files, tmp_path):
    """What the cases' flags and messages name, for `str.format`."""
    return {"tmp": str(tmp_path), "dir": files.model_dir,
            "train": files.train, "long": files.long, "pairs": files.pairs}


def run_case(tmp_path, case, run):
    """Runs `case` with `run` (in this process or in a new one); returns
    the result, the message start expected, and the digests of the model
    directory before and after."""
    _, script, flags, kind, message = case
    if isinstance(message, dict):
        message = message[keras.backend.backend()]
    files = Files(tmp_path)
    names = case_names(files, tmp_path)
    holder = prepare(files, kind)
    before = tree_digest(files.model_dir)
    try:
        result = run(script, *[flag.format(**names) for flag in flags])
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    return (result, message.format(**names), before,
            tree_digest(files.model_dir))


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_exits_with_one_line_and_keeps_the_model_dir(
        tmp_path, case):
    result, message, before, after = run_case(tmp_path, case, run_script)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stdout[-2000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(message), lines[0]
    assert after == before


# A flag error in train_lm.py (absl's parser, before TensorFlow loads), and
# errors after TensorFlow, Keras and sgmoe load in train_translation.py and
# evaluate.py.
PROCESS_CASES = ("lm_unknown_flag", "mt_preset", "ev_no_model")


@pytest.mark.subprocess
@pytest.mark.parametrize("case_id", PROCESS_CASES)
def test_a_process_exits_with_one_line_and_no_native_logs(tmp_path,
                                                           case_id):
    """The process boundary: exit status 1, and on stderr only the
    script's line, in an environment that does not quiet TensorFlow
    (TF_CPP_MIN_LOG_LEVEL unset: the scripts set it themselves)."""
    [case] = [case for case in CASES if case[0] == case_id]
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    result, message, before, after = run_case(
        tmp_path, case,
        lambda script, *flags: run_process(script, *flags, env=env))
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stdout[-2000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(message), lines[0]
    assert result.stdout == ""
    assert after == before


def test_a_traceback_is_not_taken_for_a_clean_exit(monkeypatch):
    """`run_script` lets an exception other than SystemExit through, so a
    case fails when a script loses its one line to a traceback."""
    monkeypatch.syspath_prepend(SCRIPTS)
    import training_flags

    def check_training_flags(fail, positive=()):
        raise RuntimeError("not a clean exit")

    monkeypatch.setattr(training_flags, "check_training_flags",
                        check_training_flags)
    with pytest.raises(RuntimeError, match="not a clean exit"):
        run_script("train_lm.py", "--train_steps=0")


def test_flags_of_one_run_do_not_reach_the_next():
    """Each run parses its own flags from the defaults, whichever script
    ran before: the checks run in the order train_steps, batch_size,
    learning_rate, so a leaked --batch_size=-1 would be reported first."""
    for script, flag, message in (
            ("train_lm.py", "--batch_size=-1",
             "train_lm: --batch_size must be"),
            ("evaluate.py", "--beam_width=0",
             "evaluate: --beam_width must be"),
            ("train_lm.py", "--learning_rate=0",
             "train_lm: --learning_rate must be"),
            ("train_translation.py", "--learning_rate=0",
             "train_translation: --learning_rate must be")):
        result = run_script(script, flag, "--model_dir=/nonexistent")
        assert result.returncode == 1
        assert result.stderr.startswith(message), result.stderr


def test_the_backend_is_the_flag_else_the_environment_else_jax(monkeypatch):
    """--backend wins over $KERAS_BACKEND, which wins over the default,
    jax (installed here). Keras is loaded in this process already, so a
    run on any other backend than this one ends with one line; a run on
    this one goes on to the next check (the bad preset)."""
    loaded = keras.backend.backend()
    other = {"jax": "tensorflow", "tensorflow": "jax"}[loaded]
    mismatch = (f"train_translation: the run is to use Keras's {other} "
                f"backend (--backend), but Keras is already loaded with "
                f"{loaded}")
    preset = "train_translation: --preset=huge: no such preset"

    def last_line(*flags):
        result = run_script("train_translation.py", "--preset=huge", *flags)
        assert result.returncode == 1
        return result.stderr.strip().splitlines()[-1]

    monkeypatch.setenv("KERAS_BACKEND", loaded)
    assert last_line().startswith(preset)
    assert last_line(f"--backend={other}") == mismatch
    monkeypatch.setenv("KERAS_BACKEND", other)
    assert last_line() == mismatch
    assert last_line(f"--backend={loaded}").startswith(preset)
    monkeypatch.delenv("KERAS_BACKEND")
    assert last_line().startswith(preset if loaded == "jax" else mismatch)
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert last_line() == ("train_translation: KERAS_BACKEND=torch: the "
                           "scripts run on jax or tensorflow")

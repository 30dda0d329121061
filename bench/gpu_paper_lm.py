"""Table 7 at the paper's width on one GPU, and the inference speed of the
trained models: one prepared, time-boxed run (issues 19 and 20).

The GPU machines lent to this project run JAX without TensorFlow and for a
few minutes at a time, so this script splits the work in three:

    # here (TensorFlow reads the text): fixed-shape batches of word ids
    python bench/gpu_paper_lm.py prepare --out=runs/gpu_data
    # there (JAX only): every (model, seed) at once, one process each
    KERAS_BACKEND=jax python bench/gpu_paper_lm.py run \\
        --data=runs/gpu_data --out_dir=$OUT --budget_seconds=480
    # here again: the tables, from the rows that came back
    python bench/gpu_paper_lm.py report --rows=<OUT>/rows.json

`run` starts one worker process per (model, seed); they share the GPU.
Each worker compiles, trains `--calibration_steps` steps, reports its
seconds per step and waits; the driver then gives every worker the same
number of training steps, the most that the slowest one finishes inside
the training part of the budget (the steps already taken count). So all
models see the same batches for the same number of steps, as in the
paper's Table 7. A worker still training at the deadline stops there and
its row says so (`complete: false`). Then each worker evaluates the test
perplexity (exact softmax). Last, for the first seed of each model, the
workers compile `generate` and take turns on an otherwise idle GPU to
time greedy generation at batch 1 (latency per token) and at
`--inference_batch` (throughput), as bench/inference.py does on a CPU.

The models are those of bench/paper_lm.py at `--model_dim` (the paper's
512 by default), plus `4xLSTM-1024` (4xLSTM at twice the width, four
times the ops): the dense model to match the MoE's quality for the
inference comparison of DeepSpeed-MoE.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# Workers share one GPU: nobody takes 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
DATA_DIR = os.path.join(ROOT, "data")
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

# label -> (preset of paper_lm.CAPACITY_MODELS, width multiple of model_dim)
EXTRA_MODELS = {"4xLSTM-1024": ("4xlstm_512", 2)}
DEFAULT_MODELS = ("4xLSTM,MoE-1-Wide,MoE-4,MoE-32,MoE-256,MoE-256-h,"
                  "4xLSTM-1024")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="Batches of word ids.")
    prepare.add_argument("--out", default=os.path.join(ROOT, "runs",
                                                       "gpu_data"))
    prepare.add_argument("--train_files", default=os.path.join(
        DATA_DIR, "manuals.train.txt.gz"))
    prepare.add_argument("--test_files", default=os.path.join(
        DATA_DIR, "manuals.test.txt.gz"))
    prepare.add_argument("--vocabulary_size", type=int, default=10000)
    prepare.add_argument("--batch_size", type=int, default=256,
                         help="Sentences per step (512 ran 21 runs out of "
                         "an H200's memory; docs/gpu_lm.md).")
    prepare.add_argument("--max_length", type=int, default=48)
    prepare.add_argument("--bucket_boundaries", default="24",
                         help="Padded lengths below --max_length (each is "
                         "one compilation of the training step).")
    prepare.add_argument("--max_train_batches", type=int, default=0,
                         help="0: one whole pass over --train_files.")
    prepare.add_argument("--max_test_batches", type=int, default=0)

    run = commands.add_parser("run", help="The time-boxed GPU run.")
    run.add_argument("--data", default=os.path.join(ROOT, "runs",
                                                    "gpu_data"))
    run.add_argument("--out_dir", required=True,
                     help="Gets rows.json and workers.log only.")
    run.add_argument("--work_dir", default="",
                     help="The workers' files; default: a new temporary "
                     "directory.")
    run.add_argument("--models", default=DEFAULT_MODELS)
    run.add_argument("--seeds", default="1,2,3")
    run.add_argument("--model_dim", type=int, default=512)
    run.add_argument("--learning_rate", type=float, default=1e-3)
    run.add_argument("--budget_seconds", type=float, default=480)
    run.add_argument("--train_fraction", type=float, default=0.7,
                     help="Share of the budget by which training ends.")
    run.add_argument("--compile_fraction", type=float, default=0.45,
                     help="Share of the training time by which a worker "
                     "must have compiled its training step.")
    run.add_argument("--calibration_steps", type=int, default=30)
    run.add_argument("--step_margin", type=float, default=0.7,
                     help="Share of the training time left after "
                     "calibration that the common step count is planned "
                     "to fill at the slowest worker's pace.")
    run.add_argument("--max_train_steps", type=int, default=0,
                     help="0: as many as the budget allows.")
    run.add_argument("--inference_batch", type=int, default=64)
    run.add_argument("--prompt_length", type=int, default=8)
    run.add_argument("--new_tokens", type=int, default=56)
    run.add_argument("--repeats", type=int, default=5)
    run.add_argument("--eval_batch", type=int, default=128,
                     help="Rows per evaluation step (test batches are cut "
                     "into pieces of this many: less memory at once).")

    worker = commands.add_parser("worker")
    worker.add_argument("--spec", required=True)

    report = commands.add_parser("report", help="Tables from the rows.")
    report.add_argument("--rows", required=True)
    report.add_argument("--out", default=os.path.join(ROOT, "docs",
                                                      "gpu_lm.md"))
    report.add_argument("--device_command", default="",
                        help="The device command, quoted in the table.")
    args = parser.parse_args(argv)
    if args.command == "run":
        try:
            args.seeds = [int(seed) for seed in args.seeds.split(",")]
        except ValueError:
            parser.error(f"--seeds must be comma-separated integers, "
                         f"received {args.seeds!r}")
        if not 0 < args.step_margin <= 1:
            parser.error("--step_margin must be in (0, 1]")
        for name in ("model_dim", "budget_seconds", "calibration_steps",
                     "inference_batch", "prompt_length", "new_tokens",
                     "repeats", "eval_batch"):
            if getattr(args, name) <= 0:
                parser.error(f"--{name} must be positive")
    return args


# ---------------------------------------------------------------- prepare


def _stack(batches, eos_id):
    """{length: uint16 [n, batch, length + 1]} and the order (bucket
    length, index) of `batches` of (inputs, targets).

    A stored row is `<S>`, the words, `</S>`, then padding: the first
    input followed by the targets. The inputs are that row without its
    last column and with `</S>` made padding again (`_split`), because an
    input row ends where its targets have `</S>`."""
    groups, order = {}, []
    for inputs, targets in batches:
        inputs, targets = np.asarray(inputs), np.asarray(targets)
        sequence = np.concatenate([inputs[:, :1], targets], axis=1)
        restored = _split(sequence, eos_id)
        if not (np.array_equal(restored[0], inputs)
                and np.array_equal(restored[1], targets)):
            raise SystemExit("gpu_paper_lm: the dataset's inputs are not "
                             "<S> + the targets before </S>; cannot store "
                             "them as one row")
        length = inputs.shape[1]
        order.append((length, len(groups.setdefault(length, []))))
        groups[length].append(sequence.astype("uint16"))
    return ({length: np.stack(rows) for length, rows in groups.items()},
            np.array(order, "int32"))


def _split(sequence, eos_id):
    """(inputs, targets) of stored rows (see `_stack`)."""
    inputs = sequence[:, :-1]
    return np.where(inputs == eos_id, 0, inputs), sequence[:, 1:]


def _padded(batches, batch_size):
    """Evaluation batches with every short batch padded with empty rows
    (all padding: nothing to score), so shapes stay static."""
    for inputs, targets in batches:
        inputs, targets = np.asarray(inputs), np.asarray(targets)
        missing = batch_size - inputs.shape[0]
        if missing:
            inputs = np.pad(inputs, ((0, missing), (0, 0)))
            targets = np.pad(targets, ((0, missing), (0, 0)))
        yield inputs, targets


def prepare(args):
    from sgmoe import data

    if args.vocabulary_size > 65536:
        raise SystemExit("gpu_paper_lm: ids are stored as uint16; "
                         "--vocabulary_size must be at most 65536")
    os.makedirs(args.out, exist_ok=True)
    vocabulary = data.WordVocabulary.build(
        args.train_files, vocabulary_size=args.vocabulary_size)
    boundaries = [int(value) for value in args.bucket_boundaries.split(",")
                  if value]
    options = dict(bucket_boundaries=boundaries)
    # The whole training text as one shuffle block: the bundled corpora
    # are in document order.
    train = data.language_model_dataset(
        args.train_files, vocabulary, args.batch_size, args.max_length,
        shuffle=True, seed=0, drop_remainder=True,
        block_size=data.count_lines(args.train_files), **options)
    test = data.language_model_dataset(
        args.test_files, vocabulary, args.batch_size, args.max_length,
        **options)
    if args.max_train_batches:
        train = train.take(args.max_train_batches)
    if args.max_test_batches:
        test = test.take(args.max_test_batches)
    arrays, summary = {"eos_id": np.array(vocabulary.eos_id)}, {}
    for split, batches in (("train", train.as_numpy_iterator()),
                           ("test", _padded(test.as_numpy_iterator(),
                                            args.batch_size))):
        groups, order = _stack(batches, vocabulary.eos_id)
        arrays[f"{split}_order"] = order
        for length, stacked in groups.items():
            arrays[f"{split}_{length}"] = stacked
        summary[split] = {
            "batches": len(order),
            "target tokens": int(sum(np.count_nonzero(stacked[..., 1:])
                                     for stacked in groups.values())),
        }
    np.savez_compressed(os.path.join(args.out, "batches.npz"), **arrays)
    summary.update(
        vocabulary_size=len(vocabulary), batch_size=args.batch_size,
        max_length=args.max_length, bucket_boundaries=boundaries,
        train_files=os.path.relpath(args.train_files, ROOT),
        test_files=os.path.relpath(args.test_files, ROOT))
    with open(os.path.join(args.out, "summary.json"), "w") as file:
        json.dump(summary, file, indent=1)
    print(json.dumps(summary))


# ---------------------------------------------------------------- worker


class Batches:
    """The prepared batches of one split, in a seed's order."""

    def __init__(self, data, split, seed=None):
        if "eos_id" not in data.files:
            raise SystemExit("gpu_paper_lm: these batches come from an "
                             "earlier `prepare`, which lost every </S> "
                             "target; run `prepare` again")
        self.eos_id = int(data["eos_id"])
        self.order = data[f"{split}_order"]
        self.groups = {int(key.rsplit("_", 1)[1]): data[key]
                       for key in data.files
                       if key.startswith(f"{split}_")
                       and not key.endswith("order")}
        self.seed = seed
        self._permutation = (None, None)

    def __len__(self):
        return len(self.order)

    def __call__(self, step):
        """(inputs, targets) int32 of the step-th batch; epochs after the
        first are new permutations of the seed."""
        epoch, index = divmod(step, len(self.order))
        if self.seed is None:
            position = index
        else:
            if self._permutation[0] != epoch:
                self._permutation = (epoch, np.random.default_rng(
                    [self.seed, epoch]).permutation(len(self.order)))
            position = self._permutation[1][index]
        return self.batch(position)

    def batch(self, position):
        """(inputs, targets) int32 of the batch at `position` of the
        prepared order."""
        length, row = self.order[position]
        return _split(self.groups[int(length)][row].astype("int32"),
                      self.eos_id)

    def shapes(self):
        """Positions (for `batch`) of one batch of each padded length."""
        seen = {}
        for position, (length, _) in enumerate(self.order):
            seen.setdefault(int(length), position)
        return sorted(seen.values())


def _write_json(path, value):
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(value, file)
    os.replace(temporary, path)


def _wait_for(path, deadline):
    while not os.path.exists(path):
        if time.time() > deadline:
            return None
        time.sleep(0.2)
    with open(path) as file:
        return json.load(file)


def build_model(spec, vocabulary_size):
    import keras

    from paper_lm import CAPACITY_MODELS
    from paper_lm import _widths
    from sgmoe import models
    from sgmoe.models.config_overrides import merge
    from sgmoe.models.language_model_presets import PRESETS

    label, model_dim = spec["model"], spec["model_dim"]
    table = {label: (preset, widths) for label, preset, widths
             in CAPACITY_MODELS}
    if label in EXTRA_MODELS:
        preset, multiple = EXTRA_MODELS[label]
        table[label] = (preset, {})
        model_dim *= multiple
    preset, widths = table[label]
    keras.utils.set_random_seed(spec["seed"])
    model = models.MoELanguageModel(**merge(PRESETS[preset], dict(
        _widths(preset, widths, model_dim), vocabulary_size=vocabulary_size,
        model_dim=model_dim, num_sampled=None, padding_id=0,
        seed=spec["seed"])))
    model.build((None, None))
    model.compile(optimizer=keras.optimizers.Adam(spec["learning_rate"]),
                  metrics=[models.Perplexity(padding_id=0)],
                  jit_compile=True)
    return model


def worker(args):
    """One (model, seed): calibrate, train, evaluate, time generation,
    talking to the driver through files in the spec's directory."""
    with open(args.spec) as file:
        spec = json.load(file)
    directory, name = spec["directory"], spec["name"]

    def path(suffix):
        return os.path.join(directory, f"{name}.{suffix}")

    import keras

    from sgmoe import models

    keras.config.disable_interactive_logging()
    data = np.load(spec["data"])
    train = Batches(data, "train", seed=spec["seed"])
    test = Batches(data, "test")
    import jax

    row = {"model": spec["model"], "seed": spec["seed"],
           "device": jax.devices()[0].device_kind,
           "versions": f"keras {keras.__version__}, jax {jax.__version__}"}
    start = time.time()
    model = build_model(spec, spec["vocabulary_size"])
    config = model.get_config()
    row.update(parameters=models.count_parameters(config),
               **{"ops/timestep": models.ops_per_timestep(config)})
    step = 0
    warm_up = train.shapes()
    for position in warm_up:  # compiles every shape: untimed extra steps
        _train_step(model, *train.batch(position))
    row["compile seconds"] = time.time() - start
    row["warm-up steps"] = len(warm_up)

    def train_until(steps, deadline):
        nonlocal step
        words, begin = 0, time.time()
        while step < steps and time.time() < deadline:
            inputs, targets = train(step)
            _train_step(model, inputs, targets)
            words += int(np.count_nonzero(targets))
            step += 1
        return words, time.time() - begin

    _write_json(path("compiled_training"), {})
    if _wait_for(os.path.join(directory, "calibrate.json"),
                 spec["train_deadline"]) is None:
        return
    calibration = train_until(spec["calibration_steps"],
                              spec["train_deadline"])
    _write_json(path("calibrated"),
                {"seconds per step": calibration[1] / max(step, 1)})
    go = _wait_for(os.path.join(directory, "go.json"),
                   spec["train_deadline"])
    steps = go["train_steps"] if go else step
    words, seconds = train_until(steps, spec["train_deadline"])
    row.update({
        "train steps": step, "complete": step >= steps,
        "words/s": (words + calibration[0]) / (seconds + calibration[1]),
        "train seconds": seconds + calibration[1],
    })
    row["peak training bytes"] = _peak_memory(jax.devices()[0])
    row["test perplexity"] = _test_perplexity(model, test,
                                              spec["eval_batch"])
    _write_json(path("row"), row)
    if not spec["time_inference"]:
        return
    # Compile generate while the others may still evaluate; time it alone.
    prompts = {batch: _prompts(test, batch, spec["prompt_length"])
               for batch in (1, spec["inference_batch"])}
    max_length = spec["prompt_length"] + spec["new_tokens"]
    for ids in prompts.values():
        model.generate(ids, max_length=max_length)
    _write_json(path("compiled"), {})
    if _wait_for(path("turn"), spec["deadline"]) is None:
        return
    for batch, ids in prompts.items():
        model.generate(ids, max_length=max_length)
        seconds = []
        for _ in range(spec["repeats"]):
            begin = time.perf_counter()
            model.generate(ids, max_length=max_length)
            seconds.append(time.perf_counter() - begin)
        median = statistics.median(seconds)
        if batch == 1:
            row["µs/token, batch 1"] = 1e6 * median / spec["new_tokens"]
        else:
            row[f"tokens/s, batch {batch}"] = (batch * spec["new_tokens"]
                                               / median)
    _write_json(path("row"), row)
    _write_json(path("timed"), {})


def _train_step(model, inputs, targets):
    """One training step that raises if the device failed it.

    Keras's `train_on_batch` turns its logs into floats inside a bare
    `try`, so a step that failed on the device (out of memory on a shared
    GPU, say) comes back as an unconverted array and every later step
    fails at once: a worker would "train" at a few ms per step and die
    only at evaluation. Converting again raises the real error here."""
    logs = model.train_on_batch(inputs, targets, return_dict=True)
    return {key: float(value) for key, value in logs.items()}


def _peak_memory(device):
    """Bytes at the device's high-water mark, or None where the backend
    does not say (the CPU)."""
    stats = device.memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _test_perplexity(model, test, eval_batch, attempts=4):
    """Exact test perplexity over `test`, each batch cut into pieces of
    `eval_batch` rows (the token-weighted mean is unchanged). Every worker
    evaluates at about the same time on a device whose memory the
    training runs have filled, so an out-of-memory error is retried after
    a pause, when the others may be done."""
    def pieces():
        for step in range(len(test)):
            inputs, targets = test(step)
            for begin in range(0, len(inputs), eval_batch):
                yield (inputs[begin:begin + eval_batch],
                       targets[begin:begin + eval_batch])

    # Every stored batch has the same rows (short ones are padded).
    rows = next(iter(test.groups.values())).shape[1]
    steps = len(test) * -(-rows // eval_batch)
    for attempt in range(attempts):
        try:
            evaluation = model.evaluate(pieces(), steps=steps, verbose=0,
                                        return_dict=True)
            return float(evaluation["perplexity"])
        except Exception as error:  # noqa: BLE001  XLA's OOM has no class
            if ("RESOURCE_EXHAUSTED" not in str(error)
                    or attempt == attempts - 1):
                raise
            print(f"evaluation out of memory (attempt {attempt + 1}); "
                  "retrying", flush=True)
            time.sleep(10 * (attempt + 1))


def _prompts(test, count, length):
    """The first `count` test sentences with at least `length` tokens
    (`<S>` included), cut to `length`."""
    found = []
    for step in range(len(test)):
        inputs, _ = test(step)
        for row in inputs:
            if np.count_nonzero(row) >= length:
                found.append(row[:length])
            if len(found) == count:
                return np.array(found, "int32")
    if not found:
        raise SystemExit(f"gpu_paper_lm: no test sentence of {length} "
                         "tokens for the generation prompts")
    return np.array([found[i % len(found)] for i in range(count)], "int32")


# ---------------------------------------------------------------- driver


def run(args):
    """Starts the workers, sets the common step count, orders the timed
    inference turns, and gathers the rows into `<out_dir>/rows.json`."""
    start = time.time()
    deadline = start + args.budget_seconds
    train_deadline = start + args.train_fraction * args.budget_seconds
    os.makedirs(args.out_dir, exist_ok=True)
    directory = args.work_dir or tempfile.mkdtemp(prefix="gpu_paper_lm")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(args.data, "summary.json")) as file:
        summary = json.load(file)
    data = os.path.join(args.data, "batches.npz")
    labels = args.models.split(",")
    known = set(EXTRA_MODELS)
    from paper_lm import CAPACITY_MODELS
    known |= {label for label, _, _ in CAPACITY_MODELS}
    unknown = sorted(set(labels) - known)
    if unknown:
        raise SystemExit(f"gpu_paper_lm: unknown --models {unknown}")
    environment = dict(os.environ, KERAS_BACKEND="jax",
                       XLA_PYTHON_CLIENT_PREALLOCATE="false",
                       PYTHONUNBUFFERED="1")
    workers = {}
    for label in labels:
        for seed in args.seeds:
            name = f"{label}-seed{seed}"
            spec = dict(
                name=name, model=label, seed=seed, directory=directory,
                data=data, vocabulary_size=summary["vocabulary_size"],
                model_dim=args.model_dim, learning_rate=args.learning_rate,
                calibration_steps=args.calibration_steps,
                train_deadline=train_deadline, deadline=deadline - 15,
                time_inference=seed == args.seeds[0],
                inference_batch=args.inference_batch,
                prompt_length=args.prompt_length,
                new_tokens=args.new_tokens, repeats=args.repeats,
                eval_batch=args.eval_batch)
            spec_path = os.path.join(directory, name + ".spec.json")
            _write_json(spec_path, spec)
            log = open(os.path.join(directory, name + ".log"), "w")
            workers[name] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "worker",
                 "--spec", spec_path], stdout=log, stderr=subprocess.STDOUT,
                env=environment, start_new_session=True)
    say = _say(start)
    say(f"{len(workers)} workers started")

    def alive(name):
        return workers[name].poll() is None

    def ready(suffix, names):
        return [name for name in names if os.path.exists(
            os.path.join(directory, f"{name}.{suffix}"))]

    def wait_all(suffix, names, until):
        while time.time() < until:
            if not [name for name in names if alive(name)
                    and not ready(suffix, [name])]:
                break
            time.sleep(0.2)
        return ready(suffix, names)

    # Every worker compiles its training step; those done by 45% of the
    # training time calibrate together (the others would not finish).
    compiled = wait_all("compiled_training", list(workers),
                        start + args.compile_fraction
                        * (train_deadline - start))
    for name in sorted(set(workers) - set(compiled)):
        _stop(workers[name])
        say(f"stopped {name}: not compiled in time")
    _write_json(os.path.join(directory, "calibrate.json"), {})
    say(f"{len(compiled)} compiled; calibrating")
    wait_all("calibrated", compiled,
             time.time() + 0.3 * (train_deadline - time.time()))
    per_step = {}
    for name in ready("calibrated", workers):
        with open(os.path.join(directory, name + ".calibrated")) as file:
            per_step[name] = json.load(file)["seconds per step"]
    slowest = max(per_step.values()) if per_step else 1.0
    remaining = train_deadline - time.time()
    train_steps = args.calibration_steps + int(
        args.step_margin * remaining / slowest)
    if args.max_train_steps:
        train_steps = min(train_steps, args.max_train_steps)
    _write_json(os.path.join(directory, "go.json"),
                {"train_steps": train_steps})
    say(f"calibrated {len(per_step)}/{len(workers)} (slowest "
        f"{slowest * 1e3:.1f} ms/step): {train_steps} steps for all")
    late = sorted(set(compiled) - set(per_step))
    for name in late:
        _stop(workers[name])
        say(f"stopped {name}: not calibrated in time")

    def gather():
        """rows.json and workers.log in --out_dir, from what is there."""
        rows = []
        for name in workers:
            row_path = os.path.join(directory, name + ".row")
            if os.path.exists(row_path):
                with open(row_path) as file:
                    rows.append(json.load(file))
        result = dict(
            rows=rows, data=summary, seconds=time.time() - start,
            arguments={key: value for key, value in vars(args).items()
                       if key != "command"},
            train_steps=train_steps, seconds_per_step=per_step)
        _write_json(os.path.join(args.out_dir, "rows.json"), result)
        with open(os.path.join(args.out_dir, "workers.log"), "w") as log:
            for name in workers:
                with open(os.path.join(directory, name + ".log")) as file:
                    lines = file.readlines()
                log.write(f"==== {name} ({len(lines)} lines, last 15)\n")
                log.writelines(lines[-15:])
        return result

    # Timed inference, one worker at a time, once every row is in.
    timers = [name for name in per_step if json.load(
        open(os.path.join(directory, name + ".spec.json")))["time_inference"]]
    while time.time() < deadline - 30:
        pending = [name for name in workers if alive(name)
                   and not ready("row", [name])]
        if not pending:
            break
        time.sleep(0.5)
    say("rows: " + ", ".join(ready("row", workers)))
    gather()
    for name in timers:
        while (alive(name) and not ready("compiled", [name])
               and time.time() < deadline - 20):
            time.sleep(0.2)
        if not ready("compiled", [name]):
            say(f"no timing for {name}: generate not compiled (see "
                "workers.log)")
            continue
        _write_json(os.path.join(directory, name + ".turn"), {})
        while (alive(name) and not ready("timed", [name])
               and time.time() < deadline - 15):
            time.sleep(0.1)
        say(f"timed {name}" if ready("timed", [name]) else
            f"no timing for {name}")
    for process in workers.values():
        _stop(process)
    result = gather()
    say(f"done: {len(result['rows'])} rows")
    return result


def _stop(process):
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def _say(start):
    def say(message):
        print(f"[{time.time() - start:6.1f} s] {message}", flush=True)
    return say


# ---------------------------------------------------------------- report


def report(args):
    """One quality table and one speed table over the rows of one or more
    runs (each run's setting stated above them)."""
    from _report import format_value

    results = []
    for path in args.rows.split(","):
        with open(path) as file:
            results.append(json.load(file))
    rows = [dict(row, run=number) for number, result in
            enumerate(results, 1) for row in result["rows"]]
    if not rows:
        raise SystemExit(f"gpu_paper_lm: no rows in {args.rows}")
    text = [f"`{args.device_command}`" if args.device_command else ""]
    for number, result in enumerate(results, 1):
        mine = [row for row in rows if row["run"] == number]
        if not mine:
            continue
        data, arguments = result["data"], result["arguments"]
        text.append(
            f"Run {number}: {mine[0]['device']}, {mine[0]['versions']}; "
            f"{', '.join(dict.fromkeys(row['model'] for row in mine))}, "
            f"seeds {arguments['seeds']}, {len(mine)} runs trained at once "
            f"(words/s is each run's share of the device), "
            f"{result['train_steps']} steps each, {result['seconds']:.0f} s.")
    data = results[0]["data"]
    arguments = results[0]["arguments"]
    text.append(
        f"All runs: {data['train_files']} ({data['vocabulary_size']} "
        f"words), batches of {data['batch_size']} sentences of at most "
        f"{data['max_length']} words, Adam {arguments['learning_rate']}, "
        f"width {arguments['model_dim']}, exact softmax; test perplexity "
        f"over the {data['test']['target tokens']:,} target tokens of "
        f"{data['test_files']}.")
    quality = ["model", "run", "steps", "test perplexity per seed", "mean",
               "spread", "ops/timestep", "parameters", "words/s"]
    lines = ["| " + " | ".join(quality) + " |",
             "|---|---:|---:|---|" + "---:|" * (len(quality) - 4)]
    means = {}
    for label, number in dict.fromkeys((row["model"], row["run"])
                                       for row in rows):
        mine = sorted((row for row in rows if row["model"] == label
                       and row["run"] == number),
                      key=lambda row: row["seed"])
        values = [row["test perplexity"] for row in mine]
        means[label, number] = float(np.mean(values))
        steps = ",".join(str(value) for value in
                         sorted({row["train steps"] for row in mine}))
        lines.append("| " + " | ".join([
            label, str(number),
            steps + ("" if all(row["complete"] for row in mine)
                     else " (cut)"),
            " ".join(f"{value:.2f}" for value in values),
            f"{np.mean(values):.2f}",
            f"{np.max(values) - np.min(values):.2f}",
            format_value(mine[0]["ops/timestep"]),
            format_value(mine[0]["parameters"]),
            format_value(float(np.mean([row["words/s"] for row in mine]))),
        ]) + " |")
    batch = arguments["inference_batch"]
    throughput = f"tokens/s, batch {batch}"
    speed = ["model", "run", "test perplexity (mean)", "ops/timestep",
             "µs/token, batch 1", throughput]
    inference = ["| " + " | ".join(speed) + " |",
                 "|---|---:|" + "---:|" * (len(speed) - 2)]
    for row in rows:
        if "µs/token, batch 1" in row:
            inference.append("| " + " | ".join([
                row["model"], str(row["run"]),
                f"{means[row['model'], row['run']]:.2f}",
                format_value(row["ops/timestep"]),
                format_value(row["µs/token, batch 1"]),
                format_value(row.get(throughput, float("nan")))]) + " |")
    text += ["", *lines, "",
             f"Greedy generation of {arguments['new_tokens']} tokens after "
             f"{arguments['prompt_length']}-token prompts, XLA-compiled, "
             f"median of {arguments['repeats']} calls, one model at a time "
             "on the otherwise idle device (first seed):", "", *inference,
             ""]
    settings = [line for line in text[:len(results) + 2] if line]
    body = ("\n\n".join(settings) + "\n"
            + "\n".join(text[len(results) + 2:]))
    with open(args.out, "w") as file:
        file.write(body)
    print(body)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    {"prepare": prepare, "run": run, "worker": worker,
     "report": report}[args.command](args)


if __name__ == "__main__":
    main()

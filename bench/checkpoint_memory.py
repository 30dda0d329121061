"""Peak host memory of a checkpoint save with experts sharded over a mesh.

Builds a `MixtureOfExperts` model (default 64 experts, d = 512,
h = 2048) with Adam, its expert weights and their Adam slots sharded over
the mesh `model:8` of 8 virtual CPU devices (JAX), then measures how much
the process's resident memory grows during one save, for two savers:

- **gather**: the saver before per-shard checkpoints (kept here as
  `gathering_save`): every variable is assembled into one whole NumPy
  array (what `process_allgather` did across processes), all of them are
  held together, and one process writes them into one `state.npz`;
- **shards**: `sgmoe.training.Checkpointer.save`, where every process
  writes the shards it holds, one `.npy` file each, nothing whole.

Each saver runs in its own process (JAX fixes the device count when it
starts, and the resident high-water mark is per process). Memory is the
growth of VmHWM (peak resident set, /proc/self/status) over the resident
set just before the save, after resetting VmHWM (/proc/self/clear_refs);
where that reset is refused, a thread sampling VmRSS every millisecond
measures it. It is compared with the size of the expert weights and of
the whole state (weights and Adam slots). Linux only.

    python bench/checkpoint_memory.py
    python bench/checkpoint_memory.py --quick     # tiny sizes, seconds
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

MIB = 2**20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVERS = ("gather", "shards")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_experts", type=int, default=64)
    parser.add_argument("--model_dim", type=int, default=512)
    parser.add_argument("--hidden_dim", type=int, default=2048)
    parser.add_argument("--mesh", default="model:8",
                        help="Mesh spec over the virtual devices.")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--directory", default=None,
                        help="Where checkpoints go (default a temporary "
                             "directory, removed afterwards).")
    parser.add_argument("--quick", action="store_true",
                        help="8 experts, d = 16, h = 32.")
    parser.add_argument("--saver", choices=SAVERS, default=None,
                        help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args(argv)
    if args.quick:
        args.num_experts, args.model_dim, args.hidden_dim = 8, 16, 32
    return args


# -- memory probes ----------------------------------------------------------

def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_high_water_mark():
    """Resets VmHWM to the current resident set; False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PeakResident:
    """Peak resident set (bytes) while the `with` block runs."""

    def __init__(self, interval=0.001):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None
        self._use_hwm = False

    def __enter__(self):
        self._use_hwm = _reset_high_water_mark()
        self.start = _status_kib("VmRSS") * 1024
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("VmRSS") * 1024)
            time.sleep(self.interval)

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kib("VmRSS") * 1024)
        if self._use_hwm:
            self.peak = max(self.peak, _status_kib("VmHWM") * 1024)
        return False


# -- the saver before per-shard checkpoints ---------------------------------

def gathering_save(model, directory, step):
    """The format-1 save: whole arrays of every variable, held together,
    written by one process into one state.npz (checksummed afterwards)."""
    import numpy as np
    from keras import ops

    arrays = {}
    optimizer_variables = model.optimizer.variables if model.optimizer else []
    for group, variables in (("model", model.variables),
                             ("optimizer", optimizer_variables)):
        for index, variable in enumerate(variables):
            # On one process, `_whole_array` was exactly this; across
            # processes it was process_allgather(value, tiled=True).
            arrays[f"{group}_{index}"] = np.asarray(
                ops.convert_to_numpy(variable.value))
    path = os.path.join(directory, f"step-{step}")
    os.makedirs(path)
    state = os.path.join(path, "state.npz")
    with open(state, "wb") as file:
        np.savez(file, **arrays)
        file.flush()
        os.fsync(file.fileno())
    digest = hashlib.sha256()
    with open(state, "rb") as file:
        for chunk in iter(lambda: file.read(MIB), b""):
            digest.update(chunk)
    return path


# -- one saver in this process ---------------------------------------------

def build_model(args):
    import keras

    from sgmoe.distribute import model_parallel
    from sgmoe.layers import MixtureOfExperts

    keras.distribution.set_distribution(model_parallel(args.mesh))
    inputs = keras.Input((4, args.model_dim))
    layer = MixtureOfExperts(args.num_experts, args.hidden_dim, k=2, seed=0,
                             name="moe")
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def files_in(path):
    sizes = [os.path.getsize(os.path.join(path, name))
             for name in os.listdir(path)]
    return len(sizes), max(sizes)


def measure(args):
    """Builds the model, saves once with `args.saver`; a JSON report."""
    import gc

    import jax
    import numpy as np

    from sgmoe.training import Checkpointer

    model = build_model(args)
    variables = model.variables + model.optimizer.variables
    expert = [v for v in model.trainable_variables
              if "experts" in v.path and len(v.shape) == 3]
    sharded = [v for v in variables
               if not v.value.sharding.is_fully_replicated]
    state_bytes = sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape))
                      for v in variables)
    expert_bytes = sum(4 * int(np.prod(v.shape)) for v in expert)
    with tempfile.TemporaryDirectory(dir=args.directory) as directory:
        checkpointer = Checkpointer(directory, keep=1)
        checkpointer.set_model(model)
        gc.collect()
        started = time.perf_counter()
        with PeakResident() as resident:
            if args.saver == "gather":
                path = gathering_save(model, directory, 1)
            else:
                path = checkpointer.save(step=1)
        seconds = time.perf_counter() - started
        num_files, largest_file = files_in(path)
    return {
        "saver": args.saver,
        "devices": len(jax.devices()),
        "sharded_variables": len(sharded),
        "expert_kernel_spec": list(expert[0].value.sharding.spec),
        "expert_bytes": expert_bytes,
        "state_bytes": state_bytes,
        "rss_before": resident.start,
        "rss_growth": resident.peak - resident.start,
        "seconds": seconds,
        "files": num_files,
        "largest_file": largest_file,
    }


# -- the parent: one process per saver, then the table ----------------------

def run_child(args, saver):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count="
                         f"{args.devices}",
               PYTHONPATH=os.pathsep.join(
                   filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, os.path.abspath(__file__), "--saver", saver,
               f"--num_experts={args.num_experts}",
               f"--model_dim={args.model_dim}",
               f"--hidden_dim={args.hidden_dim}", f"--mesh={args.mesh}",
               f"--devices={args.devices}"]
    if args.directory:
        command.append(f"--directory={args.directory}")
    result = subprocess.run(command, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"the {saver} child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(args, reports):
    first = reports[0]
    lines = [
        f"E={args.num_experts} d={args.model_dim} h={args.hidden_dim}, "
        f"Adam; mesh {args.mesh} on {first['devices']} virtual CPU devices; "
        f"expert kernels {first['expert_kernel_spec']}, "
        f"{first['sharded_variables']} variables sharded",
        f"expert weights {first['expert_bytes'] / MIB:.0f} MiB, whole state "
        f"(weights + Adam slots) {first['state_bytes'] / MIB:.0f} MiB",
        "",
        "| saver | peak RSS growth MiB | / expert weights | / whole state "
        "| files | largest file MiB | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for report in reports:
        growth = report["rss_growth"]
        lines.append(
            f"| {report['saver']} | {growth / MIB:.1f} "
            f"| {growth / report['expert_bytes']:.2f} "
            f"| {growth / report['state_bytes']:.2f} | {report['files']} "
            f"| {report['largest_file'] / MIB:.1f} "
            f"| {report['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.saver:
        print(json.dumps(measure(args)))
        return
    reports = [run_child(args, saver) for saver in SAVERS]
    print(table(args, reports))


if __name__ == "__main__":
    main(sys.argv[1:])

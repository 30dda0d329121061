"""Backend-neutral test helpers."""

import gzip
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bundled_head(tmp_path, split, sentences):
    """The first `sentences` lines of the bundled Brown `split` ("train",
    "valid", "test"), written under `tmp_path`; returns the file's path."""
    with gzip.open(os.path.join(ROOT, "data", f"brown.{split}.txt.gz"),
                   "rt", encoding="utf-8") as file:
        lines = [next(file) for _ in range(sentences)]
    path = tmp_path / f"{split}.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def hold_model_dir_lock(model_dir):
    """Starts a process that holds `model_dir`'s lock until killed.

    It loads sgmoe/training/model_dir_lock.py on its own (the module needs
    only the standard library), not the sgmoe package and TensorFlow.
    """
    module = os.path.join(ROOT, "sgmoe", "training", "model_dir_lock.py")
    code = textwrap.dedent(f"""
        import importlib.util
        import sys
        spec = importlib.util.spec_from_file_location("lock", {module!r})
        lock = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lock)
        lock.lock_model_dir({os.fspath(model_dir)!r})
        print("locked", flush=True)
        sys.stdin.read()
    """)
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "locked\n"
    return process


def value_and_gradients(layer, loss_fn, *inputs, **call_kwargs):
    """Returns (loss, {weight path: gradient}) of loss_fn(layer(*inputs)).

    `loss_fn(outputs, losses)` receives the layer's outputs and the list of
    losses the layer added during the call.
    """
    backend = keras.backend.backend()
    trainable = layer.trainable_variables
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            outputs = layer(*inputs, **call_kwargs)
            loss = loss_fn(outputs, layer.losses)
        grads = tape.gradient(loss, trainable)
        return (float(loss), {v.path: None if g is None else np.asarray(g)
                              for v, g in zip(trainable, grads)})
    if backend == "jax":
        import jax

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def compute(trainable_values):
            outputs, _, losses = layer.stateless_call(
                trainable_values, non_trainable, *inputs, return_losses=True,
                **call_kwargs)
            return loss_fn(outputs, losses)

        loss, grads = jax.value_and_grad(compute)(
            [v.value for v in trainable])
        return (float(loss), {v.path: np.asarray(g)
                              for v, g in zip(trainable, grads)})
    raise ValueError(f"no gradient helper for backend {backend}")

"""The datasets feed Keras models on the TensorFlow and the JAX backend."""

import json
import os
import subprocess
import sys

import keras
import pytest

from tests.data import keras_feeding

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def check(result, backend):
    assert result["backend"] == backend
    for name in ("language_model", "translation"):
        before, after = result[name]
        assert after < 0.7 * before, (name, before, after)


def test_datasets_train_a_model_on_the_current_backend(tmp_path):
    check(keras_feeding.run(str(tmp_path)), keras.backend.backend())


@pytest.mark.subprocess
def test_datasets_train_a_model_on_the_jax_backend(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="jax",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "tests.data.keras_feeding", str(tmp_path)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    check(json.loads(result.stdout.strip().splitlines()[-1]), "jax")

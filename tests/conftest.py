"""Test set-up: quiet TensorFlow logs and fix seeds per test."""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keras's own default; stated so that the scripts the tests start (which
# would otherwise pick JAX) run on the backend the tests run on.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tests.xla_flags import use_fast_compile  # noqa: E402

use_fast_compile()

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_finish(session):
    # Every test ends with a full garbage collection (clear_session). The
    # objects of the imported modules (TensorFlow, JAX, Keras, sgmoe, the
    # test modules) never become garbage: moved out of the collector's
    # view, they no longer make each collection walk millions of objects.
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()

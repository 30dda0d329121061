"""Loads a benchmark of bench/ as a module, afresh, to call its `main`."""

import importlib.util
import os

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                     "bench")


def load_bench(name):
    """bench/<name>.py, executed as the module `name`."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

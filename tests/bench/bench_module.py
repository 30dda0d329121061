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


def run_bench(name, *args, **environment):
    """stdout of `python bench/<name>.py args...` in a new process (for
    benchmarks that start processes of their own or parse absl flags),
    with `environment` added to this process's variables."""
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **environment)
    result = subprocess.run(
        [sys.executable, os.path.join(BENCH, f"{name}.py"), *args],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def markdown_rows(text, first_header):
    """The rows of the markdown table whose first header is `first_header`,
    as {header: cell} dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith(f"| {first_header} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in
                                      line.strip("|").split("|")))))
    return rows

"""bench/moe_layer.py --dropless: a quick run prints its comparison table."""

import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_quick_dropless_table(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "moe_layer.py"),
         "--quick", "--dropless"], capture_output=True, text=True, env=env,
        timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines()
             if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in
                              line.strip("|").split("|"))))
            for line in lines[1:]]
    assert [row["experts"] for row in rows] == ["4", "16"]
    for row in rows:
        # --quick: T = 256, k = 2; capacity 1.25 T k / E, dropless buffer
        # m + 2 sqrt(m).
        experts = int(row["experts"])
        mean = 256 * 2 / experts
        assert int(row["C (capacity)"]) == math.ceil(1.25 * mean)
        assert int(row["C (dropless buffer)"]) == math.ceil(
            mean + 2 * math.sqrt(mean))
        for name in ("dropless / capacity", "dropless / floor",
                     "inference dropless / capacity"):
            ratio = float(row[name].split("x")[0])
            assert math.isfinite(ratio) and ratio > 0, name
        for name in ("capacity ms", "dropless ms", "T*k floor ms"):
            assert float(row[name]) > 0, name

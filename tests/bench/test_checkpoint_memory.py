"""bench/checkpoint_memory.py --quick: both savers measured, shards apart."""

import math

import pytest

from tests.bench.bench_module import markdown_rows
from tests.bench.bench_module import run_bench

pytestmark = pytest.mark.subprocess


def test_quick_run_measures_both_savers():
    rows = {row["saver"]: row for row in markdown_rows(
        run_bench("checkpoint_memory", "--quick"), "saver")}
    assert sorted(rows) == ["gather", "shards"]
    # The gathering saver writes one whole file; the sharded one a file
    # per shard held (8 devices, 12 sharded variables, and the rest).
    assert int(rows["gather"]["files"]) == 1
    assert int(rows["shards"]["files"]) >= 8 * 12
    for row in rows.values():
        for name in ("peak RSS growth MiB", "/ expert weights",
                     "/ whole state", "largest file MiB", "seconds"):
            value = float(row[name])
            assert math.isfinite(value) and value >= 0, name

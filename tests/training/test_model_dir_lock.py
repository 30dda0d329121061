"""lock_model_dir: one writer per model directory, stale locks taken over."""

import os
import socket

import pytest

from sgmoe.training import ModelDirInUseError
from sgmoe.training import lock_model_dir
from sgmoe.training import unlock_model_dir
from tests.helpers import hold_model_dir_lock


def test_a_second_process_is_refused_until_the_first_ends(tmp_path):
    model_dir = tmp_path / "run"
    process = hold_model_dir_lock(model_dir)
    try:
        with pytest.raises(ModelDirInUseError) as error:
            lock_model_dir(model_dir)
        assert str(error.value) == (
            f"{os.path.realpath(model_dir)} is in use by another run (pid "
            f"{process.pid} on {socket.gethostname()}); wait for it to end "
            "or use another model directory")
    finally:
        process.kill()  # SIGKILL: the lock file stays, the lock does not
        process.wait()
    assert (model_dir / ".lock").exists()
    lock_model_dir(model_dir)
    try:
        assert (model_dir / ".lock").read_text() == (
            f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock_model_dir(model_dir)  # the same process: a no-op
    finally:
        unlock_model_dir(model_dir)


def test_a_model_dir_that_is_a_file_is_an_os_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("mine")
    with pytest.raises(OSError):
        lock_model_dir(path)
    assert path.read_text() == "mine"
